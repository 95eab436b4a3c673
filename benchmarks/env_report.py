"""Print what a benchmark run is about to measure: versions, device, which resnet_fast, backends.

    python benchmarks/env_report.py

Used by gpu_run.sh / cpu_run.sh next to ``python -m resnet_fast.info``; it also says where
``resnet_fast`` was imported from, which shows whether the installed package (with its
compiled extension) or a source checkout is in use.
"""
from __future__ import annotations

import platform
import sys


def main() -> int:
    import torch

    print(f"python {sys.version.split()[0]} on {platform.platform()}")
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), threads {torch.get_num_threads()}")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        print(f"GPU {props.name}, capability {props.major}.{props.minor}, {props.multi_processor_count} SMs, "
              f"{props.total_memory / 2**30:.1f} GiB")
    else:
        print("GPU: none visible")
    try:
        import triton

        print(f"triton {triton.__version__}")
    except ImportError:
        print("triton: not importable")
    for name in ("torchvision", "timm", "pytest_benchmark"):
        try:
            module = __import__(name)
            print(f"{name} {getattr(module, '__version__', '?')}")
        except ImportError:
            print(f"{name}: not importable")
    import resnet_fast
    from resnet_fast import _extension, backend

    _extension.load()
    print(f"resnet_fast {getattr(resnet_fast, '__version__', '?')} imported from {resnet_fast.__file__}")
    print(f"compiled extension: {_extension.status}")
    for name, (ok, why) in backend.backend_status().items():
        print(f"backend {name}: {'usable' if ok else 'not usable: ' + why}")
    print(f"get_model: {'present' if hasattr(resnet_fast, 'get_model') else 'absent (model benchmarks skip)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
