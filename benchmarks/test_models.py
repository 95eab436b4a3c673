"""Model-level benchmarks: a training step and inference, resnet_fast against torchvision/timm.

Rows: model x mode x contender.
  modes      train (forward, cross-entropy, backward, SGD step, zero_grad), infer (eval + no_grad)
  contenders eager (torchvision / timm model), compile / compile_max (torch.compile of it,
             mode "default" / mode "max-autotune" with inductor's conv_1x1_as_mm = True),
             rf_<backend> (resnet_fast.get_model(name) with the eager model's weights,
             strict=True), rf_<backend>_conv_<aten|triton> (train, resnet50, GPU: the same with
             resnet_fast.set_conv_backend(<name>): the blocks' convolutions through ATen or the
             fused Triton kernels), rf_<backend>_cached (infer only: the same inside
             resnet_fast.inference_cache(), open across the timed rounds),
             rf_<backend>_low_memory (train, resnet50 and resnext50_32x4d: with
             ResNet.set_low_memory())
channels_last (contiguous with RESNET_FAST_BENCH_MEMORY_FORMAT=contiguous); fp32 on CPU, bf16
autocast on GPU. Before timing, each contender's logits
(and, in train, every parameter's gradient) are compared with the eager model's on the
same batch and weights and the error is recorded; in smoke mode both are also compared with
an fp64 run of the eager model, and the contender may not be much worse than eager
(harness.check_against_fp64).
"""
from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F

import resnet_fast

import bench_cases as cases
import bench_config as config
import bench_harness as harness
import memory

S = config.settings()
CL = S.memory_format  # channels_last unless RESNET_FAST_BENCH_MEMORY_FORMAT says otherwise

MODEL_PARAMS = [pytest.param(name, mode, contender, id=f"{name}-{mode}-{contender}")
                for name in S.models for mode in config.MODEL_MODES for contender in S.model_contenders(name, mode)]


def _batch():
    g = torch.Generator(device=S.device).manual_seed(0)
    x = torch.randn(S.model_batch, 3, S.image, S.image, generator=g, device=S.device).contiguous(memory_format=CL)
    labels = torch.randint(0, 1000, (S.model_batch,), generator=g, device=S.device)
    return x, labels


def _contender(name: str, eager: torch.nn.Module, contender: str, set_backend) -> torch.nn.Module:
    model, why = cases.contender_model(name, eager, contender, S.device)
    if model is None:
        pytest.skip(why)
    if contender.startswith(config.RF_PREFIX):
        set_backend(config.contender_backend(contender))
        resnet_fast.set_conv_backend(config.contender_conv_backend(contender))
    return model


def _outputs(model: torch.nn.Module, x, labels, mode: str, exact: bool = False) -> dict:
    """Logits and (train) every parameter's gradient, by parameter name; grads are cleared after.

    ``exact``: run an fp64 copy of ``model`` without autocast (the reference of the smoke check).
    """
    if exact:
        model, x = copy.deepcopy(model).double(), x.double()
    amp = contextlib.nullcontext() if exact else harness.autocast(S)
    if mode == "infer":
        with torch.no_grad(), amp:
            return {"logits": model(x).float()}
    with amp:
        logits = model(x)
        loss = F.cross_entropy(logits.float(), labels)
    loss.backward()
    result = {"logits": logits.detach().float()}
    for pname, p in model.named_parameters():
        if p.grad is not None:
            result[pname.removeprefix("_orig_mod.")] = p.grad.detach().clone()
    model.zero_grad(set_to_none=True)
    return result


_references: dict = {}


def _reference(eager: torch.nn.Module, x, labels, name: str, mode: str) -> tuple[dict, dict]:
    """(eager outputs, fp64 outputs or {}) for (name, mode), computed once and kept on the CPU
    (the same weights and batch serve every contender; kept off the GPU so they do not count
    in the next rows' peak memory)."""
    key = (name, mode)
    if key not in _references:
        ref = {k: v.cpu() for k, v in _outputs(eager, x, labels, mode).items()}
        exact = {k: v.cpu() for k, v in _outputs(eager, x, labels, mode, exact=True).items()} if S.smoke else {}
        _references[key] = ref, exact
    return _references[key]


def _check(eager: torch.nn.Module, model: torch.nn.Module, x, labels, name: str, mode: str, contender: str):
    """(relative error against eager, worst error ratio against fp64 or None); asserts in smoke mode."""
    ref, exact = _reference(eager, x, labels, name, mode)
    mine = {k: v.cpu() for k, v in _outputs(model, x, labels, mode).items()}
    missing = sorted(set(ref) - set(mine))
    assert not missing, f"{name} {contender}: no output/gradient for {missing[:5]}"
    err = harness.max_rel_err([mine[k] for k in ref], [ref[k] for k in ref])
    ratio = None
    if exact:
        ratio = harness.check_against_fp64(mine, ref, exact, S.act_dtype, f"{name} {mode} {contender}")
    return err, ratio


@pytest.mark.parametrize("name, mode, contender", MODEL_PARAMS)
def test_model(benchmark, restore_backend, name, mode, contender):
    benchmark.group = f"{name} {mode} {S.model_batch}x3x{S.image}x{S.image}"
    eager = cases.build_eager_model(name).to(S.device, memory_format=CL)
    model = _contender(name, eager, contender, restore_backend)
    for m in {id(eager): eager, id(model): model}.values():
        m.train(mode == "train")
    x, labels = _batch()
    err, ratio = (0.0, None) if contender == "eager" else _check(eager, model, x, labels, name, mode, contender)
    if contender.startswith(config.RF_PREFIX):
        del eager  # not needed any more: keep GPU memory to the contender's own
    saved = None
    if mode == "train":
        try:
            saved = memory.saved_bytes(model, (x,), context=harness.autocast(S))
        except Exception as error:  # noqa: BLE001 (some compiled graphs refuse saved-tensor hooks)
            saved = f"n/a ({type(error).__name__})"
    harness.release(S.device)
    harness.record(benchmark, kind="model", model=name, mode=mode, contender=contender, images=S.model_batch,
                   image=S.image, saved_bytes=saved, rel_err=err, fp64_err_ratio=ratio,
                   backend=resnet_fast.get_backend(),
                   conv_backend=resnet_fast.get_conv_backend() if contender.startswith(config.RF_PREFIX) else None,
                   compile_settings=config.compile_settings(contender) if contender in config.COMPILE_MODES else None)
    scope = resnet_fast.inference_cache() if contender.endswith(config.CACHED_SUFFIX) else contextlib.nullcontext()
    with scope:
        harness.run_timed(benchmark, harness.model_step(model, x, labels, mode, S), S, rounds=S.model_rounds,
                          warmup=S.model_warmup)
    del model
    harness.release(S.device)
