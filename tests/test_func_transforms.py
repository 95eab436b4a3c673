"""torch.func transforms through the fused ops: grad, jacrev, vmap, jvp, jacfwd, hessian, jvp of jvp.

Under a transform the ops run as a setup_context-style autograd.Function with a generated
vmap rule (torch's own custom-op autograd is refused by torch.func); their backward is then
differentiated by the transform, so it takes the create_graph path. Forward-mode AD (jvp,
jacfwd, hessian = jacfwd of jacrev, jvp of jvp) runs the op's forward on the reference
backend, plain torch. Everything in float64 against the same transform of the eager
reference, except jvp of jvp, whose outer derivative the eager side takes by differences
(jvp_of_jvp_by_differences: torch's own is wrong for F.batch_norm in training).
"""
from __future__ import annotations

import pytest
import torch

from model_utils import make_input, rel_err
from resnet_fast import ops
from resnet_fast.ops import reference
from test_double_backward import CASES, tiny_models

pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop")  # vmap's per-sample fallback


def _loss(module, fn, training):
    return lambda *inputs: fn(module, *inputs, training=training).pow(2).sum()


def _transforms():
    """name -> (module -> (tensors -> result)) for one op case's fn."""
    def grad_all(module, fn, training, tensors):
        return torch.func.grad(_loss(module, fn, training), argnums=tuple(range(len(tensors))))(*tensors)

    def jacrev_weight(module, fn, training, tensors):  # d out / d (second input): vmap over the backward
        return torch.func.jacrev(_of_second(module, fn, training, tensors))(tensors[1])

    def vmap_batch(module, fn, training, tensors):  # two of each 4-D input: own statistics (and conv weights)
        stacked = [torch.stack([t, 2 * t]) if t.dim() == 4 else t for t in tensors]
        dims = tuple(0 if t.dim() == 4 else None for t in tensors)
        return torch.func.vmap(lambda *a: fn(module, *a, training=training), in_dims=dims)(*stacked)

    def grad_of_grad(module, fn, training, tensors):
        def inner_penalty(w):
            g = torch.func.grad(lambda x: _loss(module, fn, training)(x, w, *tensors[2:]))(tensors[0])
            return g.pow(2).sum()
        return torch.func.grad(inner_penalty)(tensors[1])

    def jvp_all(module, fn, training, tensors):  # forward mode, a tangent for every input
        tangents = tuple(torch.randn(t.shape, generator=torch.Generator().manual_seed(i), dtype=t.dtype)
                         for i, t in enumerate(tensors))
        return torch.func.jvp(lambda *a: fn(module, *a, training=training), tuple(tensors), tangents)

    def jacfwd_weight(module, fn, training, tensors):
        return torch.func.jacfwd(_of_second(module, fn, training, tensors))(tensors[1])

    def hessian_weight(module, fn, training, tensors):  # jacfwd of jacrev
        return torch.func.hessian(_loss_of_second(module, fn, training, tensors))(tensors[1])

    def jvp_of_jvp(module, fn, training, tensors):  # forward over forward: d2 out / d w2 along t1, t2
        first, t2 = _directional_derivative(module, fn, training, tensors)
        return torch.func.jvp(first, (tensors[1],), (t2,))

    return {"grad": grad_all, "jacrev": jacrev_weight, "vmap": vmap_batch, "grad_of_grad": grad_of_grad,
            "jvp": jvp_all, "jacfwd": jacfwd_weight, "hessian": hessian_weight, "jvp_of_jvp": jvp_of_jvp}


def _directional_derivative(module, fn, training, tensors):
    """(w -> d out / d w along t1 by jvp, with w the second input; a second direction t2)."""
    out = _of_second(module, fn, training, tensors)
    t1, t2 = (torch.randn(tensors[1].shape, generator=torch.Generator().manual_seed(seed), dtype=tensors[1].dtype)
              for seed in (1, 2))
    return (lambda w: torch.func.jvp(out, (w,), (t1,))[1]), t2


def jvp_of_jvp_by_differences(module, fn, training, tensors, h=1e-5):
    """jvp_of_jvp with the outer derivative by central differences of the (first-order) jvp:
    the eager side for that transform, since F.batch_norm's own second-order forward derivative
    in training is wrong (pytorch/pytorch#196699). Differences err by ~h^2 * |d3| + eps / h."""
    first, t2 = _directional_derivative(module, fn, training, tensors)
    w = tensors[1]
    return first(w), (first(w + h * t2) - first(w - h * t2)) / (2 * h)


def _of_second(module, fn, training, tensors):
    """The op's output as a function of its second input, the others fixed."""
    return lambda w: fn(module, tensors[0], w, *tensors[2:], training=training)


def _loss_of_second(module, fn, training, tensors):
    return lambda w: _of_second(module, fn, training, tensors)(w).pow(2).sum()


TRANSFORMS = _transforms()
OPS = ["bn_relu", "bn_add_relu identity_bn", "squeeze_excite", "conv_bn_relu residual", "bn_relu_conv"]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("case", OPS)
def test_transform_matches_eager(op_backend, case, transform, training):
    fn, tensors = CASES[case]
    if transform == "vmap" and training:
        # The cases' running statistics are not batched: like nn.BatchNorm, the update refuses
        # (test_vmap_with_batched_running_statistics batches them).
        for module in (ops, reference):
            with pytest.raises(RuntimeError):
                TRANSFORMS[transform](module, fn, training, tensors)
        return
    fused = TRANSFORMS[transform](ops, fn, training, tensors)
    if transform == "jvp_of_jvp":  # float64 differences with h = 1e-5: errors ~1e-10 at |d2| ~ 1
        eager = jvp_of_jvp_by_differences(reference, fn, training, tensors)
        torch.testing.assert_close(fused[0], eager[0], rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(fused[1], eager[1], rtol=1e-6, atol=1e-7)
        return
    eager = TRANSFORMS[transform](reference, fn, training, tensors)
    fused, eager = (fused, eager) if isinstance(fused, tuple) else ((fused,), (eager,))
    for a, b in zip(fused, eager):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_functional_call_grad_of_a_model_matches_torchvision():
    """torch.func.grad of a loss through torch.func.functional_call (buffers passed in, so the
    running-statistics update is allowed), against torchvision's model."""
    ours, ref = tiny_models("bottleneck")
    results = []
    for model in (ours, ref):
        model.train()
        params = {k: v.detach() for k, v in model.named_parameters()}
        buffers = {k: v.clone() for k, v in model.named_buffers()}
        x = make_input()
        grads = torch.func.grad(
            lambda p, b: torch.func.functional_call(model, (p, b), (x,)).pow(2).sum())(params, buffers)
        results.append((grads, buffers))
    (ours_grads, ours_buffers), (ref_grads, ref_buffers) = results
    for name in ref_grads:
        assert rel_err(ours_grads[name], ref_grads[name]) < 1e-10, name
    for name in ref_buffers:
        assert rel_err(ours_buffers[name].double(), ref_buffers[name].double()) < 1e-10, name


@pytest.mark.parametrize("op", ["bn_relu", "bn_add_relu"])
def test_vmap_with_batched_running_statistics(op_backend, op):
    """vmap over models (ensembles): each member its own batch and running statistics."""
    g = torch.Generator().manual_seed(0)
    x, identity = (torch.randn(2, 2, 3, 4, 4, generator=g, dtype=torch.float64) for _ in range(2))
    weight, bias = torch.rand(3, dtype=torch.float64) + 0.5, torch.randn(3, dtype=torch.float64)
    results = []
    for module in (ops, reference):
        mean, var = torch.zeros(2, 3, dtype=torch.float64), torch.ones(2, 3, dtype=torch.float64)
        fn = getattr(module, op)
        extra = (identity,) if op == "bn_add_relu" else ()
        call = (lambda x, m, v, *i: fn(x, weight, bias, m, v, *i, training=True))
        # x with its last two dimensions swapped in memory: neither layout the kernels take.
        out = torch.func.vmap(call)(x.transpose(-1, -2).contiguous().transpose(-1, -2), mean, var, *extra)
        results.append((out, mean, var))
    for fused, eager in zip(*results):
        torch.testing.assert_close(fused, eager, rtol=1e-12, atol=1e-12)


def test_functional_call_jvp_of_a_model_matches_torchvision():
    """Forward mode through a whole model (eval, so BN folds nowhere and nothing is updated):
    the output's tangent along a random direction in parameter space, against torchvision's."""
    ours, ref = tiny_models("bottleneck")
    x = make_input()
    results = []
    for model in (ours, ref):
        model.eval()
        params = {k: v.detach() for k, v in model.named_parameters()}
        direction = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(i), dtype=v.dtype)
                     for i, (k, v) in enumerate(params.items())}
        results.append(torch.func.jvp(lambda p: torch.func.functional_call(model, p, (x,)), (params,), (direction,)))
    (ours_out, ours_tangent), (ref_out, ref_tangent) = results
    assert rel_err(ours_out, ref_out) < 1e-10
    assert rel_err(ours_tangent, ref_tangent) < 1e-10


@pytest.mark.parametrize("kind", ["bottleneck", "preact-bottleneck"])
def test_forward_ad_through_inference_paths(kind):
    """torch.autograd.forward_ad under no_grad in eval, fp32 channels_last: where inference
    would fold BN and run oneDNN convolutions with fused epilogues (which have no forward-mode
    formula), the tangent must still come out, as the eager model's."""
    import torch.autograd.forward_ad as fwAD

    models = tiny_models(kind)
    x = make_input().float().contiguous(memory_format=torch.channels_last)
    tangent = torch.randn(x.shape, generator=torch.Generator().manual_seed(3)).contiguous(
        memory_format=torch.channels_last)
    results = []
    for model in models:
        model.float().eval().to(memory_format=torch.channels_last)
        with torch.no_grad(), fwAD.dual_level():
            primal, out_tangent = fwAD.unpack_dual(model(fwAD.make_dual(x, tangent)))
            assert out_tangent is not None
            results.append((primal.clone(), out_tangent.clone()))
    (ours_out, ours_tangent), (ref_out, ref_tangent) = results
    assert rel_err(ours_out, ref_out) < 1e-5  # fp32 against fp32 eager
    assert rel_err(ours_tangent, ref_tangent) < 1e-5
