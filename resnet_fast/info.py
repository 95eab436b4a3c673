"""``python -m resnet_fast.info``: versions, and which backends are built and usable (and why not).

``python -m resnet_fast.info --check`` also runs the self-check (resnet_fast/self_check.py) of
every backend usable here, fresh (not from the cache), prints a pass/fail table with the
errors, and exits with status 1 when a check failed.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time

import torch


def collect() -> dict:
    import resnet_fast
    from resnet_fast import _build_config, _extension, backend

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    compiled = _extension.load()
    cuda_built, cuda_why = _build_config.cuda_build_status()
    cuda_choice = "no CUDA device"
    if torch.cuda.is_available():  # per primitive, after auto's self-check (cached) of the candidates
        cuda = torch.device("cuda", torch.cuda.current_device())
        cuda_choice = {op: backend.resolve(op, cuda) for op in _extension.OPS}
        if len(set(cuda_choice.values())) == 1:
            cuda_choice = next(iter(cuda_choice.values()))
    return {
        "resnet_fast": resnet_fast.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch CUDA": torch.version.cuda,
        "triton": triton_version,
        "GPU": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "nvcc / CUDA_HOME": _build_config.find_cuda_home(),
        "extension": _extension.status["how"] + (f" ({_extension.status['path']})" if compiled else
                                                 f": {_extension.status['error']}"),
        "CUDA kernels compiled": _extension.has_cuda_kernels(),
        "CUDA kernels buildable here": cuda_built or cuda_why,
        "selected backend": backend.get_backend(),
        "backends": backend.backend_status(),
        "CPU tensors run on": backend.resolve("bn_stats", torch.device("cpu")),
        "CUDA tensors run on": cuda_choice,
        "C++ CPU kernels": _extension.cpu_kernels(),
    }


def check_devices() -> dict[str, tuple[str | None, str]]:
    """Each backend: (the device its self-check runs on, or None with why it is skipped)."""
    from resnet_fast import backend

    gpu = "cuda" if torch.cuda.is_available() else None
    devices = {}
    for name, (usable, why) in backend.backend_status().items():
        if not usable:
            devices[name] = (None, why)
        elif name == "cpu":
            devices[name] = ("cpu", "")
        else:  # cuda, triton (CPU tensors only under the interpreter) and the reference
            devices[name] = (gpu or "cpu", "")
    return dict(sorted(devices.items(), key=lambda item: ("cpu", "cuda", "triton", "reference").index(item[0])))


def run_check(out=sys.stdout) -> bool:
    """Run every usable backend's self-check, print the table; True when every check passed."""
    from resnet_fast import backend, self_check

    devices = check_devices()
    verdicts, seconds = {}, {}
    for name, (device, _) in devices.items():
        if device is not None:
            start = time.perf_counter()
            verdicts[name] = self_check.check_backend(name, backend.table_of(name), torch.device(device))
            seconds[name] = time.perf_counter() - start
    print("\nself-check against the reference backend (float32/float64/float16/bfloat16, contiguous and "
          "channels_last, forward and backward):", file=out)
    names = list(verdicts)
    width = max(len(c) for c in self_check.CHECKS)
    print(f"  {'':<{width}}  " + "  ".join(f"{n:<9}" for n in names), file=out)
    for check in self_check.CHECKS:
        cells = ["pass" if verdicts[n][check].passed else "FAIL" for n in names]
        print(f"  {check:<{width}}  " + "  ".join(f"{c:<9}" for c in cells), file=out)
    print(f"  {'device, seconds':<{width}}  " + "  ".join(f"{devices[n][0]} {seconds[n]:.1f}".ljust(9)
                                                         for n in names), file=out)
    for name, (device, why) in devices.items():
        if device is None:
            print(f"  skipped {name}: {why}", file=out)
    failures = [v for n in names for v in verdicts[n].values() if not v.passed]
    for v in failures:
        print(f"  FAIL {v.backend} {v.check}: {v.error}", file=out)
    print(f"self-check: {'all passed' if not failures else f'{len(failures)} failed'}", file=out)
    return not failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnet_fast.info",
                                     description="Versions, and which backends are built and usable (and why not).")
    parser.add_argument("--check", action="store_true",
                        help="also run the self-check of every usable backend (every primitive and fused op "
                             "against the reference) and exit with status 1 on a failure")
    args = parser.parse_args(argv)
    info = collect()
    width = max(len(k) for k in info)
    for key, value in info.items():
        if key == "backends":
            print("backends:")
            for name, (usable, why) in value.items():
                print(f"  {name:<10} {'usable' if usable else 'not usable'}" + (f" ({why})" if why else ""))
        else:
            print(f"{key:<{width}}  {value}")
    if args.check and not run_check():
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
