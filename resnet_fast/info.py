"""``python -m resnet_fast.info``: versions, and which backends are built and usable (and why not)."""
from __future__ import annotations

import platform

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
        "C++ CPU kernels": _extension.cpu_kernels(),
    }


def main() -> None:
    info = collect()
    width = max(len(k) for k in info)
    for key, value in info.items():
        if key == "backends":
            print("backends:")
            for name, (usable, why) in value.items():
                print(f"  {name:<10} {'usable' if usable else 'not usable'}" + (f" ({why})" if why else ""))
        else:
            print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
