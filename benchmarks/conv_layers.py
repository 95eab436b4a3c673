"""Each ResNet-50 bottleneck convolution, fused (Triton) against today's path (ATen + the BN primitives).

For every distinct convolution of ResNet-50's bottlenecks (conv1 1x1, conv2 3x3 stride 1/2, conv3 1x1,
downsample 1x1 stride 1/2; 23 layers, each counted as often as the model has it) at batch 256, bf16,
channels_last, times forward and backward of the kernel calls one layer's part of a training step makes:

  fused (resnet_fast/kernels/triton/conv, FUSION.md)
    fwd  conv_forward: the producer BN + ReLU in the prologue (conv2, conv3), the statistics of y in the
         epilogue
    bwd  conv_dgrad: the consumer BN's backward in the prologue (conv1, conv2: dy = A*dz + B*y + C), the
         producer's ReLU mask and its BN-backward sums in the epilogue (conv2, conv3);
         conv_wgrad: both operands recomputed (relu(x*scale+shift), A*dz + B*y + C)
  today (torch convolution, cuDNN, + the primitives of ``--today-backend``, default cuda)
    fwd  scale_shift_act (the producer BN + ReLU apply, conv2 and conv3), F.conv2d, bn_stats(y)
    bwd  scale_shift_act_backward_apply (the consumer BN + ReLU backward, conv1 and conv2),
         aten.convolution_backward (input and weight), scale_shift_act_backward_reduce (the producer
         BN's sums, conv2 and conv3)

Each BN's passes are counted once, in the layer that the fused path folds them into (its apply in the
layer it feeds, its statistics / backward sums with the convolution that produces / consumes it), so the
layers add up to the bottlenecks less what both paths share (the per-channel finalize steps, the block
tail bn3 + add + ReLU, whose backward hands conv3 and the downsample their dy).

Before timing, both paths run once on the same inputs and the fused results (y, its mean and variance,
the input gradient, the producer BN's sums, dW) are compared with today's: a layer over the tolerance is
reported, gets "aten" in the table, and makes the exit status 1.

Timing: CUDA events around each call sequence, L2 flushed before each (a 256 MiB write), warm-up calls
first (Triton compiles, cuDNN autotunes under cudnn.benchmark), median of the repeats; the four
sequences (today fwd, today bwd, fused fwd, fused bwd) alternate within each round.

Bytes: the fewest activation and weight bytes each path's kernels must read plus write (each kernel
reads its tensor inputs once and writes its outputs once; per-channel vectors and per-tile partials
left out; a stride-2 1x1 convolution reads only the strided pixels); the model of FUSION.md per layer.
FLOPs: 2 per multiply-add of the convolution, backward twice the forward (the same for both paths).

    python benchmarks/conv_layers.py OUT/conv_layers.json --table OUT/conv_table.json
        [--batch 256] [--warmup 3] [--repeats 10] [--only NAME,...] [--dtype bfloat16]

The JSON is rewritten after every layer (a run cut short keeps what it measured); so is the table, the
conv table that resnet_fast's "auto" convolution backend reads (resnet_fast/conv_backend.py: keys from
``conv_backend.table_key``; "triton" where the fused forward + backward took less time than today's,
summed over the layers that share a key): ship it by copying it to resnet_fast/conv_table.json.
Knobs: RESNET_FAST_BENCH_CONV_{BATCH,WARMUP,REPEATS} set the defaults.

Without a CUDA device it says so and exits with status 0 (as primitive_bandwidth.py), unless
TRITON_INTERPRET=1 is set: then it runs on the CPU through the Triton interpreter, a smoke test for tiny
shapes (``--batch 2 --shrink 8``: channels and sizes divided by 8) whose times mean nothing.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable, Optional

import torch
import torch.nn.functional as F

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

# ResNet-50 stages: (width, blocks, stride of the first block, input size, channels into the stage).
STAGES = ((64, 3, 1, 56, 64), (128, 4, 2, 56, 256), (256, 6, 2, 28, 512), (512, 3, 2, 14, 1024))
EXPANSION = 4
# Relative L2 error of a fused result against today's allowed (bf16: both round y, dy and the BN-ReLU
# operand to bf16 at slightly different places; 3e-2 as bench_harness.TOLERANCE).
TOLERANCE = {torch.float32: 1e-3, torch.float16: 3e-2, torch.bfloat16: 3e-2}
FLUSH_BYTES = 256 * 2 ** 20  # > the 50 MB L2 of an H100


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(f"RESNET_FAST_BENCH_{name}", "")
    return int(value) if value else default


# ----------------------------------------------------------------------------- layers
@dataclass(frozen=True)
class ConvLayer:
    """One distinct bottleneck convolution: its first torchvision name, geometry, place in the block, count."""
    name: str          # e.g. layer2.0.conv2 (the first occurrence)
    c_in: int
    size: int          # input height = width
    c_out: int
    kernel: int        # 1 or 3
    stride: int
    prologue: bool     # the input is a BN + ReLU output (conv2: bn1, conv3: bn2), formed in the prologue
    consumer_bn: bool  # a BN + ReLU follows whose backward the dgrad prologue does (conv1: bn1, conv2: bn2)
    count: int = 1     # how many convolutions of ResNet-50 are this one

    @property
    def padding(self) -> int:
        return (self.kernel - 1) // 2

    @property
    def out_size(self) -> int:
        return (self.size + 2 * self.padding - self.kernel) // self.stride + 1

    def shrunk(self, by: int) -> "ConvLayer":
        """The layer with channels and sizes divided by ``by`` (at least 4 channels, 2 pixels): smoke runs."""
        return replace(self, c_in=max(4, self.c_in // by), c_out=max(4, self.c_out // by),
                       size=max(2, self.size // by))


def resnet50_layers() -> list[ConvLayer]:
    """The distinct convolutions of ResNet-50's 16 bottlenecks, in model order, with their counts
    (the same layers and flags as compile_check.resnet50_layers(), deduplicated)."""
    found: dict[tuple, ConvLayer] = {}

    def add(name, c_in, size, c_out, kernel, stride, prologue, consumer_bn):
        layer = ConvLayer(name, c_in, size, c_out, kernel, stride, prologue, consumer_bn)
        key = (c_in, size, c_out, kernel, stride, prologue, consumer_bn)
        found[key] = replace(found[key], count=found[key].count + 1) if key in found else layer

    for stage, (width, blocks, stride, size, c_in) in enumerate(STAGES, start=1):
        for block in range(blocks):
            s = stride if block == 0 else 1
            h = size if block == 0 else size // stride
            cin = c_in if block == 0 else width * EXPANSION
            prefix = f"layer{stage}.{block}"
            add(f"{prefix}.conv1", cin, h, width, 1, 1, False, True)
            add(f"{prefix}.conv2", width, h, width, 3, s, True, True)
            add(f"{prefix}.conv3", width, h // s, width * EXPANSION, 1, 1, True, False)
            if block == 0:
                add(f"{prefix}.downsample.0", cin, h, width * EXPANSION, 1, s, False, False)
    return list(found.values())


# ----------------------------------------------------------------------------- bytes and flops
def layer_bytes(layer: ConvLayer, n: int, elem: int) -> dict:
    """Fewest bytes read + written by each path's kernels, forward and backward (see the module doc).

    X: the convolution's input, Xr: what the convolution reads of it (the strided pixels of a stride-2
    1x1), Y: its output, W: the weight. p = producer BN-ReLU before it, c = consumer BN-ReLU after it.
      today fwd: [2X scale_shift_act] + Xr + W + Y conv + Y bn_stats
      today bwd: [3Y apply] + (Y + W + X) dgrad + (Y + Xr + W) wgrad + [2X reduce]
      fused fwd: Xr + W + Y
      fused bwd: dgrad (Y [+ Y] + W [+ X] + X) + wgrad (Xr + Y [+ Y] + W)
    """
    x = n * layer.c_in * layer.size ** 2 * elem
    y = n * layer.c_out * layer.out_size ** 2 * elem
    xr = n * layer.c_in * layer.out_size ** 2 * elem if layer.kernel == 1 and layer.stride == 2 else x
    w = layer.c_out * layer.c_in * layer.kernel ** 2 * elem
    p, c = int(layer.prologue), int(layer.consumer_bn)
    return {
        "today_fwd": 2 * x * p + xr + w + y + y,
        "today_bwd": 3 * y * c + (y + w + x) + (y + xr + w) + 2 * x * p,
        "fused_fwd": xr + w + y,
        "fused_bwd": (y * (1 + c) + w + x * p + x) + (xr + y * (1 + c) + w),
    }


def layer_flops(layer: ConvLayer, n: int) -> dict:
    fwd = 2 * n * layer.out_size ** 2 * layer.c_out * layer.c_in * layer.kernel ** 2
    return {"fwd": fwd, "bwd": 2 * fwd}


# ----------------------------------------------------------------------------- the two paths
class LayerCase:
    """Inputs of one layer and both paths' forward / backward call sequences.

    x: the convolution's raw input (the producer's conv output when ``prologue``, else the block input);
    the producer BN as (scale, shift, mean) per channel; dout: the gradient arriving at the consumer's ReLU
    output (with ``consumer_bn``) or at y (conv3, downsample: the block tail's backward made it); the
    consumer BN as its scale/shift (for the ReLU mask) and backward coefficients dy = A*dz + B*y + C.
    """

    def __init__(self, layer: ConvLayer, n: int, dtype: torch.dtype, device: str, prims, seed: int = 0):
        self.layer, self.prims = layer, prims
        g = torch.Generator(device=device).manual_seed(seed)
        cl = torch.channels_last
        f32 = dict(device=device, dtype=torch.float32)

        def rand(*shape, scale=1.0, offset=0.0):
            return torch.rand(shape, generator=g, **f32) * scale + offset

        def randn(*shape, scale=1.0, dt=torch.float32):
            return (torch.randn(shape, generator=g, device=device) * scale).to(dt)

        L = layer
        self.stride, self.pad = L.stride, L.padding
        self.x = randn(n, L.c_in, L.size, L.size, dt=dtype).contiguous(memory_format=cl)
        self.w = randn(L.c_out, L.c_in, L.kernel, L.kernel, scale=math.sqrt(2.0 / (L.c_in * L.kernel ** 2)),
                       dt=dtype).contiguous(memory_format=cl)
        self.dout = randn(n, L.c_out, L.out_size, L.out_size, dt=dtype).contiguous(memory_format=cl)
        # producer BN (C_in,) and its (N, C) tables for the primitives
        self.p_scale, self.p_shift = rand(L.c_in, scale=1.0, offset=0.5), randn(L.c_in, scale=0.2)
        self.p_mean = randn(L.c_in)
        self.p_scale_nc, self.p_shift_nc = (v.expand(n, -1).contiguous() for v in (self.p_scale, self.p_shift))
        # consumer BN: scale/shift of its forward (the ReLU mask), A, B, C of its backward
        self.c_scale, self.c_shift = rand(L.c_out, scale=1.0, offset=0.5), randn(L.c_out, scale=0.2)
        self.c_center = randn(L.c_out, scale=0.1)
        rows = n * L.out_size ** 2
        self.coef_a = rand(L.c_out, scale=1.0, offset=0.5)
        self.coef_b = randn(L.c_out, scale=1.0 / rows)
        self.coef_c = randn(L.c_out, scale=0.1 / rows)
        # today's apply: dy = k_g * g + k_0 + k_y * (y - center) == A*g + B*y + C
        self.k_g = self.coef_a.expand(n, -1).contiguous()
        self.k_0 = (self.coef_c + self.coef_b * self.c_center).expand(n, -1).contiguous()
        self.k_y = self.coef_b
        self.c_scale_nc, self.c_shift_nc = (v.expand(n, -1).contiguous() for v in (self.c_scale, self.c_shift))
        # Saved by the forward for the backward (set by prepare()): y, and today's conv input a.
        self.y = self.a = self.dz = None

    # --- today: ATen convolution + primitives
    def today_fwd(self):
        L, P = self.layer, self.prims
        a = P.scale_shift_act(self.x, self.p_scale_nc, self.p_shift_nc, None, None, None, True) if L.prologue \
            else self.x
        y = F.conv2d(a, self.w, None, self.stride, self.pad)
        stats = P.bn_stats(y)
        return a, y, stats

    def today_bwd(self):
        L, P = self.layer, self.prims
        dy = self.dout
        if L.consumer_bn:
            dy = P.scale_shift_act_backward_apply(self.dout, self.y, self.c_scale_nc, self.c_shift_nc, None, None,
                                                  None, True, self.k_g, self.k_0, self.k_y, self.c_center, None,
                                                  None, None, None)[0]
        da, dw, _ = torch.ops.aten.convolution_backward(dy, self.a, self.w, None, [self.stride] * 2, [self.pad] * 2,
                                                        [1, 1], False, [0, 0], 1, [True, True, False])
        sums = None
        if L.prologue:
            sums = P.scale_shift_act_backward_reduce(da, self.x, self.p_scale_nc, self.p_shift_nc, None, None, None,
                                                     True, self.p_mean, None)
        return da, dw, sums

    # --- fused: the Triton kernels
    def fused_fwd(self):
        from resnet_fast.kernels.triton.conv import conv_forward

        pro = dict(scale=self.p_scale, shift=self.p_shift) if self.layer.prologue else {}
        return conv_forward(self.x, self.w, self.stride, self.pad, **pro)

    def fused_bwd(self):
        from resnet_fast.kernels.triton.conv import conv_dgrad, conv_wgrad

        L = self.layer
        bn = dict(y=self.y, coef_a=self.coef_a, coef_b=self.coef_b, coef_c=self.coef_c) if L.consumer_bn else {}
        prev = dict(x_prev=self.x, scale_prev=self.p_scale, shift_prev=self.p_shift, mean_prev=self.p_mean) \
            if L.prologue else {}
        pro = dict(scale=self.p_scale, shift=self.p_shift) if L.prologue else {}
        g, sum_g, sum_gx = conv_dgrad(self.dz, self.w, (L.size, L.size), self.stride, self.pad, **bn, **prev)
        dw = conv_wgrad(self.x, self.dz, tuple(self.w.shape), self.stride, self.pad, **pro, **bn)
        return g, sum_g, sum_gx, dw

    def prepare(self) -> dict:
        """Run both paths once (untimed): keep what the backward reads (y, a, dz) and return the fused
        results' relative errors against today's."""
        L = self.layer
        a, y, (mean, var, _) = self.today_fwd()
        self.a, self.y = a, y
        # the fused backward's dz: the gradient at the consumer BN's output, i.e. after its ReLU mask (the next
        # convolution's dgrad epilogue applies it in the fused block)
        if L.consumer_bn:
            mask = (y.float() * self.c_scale[None, :, None, None] + self.c_shift[None, :, None, None]) > 0
            self.dz = torch.where(mask, self.dout, 0).contiguous(memory_format=torch.channels_last)
        else:
            self.dz = self.dout
        fy, fmean, fvar = self.fused_fwd()
        da, dw, sums = self.today_bwd()
        g, sum_g, sum_gx, fdw = self.fused_bwd()
        # the mean against the channels' spread (a mean near 0 has no relative precision of its own)
        errors = {"y": rel_err(fy, y), "mean": rel_err(fmean, mean, scale=var.sqrt()), "var": rel_err(fvar, var),
                  "dw": rel_err(fdw, dw)}
        if L.prologue:  # fused g is the gradient at the producer BN's output: the ReLU mask applied
            errors["dx"] = rel_err(g, torch.where(a > 0, da, 0))
            # today's sums are per (n, c) or, from some kernels, per channel already
            errors["sum_g"] = rel_err(sum_g, sums[0] if sums[0].dim() == 1 else sums[0].sum(0))
            errors["sum_gx"] = rel_err(sum_gx, sums[1] if sums[1].dim() == 1 else sums[1].sum(0))
        else:
            errors["dx"] = rel_err(g, da)
        return errors


def rel_err(out: torch.Tensor, ref: torch.Tensor, scale: Optional[torch.Tensor] = None) -> float:
    """||out - ref|| / ||ref|| (or / ||scale||)."""
    out, ref = out.detach().double(), ref.detach().double()
    if out.shape != ref.shape:
        return math.inf
    denom = (ref if scale is None else scale.detach().double()).norm().item()
    return (out - ref).norm().item() / denom if denom > 0 else (out - ref).norm().item()


# ----------------------------------------------------------------------------- timing
def time_rounds(fns: dict[str, Callable], device: str, warmup: int, repeats: int,
                flush: Optional[torch.Tensor]) -> dict[str, list[float]]:
    """Milliseconds per call of each function, ``repeats`` rounds after ``warmup`` untimed calls each;
    within a round the functions run in turn, each after an L2 flush (CUDA events on GPU)."""
    cuda = device == "cuda"
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if flush is not None:
                flush.zero_()
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times[name].append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def measure(layer: ConvLayer, case: LayerCase, n: int, dtype: torch.dtype, device: str, warmup: int,
            repeats: int, flush: Optional[torch.Tensor]) -> dict:
    errors = case.prepare()
    tol = TOLERANCE[dtype]
    times = time_rounds({"today_fwd": case.today_fwd, "today_bwd": case.today_bwd, "fused_fwd": case.fused_fwd,
                         "fused_bwd": case.fused_bwd}, device, warmup, repeats, flush)
    ms = {k: statistics.median(v) for k, v in times.items()}
    nbytes = layer_bytes(layer, n, torch.empty((), dtype=dtype).element_size())
    flops = layer_flops(layer, n)
    row = {**asdict(layer), "batch": n, "out_size": layer.out_size, "rel_err": errors,
           "ok": all(e <= tol for e in errors.values()), "tolerance": tol, "times_ms": times, "bytes": nbytes,
           "flops": flops}
    for path in ("today", "fused"):
        for d in ("fwd", "bwd"):
            key = f"{path}_{d}"
            row[f"{key}_ms"] = ms[key]
            row[f"{key}_GBps"] = nbytes[key] / ms[key] / 1e6
            row[f"{key}_TFLOPs"] = flops[d] / ms[key] / 1e9
        row[f"{path}_ms"] = ms[f"{path}_fwd"] + ms[f"{path}_bwd"]
    for d in ("fwd", "bwd"):
        row[f"speedup_{d}"] = ms[f"today_{d}"] / ms[f"fused_{d}"]
    row["speedup"] = row["today_ms"] / row["fused_ms"]
    return row


# ----------------------------------------------------------------------------- table
def table_key_of(row: dict, gpu_name: str, dtype: torch.dtype) -> str:
    from resnet_fast.conv_backend import table_key

    return table_key(gpu_name, dtype, row["c_in"], row["size"], row["size"], row["c_out"], row["kernel"], row["stride"])


def conv_table(rows: list[dict], gpu_name: str, dtype: torch.dtype, measured: dict) -> dict:
    """{"choice": {key: "triton" | "aten"}, "layers": {key: timings}, "measured": ...}.

    Layers sharing a key (layer1's conv3 and its downsample: 64 -> 256 at 56x56) are decided together, by
    their times summed with the model's counts; a layer whose fused results disagree with today's makes its
    key "aten" whatever the times.
    """
    by_key: dict[str, dict] = {}
    for r in rows:
        key = table_key_of(r, gpu_name, dtype)
        entry = by_key.setdefault(key, {"layers": [], "today_ms": 0.0, "fused_ms": 0.0, "ok": True})
        entry["layers"].append(r["name"])
        entry["today_ms"] += r["count"] * r["today_ms"]
        entry["fused_ms"] += r["count"] * r["fused_ms"]
        entry["ok"] = entry["ok"] and r["ok"]
    choice = {k: "triton" if e["ok"] and e["fused_ms"] < e["today_ms"] else "aten" for k, e in by_key.items()}
    return {"choice": choice, "layers": by_key, "measured": measured}


def totals(rows: list[dict]) -> dict:
    """The bottlenecks' convolution layers summed with the model's counts: today's path, all fused, and the
    table's per-layer choice (the fused path where it is faster and correct)."""
    today = sum(r["count"] * r["today_ms"] for r in rows)
    fused = sum(r["count"] * r["fused_ms"] for r in rows)
    chosen = sum(r["count"] * (r["fused_ms"] if r["ok"] and r["fused_ms"] < r["today_ms"] else r["today_ms"])
                 for r in rows)
    fwd = {p: sum(r["count"] * r[f"{p}_fwd_ms"] for r in rows) for p in ("today", "fused")}
    return {"today_ms": today, "fused_ms": fused, "chosen_ms": chosen, "today_fwd_ms": fwd["today"],
            "fused_fwd_ms": fwd["fused"], "speedup_all_fused": today / fused if fused else None,
            "speedup_chosen": today / chosen if chosen else None, "goal": 1.15}


# ----------------------------------------------------------------------------- main
def _today_primitives(name: str, device: str):
    import resnet_fast
    from resnet_fast import backend

    if name == "auto":
        if device == "cuda":
            name = "cuda" if backend.backend_status()["cuda"][0] else "triton"
        else:
            name = "reference"
    resnet_fast.set_backend(name)
    return name, backend.primitives(torch.device(device))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="path of the JSON results (rewritten after every layer)")
    parser.add_argument("--table", metavar="PATH", help="write the conv table here (after every layer)")
    parser.add_argument("--batch", type=int, default=_env_int("CONV_BATCH", 256))
    parser.add_argument("--warmup", type=int, default=_env_int("CONV_WARMUP", 3))
    parser.add_argument("--repeats", type=int, default=_env_int("CONV_REPEATS", 10))
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--only", default="", help="comma list of layer names (e.g. layer1.0.conv2)")
    parser.add_argument("--shrink", type=int, default=1, help="divide channels and sizes by this (smoke runs)")
    parser.add_argument("--today-backend", default="auto",
                        help="primitives of today's path: cuda, triton, reference or auto (cuda, else triton; "
                             "reference on the CPU)")
    args = parser.parse_args(argv)

    if torch.cuda.is_available() and not INTERPRETED:
        device = "cuda"
    elif INTERPRETED:
        device = "cpu"  # the interpreter's smoke run
    else:
        print("conv_layers: no CUDA device, nothing to measure (the benchmark needs a GPU; TRITON_INTERPRET=1 "
              "runs it on the CPU as a smoke test)")
        return 0
    import triton

    import resnet_fast

    dtype = getattr(torch, args.dtype)
    if device == "cuda":
        torch.backends.cudnn.benchmark = True  # today's path gets cuDNN's autotuned algorithms
    today_backend, prims = _today_primitives(args.today_backend, device)
    layers = resnet50_layers()
    if args.only:
        wanted = {s.strip() for s in args.only.split(",") if s.strip()}
        unknown = wanted - {layer.name for layer in layers}
        if unknown:
            parser.error(f"unknown layer(s) {sorted(unknown)}; one of {[layer.name for layer in layers]}")
        layers = [layer for layer in layers if layer.name in wanted]
    if args.shrink > 1:
        layers = [layer.shrunk(args.shrink) for layer in layers]
    gpu_name = torch.cuda.get_device_name() if device == "cuda" else f"{platform.machine()} CPU (Triton interpreter)"
    measured = {
        "device": gpu_name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device == "cuda" else None,
        "triton": triton.__version__,
        "resnet_fast": getattr(resnet_fast, "__version__", "?"),
        "python": platform.python_version(),
        "dtype": args.dtype,
        "memory_format": "channels_last",
        "batch": args.batch,
        "shrink": args.shrink,
        "today_backend": today_backend,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "timing": f"CUDA events, L2 flushed, {args.warmup} warm-up calls, median of {args.repeats}"
                  if device == "cuda" else "perf_counter on the CPU (interpreter smoke run: times mean nothing)",
        "interpreted": INTERPRETED,
    }
    results: list[dict] = []
    summary = {**measured, "complete": False, "bytes": layer_bytes.__doc__.split("\n\n")[0], "results": results}

    def save() -> None:  # after every layer: a run cut short by its time limit keeps what it measured
        summary["totals"] = totals(results) if results else None
        _write(args.output, summary)
        if args.table:
            _write(args.table, {**conv_table(results, gpu_name, dtype, measured), "complete": summary["complete"]})

    flush = torch.empty(FLUSH_BYTES, dtype=torch.int8, device=device) if device == "cuda" else None
    print(f"conv_layers: {len(layers)} layers, batch {args.batch}, {args.dtype}, channels_last on {gpu_name}; "
          f"today = ATen convolution + {today_backend} primitives; fused = Triton")
    print(f"{'layer':<24} {'x':>3} {'geometry':<22} {'today ms':>9} {'fused ms':>9} {'fwd x':>6} {'bwd x':>6} "
          f"{'x':>6} {'fused GB/s':>10} {'TFLOP/s':>8} {'err':>8}")
    failed = 0
    for layer in layers:
        case = LayerCase(layer, args.batch, dtype, device, prims)
        row = measure(layer, case, args.batch, dtype, device, args.warmup, args.repeats, flush)
        del case
        results.append(row)
        save()
        failed += not row["ok"]
        geometry = f"{layer.c_in}->{layer.c_out} {layer.size}^2 k{layer.kernel}s{layer.stride}"
        fused_bytes = row["bytes"]["fused_fwd"] + row["bytes"]["fused_bwd"]
        tflops = (row["flops"]["fwd"] + row["flops"]["bwd"]) / row["fused_ms"] / 1e9
        print(f"{layer.name:<24} {layer.count:>3} {geometry:<22} {row['today_ms']:9.3f} {row['fused_ms']:9.3f} "
              f"{row['speedup_fwd']:6.2f} {row['speedup_bwd']:6.2f} {row['speedup']:6.2f} "
              f"{fused_bytes / row['fused_ms'] / 1e6:10.0f} {tflops:8.1f} {max(row['rel_err'].values()):8.1e}"
              + ("" if row["ok"] else "  FUSED RESULT OFF: kept on aten"), flush=True)
        if device == "cuda":
            torch.cuda.empty_cache()
    summary["complete"] = True
    save()
    t = summary["totals"]
    print(f"bottleneck convolution layers (x count): today {t['today_ms']:.2f} ms, all fused {t['fused_ms']:.2f} ms "
          f"({t['speedup_all_fused']:.2f}x), table's choice {t['chosen_ms']:.2f} ms ({t['speedup_chosen']:.2f}x; "
          f"goal >= {t['goal']}x)")
    print(f"wrote {args.output}" + (f" and {args.table}" if args.table else ""))
    if failed:
        print(f"conv_layers: {failed} layer(s) whose fused results disagree with today's path", file=sys.stderr)
        return 1
    return 0


def _write(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=1)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    sys.exit(main())
