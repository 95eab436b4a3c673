"""Compile every fused-convolution configuration for sm_80 and sm_90 without a GPU, and check the machine code.

A configuration is one specialization a ResNet-50 bottleneck layer at batch 256 launches: kernel
(forward, dgrad, wgrad), kernel size and stride, which prologue/epilogue parts are on (by the layer's
place in the block: conv1 reads the block input and feeds bn1, conv2 and conv3 read bn1/bn2 + ReLU in
their prologue, the downsample and conv3 feed today's BN path), the block configuration
``block_config`` gives for its channels, and the dtype (float16, bfloat16; float32 with --dtype). Each
is compiled through the fake-target driver (``kernels/triton/_fake_target.py``) for every requested
architecture and fails the check on

  * a compile error or a ptxas error;
  * a register spill (``ptxas -v``: spill stores or loads > 0);
  * no tensor-core instruction on the product's source line (wgmma.mma_async on sm_90, mma.sync on
    sm_80): the main loop must run on the tensor cores;
  * no 16-byte global load (ld.global.v4.b32 / .v2.b64, or a 16-byte cp.async) on the source lines of
    the activation operands (the loads marked ``# activation operand`` in the kernels).

Run: ``python -m resnet_fast.kernels.triton.conv.compile_check [--arch 80 90] [--json PATH]``: prints one
line per (configuration, architecture) with registers, shared memory and spills, exits 1 on a failure.
It must run in a process without TRITON_INTERPRET (triton reads it at import).
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    raise SystemExit("compile_check: unset TRITON_INTERPRET (the kernels must compile, not interpret)")

import torch  # noqa: E402
import triton  # noqa: E402

from . import _common  # noqa: E402
from ._common import Geometry, block_config, wgrad_splits  # noqa: E402
from .._fake_target import fake_target, ptxas_report  # noqa: E402
from .dgrad import _conv_dgrad_kernel  # noqa: E402
from .forward import _conv_fwd_kernel  # noqa: E402
from .wgrad import _conv_wgrad_kernel  # noqa: E402

BATCH = 256
# ResNet-50 bottlenecks: (C_in, width, C_out, input H, stride of conv2 / downsample, has downsample)
_BLOCKS = [(64, 64, 256, 56, 1, True), (256, 64, 256, 56, 1, False),
           (256, 128, 512, 56, 2, True), (512, 128, 512, 28, 1, False),
           (512, 256, 1024, 28, 2, True), (1024, 256, 1024, 14, 1, False),
           (1024, 512, 2048, 14, 2, True), (2048, 512, 2048, 7, 1, False)]


@dataclass(frozen=True)
class Layer:
    name: str  # conv1, conv2, conv3, downsample
    geom: Geometry
    prologue: bool  # the input is a BN-ReLU output formed in the prologue (bn1 for conv2, bn2 for conv3)
    consumer_bn: bool  # the output feeds a BN whose backward is fused here (bn1, bn2): dBN prologue in backward


def resnet50_layers() -> list[Layer]:
    layers = []
    for c_in, width, c_out, h, stride, down in _BLOCKS:
        h2 = (h + 2 - 3) // stride + 1
        layers.append(Layer("conv1", Geometry(BATCH, c_in, h, h, width, 1, 1, 1, 0), False, True))
        layers.append(Layer("conv2", Geometry(BATCH, width, h, h, width, 3, 3, stride, 1), True, True))
        layers.append(Layer("conv3", Geometry(BATCH, width, h2, h2, c_out, 1, 1, 1, 0), True, False))
        if down:
            layers.append(Layer("downsample", Geometry(BATCH, c_in, h, h, c_out, 1, 1, stride, 0), False, False))
    return layers


@dataclass(frozen=True)
class Config:
    kernel: str  # fwd, dgrad, wgrad
    kh: int
    stride: int
    prologue: bool  # fwd/wgrad: BN-ReLU of the input; dgrad: dBN of the gradient
    epilogue: bool  # dgrad: producer's dReLU + partials; wgrad: dBN recompute of dy (fwd: always statistics)
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    dtype: str
    example: str  # a layer that uses it (C_in -> C_out, input size)

    @property
    def label(self) -> str:
        names = {"fwd": ("bnrelu-prologue", ""), "dgrad": ("dbn-prologue", "drelu-epilogue"),
                 "wgrad": ("recompute-a", "recompute-dy")}[self.kernel]
        flags = "+".join(name for name, on in zip(names, (self.prologue, self.epilogue)) if on) or "plain"
        return (f"{self.kernel} {self.kh}x{self.kh}s{self.stride} {flags} {self.dtype} "
                f"{self.block_m}x{self.block_n}x{self.block_k} w{self.num_warps} s{self.num_stages}")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def configurations(dtypes=(torch.float16, torch.bfloat16)) -> list[tuple[Config, Layer]]:
    """Each distinct specialization the ResNet-50 layers launch, with the first layer that launches it."""
    seen: dict[Config, tuple[Config, Layer]] = {}

    def add(kernel, layer, prologue, epilogue, blocks, dtype):
        g = layer.geom
        example = f"{layer.name} {g.c_in}->{g.c_out} {g.h}x{g.w}"
        config = Config(kernel, g.kh, g.stride, prologue, epilogue, blocks.block_m, blocks.block_n,
                        blocks.block_k, blocks.num_warps, blocks.num_stages, _dtype_name(dtype), "")
        if config not in seen:
            seen[config] = (Config(**{**asdict(config), "example": example}), layer)

    for dtype in dtypes:
        for layer in resnet50_layers():
            g = layer.geom
            taps = g.kh * g.kw
            add("fwd", layer, layer.prologue, False, block_config("fwd", g.c_out, g.c_in, dtype, taps), dtype)
            # dgrad: the gradient at y comes through this layer's BN (dBN prologue) when that BN is fused;
            # the producer's dReLU applies when the input is a fused BN-ReLU output
            add("dgrad", layer, layer.consumer_bn, layer.prologue,
                block_config("dgrad", g.c_in, g.c_out, dtype, taps), dtype)
            # wgrad: recompute the BN-ReLU input (as the forward) and dy (as the dgrad's prologue)
            add("wgrad", layer, layer.prologue, layer.consumer_bn,
                block_config("wgrad", g.c_in, g.c_out, dtype, taps), dtype)
    return list(seen.values())


def _warmup(config: Config, layer: Layer):
    """Compile ``config`` for the active (fake) target with the layer's real sizes (their divisibility by 16
    is part of the specialization)."""
    g = layer.geom
    dtype = getattr(torch, config.dtype)

    def t(*shape, dt=dtype):
        return torch.empty(shape, dtype=dt)

    f32 = torch.float32
    common = dict(KH=g.kh, KW=g.kw, STRIDE=g.stride, PAD=g.pad, DOT_FP32=False,
                  INPUT_PRECISION=_common.input_precision(dtype), BLOCK_M=config.block_m, BLOCK_N=config.block_n,
                  BLOCK_K=config.block_k, num_warps=config.num_warps, num_stages=config.num_stages)
    if config.kernel == "fwd":
        tiles = triton.cdiv(g.rows, config.block_m)
        return _conv_fwd_kernel.warmup(
            t(g.n, g.h, g.w, g.c_in), t(g.c_out, g.kh, g.kw, g.c_in), t(g.c_in, dt=f32), t(g.c_in, dt=f32),
            t(g.n, g.oh, g.ow, g.c_out), t(tiles, g.c_out, dt=f32), t(tiles, g.c_out, dt=f32),
            g.rows, g.h, g.w, g.c_in, g.c_out, g.oh, g.ow, PROLOGUE=config.prologue, grid=(1,), **common)
    if config.kernel == "dgrad":
        tiles = triton.cdiv(g.input_rows, config.block_m)
        out = t(g.n, g.oh, g.ow, g.c_out)
        return _conv_dgrad_kernel.warmup(
            out, out, t(g.c_out, dt=f32), t(g.c_out, dt=f32), t(g.c_out, dt=f32), t(g.c_out, g.kh, g.kw, g.c_in),
            t(g.n, g.h, g.w, g.c_in), t(g.c_in, dt=f32), t(g.c_in, dt=f32), t(g.c_in, dt=f32),
            t(g.n, g.h, g.w, g.c_in), t(tiles, g.c_in, dt=f32), t(tiles, g.c_in, dt=f32),
            g.input_rows, g.h, g.w, g.c_in, g.c_out, g.oh, g.ow, BN_PROLOGUE=config.prologue,
            PRODUCER=config.epilogue, grid=(1,), **common)
    splits, rows_per_split = wgrad_splits(g, _common.Blocks(config.block_m, config.block_n, config.block_k,
                                                            config.num_warps, config.num_stages))
    out = t(g.n, g.oh, g.ow, g.c_out)
    return _conv_wgrad_kernel.warmup(
        t(g.n, g.h, g.w, g.c_in), t(g.c_in, dt=f32), t(g.c_in, dt=f32), out, out, t(g.c_out, dt=f32),
        t(g.c_out, dt=f32), t(g.c_out, dt=f32), t(splits, g.c_out, g.kh, g.kw, g.c_in, dt=f32),
        g.rows, g.h, g.w, g.c_in, g.c_out, g.oh, g.ow, rows_per_split, PROLOGUE=config.prologue,
        BN_PROLOGUE=config.epilogue, grid=(1,), **common)


# ----------------------------------------------------------------------------- PTX inspection
_KERNELS = {"fwd": _conv_fwd_kernel, "dgrad": _conv_dgrad_kernel, "wgrad": _conv_wgrad_kernel}
_WIDE_LOAD = re.compile(r"ld\.global[\w.:]*\.(v4\.(b32|f32|u32)|v2\.(b64|f64|u64))|"
                        r"cp\.async\.c[ag]\.shared\.global[\w.:]*\s+\[[^\]]*\],\s*\[[^\]]*\],\s*(16|0x10)\b")
_ANY_LOAD = re.compile(r"\b(ld\.global|cp\.async)")
_MMA = {80: re.compile(r"\bmma\.sync\.aligned"), 90: re.compile(r"\bwgmma\.mma_async")}


def _marked_lines(kernel, marker: str) -> set[int]:
    """Source line numbers (1-based, in the kernel's file) of the kernel's lines that carry ``marker``."""
    fn = kernel.fn
    lines, start = inspect.getsourcelines(fn)
    return {start + i for i, line in enumerate(lines) if marker in line}


def _mma_lines() -> set[int]:
    lines, start = inspect.getsourcelines(_common.mma.fn)
    return {start + i for i, line in enumerate(lines) if "tl.dot(" in line}


def _ptx_by_line(ptx: str) -> list[tuple[str, int, str]]:
    """(file name, source line, instruction) for each instruction of the PTX, from its .file/.loc directives."""
    files = {m.group(1): os.path.basename(m.group(2)) for m in re.finditer(r'\.file\s+(\d+)\s+"([^"]+)"', ptx)}
    out, where = [], ("", 0)
    for raw in ptx.splitlines():  # the .file directives come after the code
        line = raw.strip()
        if line.startswith(".file"):
            continue
        m = re.match(r"\.loc\s+(\d+)\s+(\d+)", line)
        if m:
            where = (files.get(m.group(1), m.group(1)), int(m.group(2)))
            continue
        if line and not line.startswith(("//", ".", "}", "{", "$")):
            out.append((where[0], where[1], line))
    return out


def inspect_ptx(config: Config, ptx: str, arch: int) -> dict:
    kernel = _KERNELS[config.kernel]
    kernel_file = os.path.basename(inspect.getsourcefile(kernel.fn))
    activation_lines = _marked_lines(kernel, "# activation operand")
    mma_lines = _mma_lines()
    by_line = _ptx_by_line(ptx)
    mma_in_loop = sum(1 for f, ln, ins in by_line if f == "_common.py" and ln in mma_lines and _MMA[arch].search(ins))
    act = [(ln, ins) for f, ln, ins in by_line if f == kernel_file and ln in activation_lines and _ANY_LOAD.search(ins)]
    wide = [ins for _, ins in act if _WIDE_LOAD.search(ins)]
    return {"mma": mma_in_loop, "activation_loads": len(act), "activation_wide_loads": len(wide),
            "activation_load_kinds": sorted({re.sub(r"\s.*", "", ins.split(" ", 1)[-1] if ins.startswith("@")
                                                    else ins) for _, ins in act})}


def _tf32_transposed_copy(config: Config, arch: int, record: dict) -> bool:
    """A float32 wgrad without prologue on sm_90: its operands go global -> shared by cp.async, and
    wgmma's tf32 form reads only K-major shared tiles while wgrad's (rows x channels, channels
    contiguous) are MN-major, so Triton transposes them with 4-byte copies. Inherent to tf32 on
    Hopper, not a layout defect of the kernel; the 16-bit dtypes (wgmma transposes them) keep
    16-byte copies, and the prologue variants load through registers with 16-byte loads."""
    return (config.dtype == "float32" and config.kernel == "wgrad" and not config.prologue and arch >= 90
            and any(kind.startswith("cp.async") for kind in record["activation_load_kinds"]))


def check(config: Config, layer: Layer, arch: int) -> dict:
    started = time.time()
    record = {"config": config.label, "example": config.example, "arch": arch}
    try:
        with fake_target(arch):
            compiled = _warmup(config, layer)
        ptx = compiled.asm["ptx"]
        record.update(shared=compiled.metadata.shared, **ptxas_report(ptx, arch), **inspect_ptx(config, ptx, arch))
        problems = []
        if record["spill_stores"] or record["spill_loads"]:
            problems.append(f"register spill ({record['spill_stores']} B stores, {record['spill_loads']} B loads)")
        if record["mma"] == 0:
            problems.append(f"no {'wgmma' if arch >= 90 else 'mma'} on the product's line")
        if record["activation_wide_loads"] == 0:
            if _tf32_transposed_copy(config, arch, record):
                record["note"] = ("4-byte async copies of the activation operand: tf32 wgmma takes K-major "
                                  "operands only, and wgrad's are channels-contiguous (MN-major)")
            else:
                problems.append("no 16-byte load on the activation operand "
                                f"(loads there: {record['activation_load_kinds']})")
        record["problems"] = problems
    except Exception as error:  # a compile or ptxas error is a failure of this configuration
        record["problems"] = [f"{type(error).__name__}: {str(error)[-1500:]}"]
    record["seconds"] = round(time.time() - started, 1)
    return record


def markdown(records: list[dict]) -> str:
    """The records as a table: one row per configuration, registers / shared memory / spills per architecture."""
    archs = sorted({r["arch"] for r in records})
    rows: dict[str, dict] = {}
    for r in records:
        rows.setdefault(r["config"], {"example": r["example"]})[r["arch"]] = r
    head = "| configuration | first layer |" + "".join(f" sm_{a} regs | smem B | spill st/ld B |" for a in archs)
    lines = [head, "|" + "---|" * (2 + 3 * len(archs))]
    for label, by_arch in rows.items():
        cells = [f" `{label}` | {by_arch['example']} |"]
        for a in archs:
            r = by_arch.get(a, {})
            cells.append(f" {r.get('registers', '-')} | {r.get('shared', '-')} | "
                         f"{r.get('spill_stores', '-')}/{r.get('spill_loads', '-')} |")
        lines.append("|" + "".join(cells))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    parser.add_argument("--dtype", nargs="+", default=["float16", "bfloat16"])
    parser.add_argument("--json", help="write the records here")
    parser.add_argument("--markdown", help="write the records here as a markdown table")
    parser.add_argument("--only", default="", help="only configurations whose label contains this")
    args = parser.parse_args(argv)
    configs = configurations(tuple(getattr(torch, d) for d in args.dtype))
    configs = [(c, layer) for c, layer in configs if args.only in c.label]
    records, failed = [], 0
    for config, layer in configs:
        for arch in args.arch:
            record = check(config, layer, arch)
            records.append(record)
            failed += bool(record["problems"])
            status = "FAIL " + "; ".join(record["problems"]) if record["problems"] else "ok"
            print(f"sm_{arch} {config.label:<64} regs {record.get('registers', '-'):>3} "
                  f"smem {record.get('shared', '-'):>6} spill {record.get('spill_stores', '-')}/"
                  f"{record.get('spill_loads', '-')} mma {record.get('mma', '-')} "
                  f"wide {record.get('activation_wide_loads', '-')}/{record.get('activation_loads', '-')} "
                  f"{record['seconds']}s {status}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(records))
    print(f"{len(records) - failed} of {len(records)} compiled and passed the checks")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
