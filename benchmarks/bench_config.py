"""What a benchmark run measures: device, sizes, rounds and contenders, from environment variables.

Every knob is an environment variable so the shell scripts and CI can set it; the pytest
option ``--smoke`` (conftest.py) sets ``RESNET_FAST_BENCH_SMOKE=1``.

  RESNET_FAST_BENCH_SMOKE=1         tiny shapes (ops 2x8x8x8 / 2x32x8x8, models 2x3x64x64), one
                                    call, no torch.compile, outputs checked against eager (CI).
                                    Also on under --benchmark-disable unless RESNET_FAST_BENCH_SMOKE=0.
  RESNET_FAST_BENCH_DEVICE          cpu | cuda (default: cuda when available)
  RESNET_FAST_BENCH_THREADS         CPU threads (default 2)
  RESNET_FAST_BENCH_MEMORY_FORMAT   channels_last | contiguous: activations, weights and models
                                    (default channels_last)
  RESNET_FAST_BENCH_MODELS          comma list (default: all five)
  RESNET_FAST_BENCH_BACKENDS        comma list of resnet_fast backends to try (default: every usable one)
  RESNET_FAST_BENCH_COMPILE         0 | 1: torch.compile contenders (default 1, 0 in smoke mode)
  RESNET_FAST_BENCH_COMPILE_MODELS  comma list or "all": models that get compile contenders
                                    (default resnet50: compiling is minutes per model and mode)
  RESNET_FAST_BENCH_CONV_BACKENDS   comma list of resnet_fast convolution backends ("aten", "triton")
                                    that get training contenders of their own, rf_<backend>_conv_<name>,
                                    for CONV_BACKEND_MODELS (default aten,triton on GPU; none on CPU;
                                    "none": none)
  RESNET_FAST_BENCH_{OP_BATCH,MODEL_BATCH,IMAGE,OP_ROUNDS,OP_WARMUP,MODEL_ROUNDS,MODEL_WARMUP},
  RESNET_FAST_BENCH_{ROUNDS,WARMUP} (both levels)   override sizes and rounds
"""
from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass

import torch

MODELS = ("resnet50", "resnet18", "se_resnet50", "resnext50_32x4d", "preact_resnet50")
OPS = ("conv_bn_relu", "bn_relu_conv", "bn_relu", "bn_add_relu", "squeeze_excite")
OP_MODES = ("fwd", "bwd", "fwdbwd", "infer")
MODEL_MODES = ("train", "infer")
# Contender name -> torch.compile mode, and inductor settings on top of the mode's (compile_max is issue 20's
# baseline: max-autotune, CUDA graphs included, with 1x1 convolutions lowered to matrix products so that
# inductor's GEMM templates can fuse the BN + ReLU around them).
COMPILE_MODES = {"compile": "default", "compile_max": "max-autotune"}
COMPILE_INDUCTOR_OPTIONS = {"compile_max": {"conv_1x1_as_mm": True}}
RF_PREFIX = "rf_"  # resnet_fast contenders are "rf_<backend>"
# "rf_<backend>_cached": inference inside resnet_fast.inference_cache() (BN folded into the
# weights once, not on every forward), held open across the timed rounds.
CACHED_SUFFIX = "_cached"
# "rf_<backend>_low_memory": training with ResNet.set_low_memory() (convolutions rerun in
# backward instead of their outputs kept), for the models where it changes what is kept.
LOW_MEMORY_SUFFIX = "_low_memory"
LOW_MEMORY_MODELS = ("resnet50", "resnext50_32x4d")
# "rf_<backend>_conv_<aten|triton>": training with resnet_fast.set_conv_backend(<name>) (the blocks'
# convolutions through ATen, or the fused Triton kernels); plain rf_<backend> runs the process's
# convolution backend (RESNET_FAST_CONV_BACKEND, default "auto": the shipped conv table).
CONV_INFIX = "_conv_"
CONV_BACKENDS = ("aten", "triton")
CONV_BACKEND_MODELS = ("resnet50",)  # bottlenecks without groups: what the fused kernels cover
BACKEND_ORDER = ("cuda", "triton", "cpu", "reference")

# ResNet-50 bottleneck widths and spatial sizes per stage at 224x224; the block tails run
# on the 4x-wider outputs.
STAGES = ((64, 56), (128, 28), (256, 14), (512, 7))
SMOKE_STAGES = ((8, 8),)
EXPANSION = 4
MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def _env(name: str, default: str = "") -> str:
    return os.environ.get(f"RESNET_FAST_BENCH_{name}", default)


def _env_list(name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    value = _env(name)
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else default


def _env_int(name: str, default: int) -> int:
    value = _env(name)
    return int(value) if value else default


def smoke_requested() -> bool:
    return _env("SMOKE", "0") not in ("", "0")


@dataclass(frozen=True)
class Settings:
    smoke: bool
    device: str                       # "cpu" | "cuda"
    threads: int
    op_batch: int
    model_batch: int
    image: int
    op_rounds: int
    op_warmup: int
    model_rounds: int
    model_warmup: int
    stages: tuple
    layout: str                       # "channels_last" | "contiguous"
    models: tuple
    backends: tuple                   # usable resnet_fast backends on this device, fastest first
    backend_why_not: dict             # the others: name -> why not
    op_compile: tuple                 # compile contender names at op level
    model_compile: tuple              # ... at model level
    compile_models: tuple
    conv_backends: tuple              # convolution backends with contenders of their own (train)

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    @property
    def memory_format(self) -> torch.memory_format:
        return MEMORY_FORMATS[self.layout]

    @property
    def act_dtype(self) -> torch.dtype:
        """Activation dtype: bf16 (autocast for models) on GPU, fp32 on CPU."""
        return torch.bfloat16 if self.cuda else torch.float32

    def op_contenders(self) -> list[str]:
        return ["eager", *self.op_compile, *(RF_PREFIX + b for b in self.backends)]

    def model_contenders(self, model: str, mode: str) -> list[str]:
        compiled = self.model_compile if model in self.compile_models or "all" in self.compile_models else ()
        suffix = CACHED_SUFFIX if mode == "infer" else LOW_MEMORY_SUFFIX if model in LOW_MEMORY_MODELS else None
        variants = [RF_PREFIX + b + suffix for b in self.backends] if suffix else []
        conv = [RF_PREFIX + b + CONV_INFIX + c for b in self.backends for c in self.conv_backends] \
            if mode == "train" and model in CONV_BACKEND_MODELS else []
        return ["eager", *compiled, *(RF_PREFIX + b for b in self.backends), *conv, *variants]


def _usable_backends(device: str) -> tuple[tuple, dict]:
    from resnet_fast.backend import backend_status

    status = backend_status()
    wanted = _env_list("BACKENDS", BACKEND_ORDER)
    on_device = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpu", "reference")}[device]
    usable, why_not = [], {}
    for name in BACKEND_ORDER:
        ok, why = status.get(name, (False, "unknown backend"))
        if name not in on_device:
            why_not[name] = f"not a {device} backend"
        elif name not in wanted:
            why_not[name] = "not in RESNET_FAST_BENCH_BACKENDS"
        elif not ok:
            why_not[name] = why
        else:
            usable.append(name)
    return tuple(usable), why_not


@functools.lru_cache(maxsize=None)
def settings() -> Settings:
    smoke = smoke_requested()
    device = _env("DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"RESNET_FAST_BENCH_DEVICE={device!r}: expected cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("RESNET_FAST_BENCH_DEVICE=cuda but no CUDA device is visible")
    cuda = device == "cuda"
    layout = _env("MEMORY_FORMAT", "channels_last")
    if layout not in MEMORY_FORMATS:
        raise ValueError(f"RESNET_FAST_BENCH_MEMORY_FORMAT={layout!r}: expected one of {', '.join(MEMORY_FORMATS)}")
    compile_on = _env("COMPILE", "0" if smoke else "1") not in ("", "0")
    backends, why_not = _usable_backends(device)
    conv_backends = _env_list("CONV_BACKENDS", CONV_BACKENDS if cuda else ())
    conv_backends = () if conv_backends == ("none",) else conv_backends
    unknown = set(conv_backends) - set(CONV_BACKENDS)
    if unknown:
        raise ValueError(f"RESNET_FAST_BENCH_CONV_BACKENDS: unknown {sorted(unknown)}; "
                         f"expected some of {CONV_BACKENDS} or none")
    if smoke:
        sizes = dict(op_batch=2, model_batch=2, image=64, op_rounds=1, op_warmup=0, model_rounds=1, model_warmup=0)
    elif cuda:
        sizes = dict(op_batch=256, model_batch=256, image=224, op_rounds=20, op_warmup=3, model_rounds=10,
                     model_warmup=3)
    else:
        sizes = dict(op_batch=8, model_batch=16, image=224, op_rounds=5, op_warmup=1, model_rounds=3,
                     model_warmup=1)
    sizes = {k: _env_int(k.upper(), v) for k, v in sizes.items()}
    if _env("ROUNDS"):
        sizes["op_rounds"] = sizes["model_rounds"] = _env_int("ROUNDS", 1)
    if _env("WARMUP"):
        sizes["op_warmup"] = sizes["model_warmup"] = _env_int("WARMUP", 0)
    return Settings(
        smoke=smoke,
        device=device,
        threads=_env_int("THREADS", 2),
        stages=SMOKE_STAGES if smoke else STAGES,
        layout=layout,
        models=_env_list("MODELS", MODELS),
        backends=backends,
        backend_why_not=why_not,
        op_compile=("compile",) if compile_on else (),
        model_compile=(("compile", "compile_max") if cuda else ("compile",)) if compile_on else (),
        compile_models=_env_list("COMPILE_MODELS", ("resnet50",)),
        conv_backends=conv_backends,
        **sizes,
    )


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} CPU ({torch.get_num_threads()} threads)"


def environment() -> dict:
    """Facts recorded with every benchmark row (extra_info) and once per JSON file."""
    import resnet_fast
    from resnet_fast import _extension

    s = settings()
    return {
        "device": s.device,
        "device_name": device_name(s.device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "resnet_fast": getattr(resnet_fast, "__version__", "?"),
        "cpu_kernels": _extension.cpu_kernels(),
        "dtype": "bf16 autocast" if s.cuda else "fp32",
        "memory_format": s.layout,
        "threads": torch.get_num_threads(),
        "smoke": s.smoke,
    }


def contender_backend(contender: str) -> str:
    """The resnet_fast backend of an "rf_<backend>[_cached|_low_memory|_conv_<name>]" contender."""
    return contender[len(RF_PREFIX):].removesuffix(CACHED_SUFFIX).removesuffix(LOW_MEMORY_SUFFIX).split(CONV_INFIX)[0]


def contender_conv_backend(contender: str) -> str:
    """The convolution backend an rf_ contender runs: <name> of "..._conv_<name>", else the process's
    (RESNET_FAST_CONV_BACKEND, default "auto")."""
    if CONV_INFIX in contender:
        return contender.split(CONV_INFIX, 1)[1]
    return os.environ.get("RESNET_FAST_CONV_BACKEND", "auto")


def compile_settings(contender: str) -> dict:
    """torch.compile's keyword arguments for a compile contender: its mode, or, where inductor settings
    come on top (COMPILE_INDUCTOR_OPTIONS), the mode's options with them (torch.compile takes one or the
    other)."""
    mode = COMPILE_MODES[contender]
    extra = COMPILE_INDUCTOR_OPTIONS.get(contender)
    if not extra:
        return {"mode": mode}
    import torch._inductor

    return {"options": {**torch._inductor.list_mode_options(mode), **extra}}


def compile_fn(fn, contender: str):
    """torch.compile(fn) as contender ``contender`` ("compile", "compile_max") compiles it, static shapes."""
    return torch.compile(fn, dynamic=False, **compile_settings(contender))
