"""Bandwidth of the kernel primitives at ResNet-50 batch-256 shapes (bf16, channels_last) on one GPU.

For every BatchNorm shape of ResNet-50 and every primitive, times (median, L2 flushed,
triton.testing.do_bench) the Triton kernels, the CUDA kernels (when the installed
extension has them), the eager torch reference (resnet_fast/ops/primitives.py) and
torch.compile of that reference, and reports GB/s counting the bytes each must move at
least (every tensor argument read once, every output written once), next to the
device's copy bandwidth (y.clone()) at the same size.

    python benchmarks/primitive_bandwidth.py results.json [--batch 256] [--no-compile] [--quick]
        [--backend-table resnet_fast/backend_table.json]

--backend-table writes the table the "auto" backend reads: per primitive, whichever of
cuda / triton took less time summed over the shapes (ship it by copying it into the
package source before building). Without a CUDA device it says so and exits with status 0.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys

import torch

# ResNet-50's BatchNorm inputs (C, H) with H == W: stem, then each stage's 1x1-reduce, 3x3 and 1x1-expand widths.
RESNET50_SHAPES = [
    (64, 112),
    (64, 56), (256, 56), (128, 56),
    (128, 28), (512, 28), (256, 28),
    (256, 14), (1024, 14), (512, 14),
    (512, 7), (2048, 7),
]
QUICK_SHAPES = [(64, 112), (256, 56), (512, 28), (1024, 14), (2048, 7)]


def tensor_bytes(values) -> int:
    total = 0
    for v in values:
        if isinstance(v, torch.Tensor):
            total += v.numel() * v.element_size()
        elif isinstance(v, (tuple, list)):
            total += tensor_bytes(v)
    return total


def cases(n: int, c: int, h: int, dtype: torch.dtype):
    """(name, args) per primitive variant: the configurations a ResNet-50 training step runs."""
    def act(seed):
        g = torch.Generator(device="cuda").manual_seed(seed)
        t = torch.randn((n, c, h, h), device="cuda", dtype=dtype, generator=g)
        return t.contiguous(memory_format=torch.channels_last)

    def coef(*shape):
        return torch.rand(shape, device="cuda", dtype=torch.float32) + 0.5

    y, residual, dout = act(0), act(1), act(2)
    scale, shift = coef(n, c), coef(n, c) - 1.0
    center = y.float().mean(dim=(0, 2, 3))
    k = (coef(n, c), coef(n, c), coef(c), center)
    return [
        ("bn_stats", (y,)),
        ("scale_shift_act", (y, scale, shift, None, None, None, True)),  # conv -> bn -> relu
        ("scale_shift_act+residual", (y, scale, shift, residual, None, None, True)),  # block tail
        ("scale_shift_act_backward_reduce", (dout, y, scale, shift, None, None, None, True, center, None)),
        ("scale_shift_act_backward_apply", (dout, y, scale, shift, None, None, None, True, *k,
                                            None, None, None, None)),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="path of the JSON results")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile of the reference")
    parser.add_argument("--quick", action="store_true", help="one shape per stage instead of all")
    parser.add_argument("--backend-table", metavar="PATH", help="write the auto backend's per-primitive choice")
    args = parser.parse_args()

    if not torch.cuda.is_available():
        print("primitive_bandwidth: no CUDA device, nothing to measure (the benchmark needs a GPU)")
        return 0
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("primitive_bandwidth: TRITON_INTERPRET is set; unset it to time the compiled kernels")
        return 0
    import triton
    from triton.testing import do_bench

    from resnet_fast import _extension
    from resnet_fast.kernels import triton as kernels
    from resnet_fast.ops import primitives as reference

    # Timed under the primitive's own name: triton, cuda when built, eager; compile separately.
    backends = ["triton"] + (["cuda"] if _extension.has_cuda_kernels() else [])
    print(f"primitive_bandwidth: timing {', '.join(backends)}, eager"
          + ("" if args.no_compile else ", torch.compile") + f" on {torch.cuda.get_device_name()}")

    def bench(fn) -> float:
        fn()  # autotune / compile outside the timing
        torch.cuda.synchronize()
        return do_bench(fn, warmup=25, rep=100, return_mode="median")

    dtype = torch.bfloat16
    compiled = {}
    results = []
    summary = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "dtype": str(dtype),
        "memory_format": "channels_last",
        "batch": args.batch,
        "bytes": "every tensor argument read once plus every output written once",
        "timing": "triton.testing.do_bench, median, L2 flushed between runs",
        "complete": False,
        "results": results,
    }

    def save() -> None:  # after every row: a run cut short by a time limit keeps what it measured
        with open(args.output + ".tmp", "w") as f:
            json.dump(summary, f, indent=2)
        os.replace(args.output + ".tmp", args.output)

    labels = backends + ["eager"] + ([] if args.no_compile else ["compile"])
    print(f"{'shape':>22} {'primitive':<34} {'MB':>8} " + " ".join(f"{label + ' GB/s':>13}" for label in labels)
          + f" {'copy GB/s':>10} {'best/copy':>9}")
    for c, h in (QUICK_SHAPES if args.quick else RESNET50_SHAPES):
        shape = (args.batch, c, h, h)
        torch.cuda.empty_cache()
        all_cases = cases(*shape[:3], dtype)
        y = all_cases[0][1][0]
        copy_ms = bench(lambda: y.clone(memory_format=torch.channels_last))
        copy_gbps = 2 * tensor_bytes([y]) / copy_ms / 1e6
        for name, call_args in all_cases:
            op = name.split("+")[0]
            eager_fn = reference.PRIMITIVES[op]
            fns = {"triton": getattr(kernels, op), "cuda": getattr(torch.ops.resnet_fast, op), "eager": eager_fn}
            nbytes = tensor_bytes(call_args) + tensor_bytes(eager_fn(*call_args))
            row = dict(shape=list(shape), primitive=name, bytes=nbytes, copy_ms=copy_ms, copy_GBps=copy_gbps)
            for label in backends + ["eager"]:
                fn = fns[label]
                ms = bench(lambda: fn(*call_args))
                row[f"{label}_ms"], row[f"{label}_GBps"] = ms, nbytes / ms / 1e6
            if not args.no_compile:
                if op not in compiled:
                    compiled[op] = torch.compile(eager_fn, dynamic=False)
                ms = bench(lambda: compiled[op](*call_args))
                row["compile_ms"], row["compile_GBps"] = ms, nbytes / ms / 1e6
            results.append(row)
            save()
            best = max(row[f"{label}_GBps"] for label in backends)
            print(f"{str(shape):>22} {name:<34} {nbytes / 1e6:8.1f} "
                  + " ".join(f"{row[label + '_GBps']:13.0f}" for label in labels)
                  + f" {copy_gbps:10.0f} {best / copy_gbps:9.2f}")
        del all_cases, y

    summary["complete"] = True
    save()
    print(f"wrote {args.output}")
    if args.backend_table:
        write_backend_table(args.backend_table, summary, backends)
    return 0


def write_backend_table(path: str, summary: dict, backends: list[str]) -> None:
    """{"choice": {primitive: backend}} with the backend of least total time over the shapes."""
    totals: dict[str, dict[str, float]] = {}
    for row in summary["results"]:
        op = row["primitive"].split("+")[0]
        for label in backends:
            totals.setdefault(op, {}).setdefault(label, 0.0)
            totals[op][label] += row[f"{label}_ms"]
    table = {
        "choice": {op: min(times, key=times.get) for op, times in sorted(totals.items())},
        "total_ms": totals,
        "measured": {k: summary[k] for k in ("device", "torch", "triton", "dtype", "memory_format", "batch")}
                    | {"date": datetime.date.today().isoformat(), "command": " ".join(sys.argv)},
    }
    with open(path, "w") as f:
        json.dump(table, f, indent=2)
    print(f"wrote {path}: {table['choice']}")


if __name__ == "__main__":
    sys.exit(main())
