"""squeeze_excite (SE block tail, timm layout) against eager: relu(bn(y) * gate + identity)."""
import pytest
import torch

from op_testing import DTYPES, FORMATS, SHAPES, Names, activation, bn_names, compare, with_bn
from resnet_fast import ops
from resnet_fast.ops import reference

PARAMS, BUFFERS, FIXED = bn_names()
ID_PARAMS, ID_BUFFERS, ID_FIXED = bn_names("id_")
SE = ("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias")
NAMES = Names(("y", "identity") + PARAMS + SE, ("y", "identity"), BUFFERS, FIXED)
NAMES_ID_BN = Names(NAMES.differentiable | set(ID_PARAMS), ("y", "identity"), BUFFERS + ID_BUFFERS, FIXED + ID_FIXED)


def call(fn, training, identity_bn, momentum=0.1):
    def run(y, identity, weight, bias, running_mean, running_var, num_batches_tracked, fc1_weight, fc1_bias,
            fc2_weight, fc2_bias, **id_bn):
        id_args = tuple(id_bn["id_" + k] for k in ("weight", "bias", "running_mean", "running_var",
                                                      "num_batches_tracked")) if identity_bn else None
        return fn(y, weight, bias, running_mean, running_var, fc1_weight, fc1_bias, fc2_weight, fc2_bias, identity,
                  training=training, momentum=momentum, num_batches_tracked=num_batches_tracked, identity_bn=id_args)
    return run


def master_inputs(shape, identity_bn, hidden=None, **bn_kwargs):
    c = shape[1]
    hidden = hidden or max(c // 4, 2)
    g = torch.Generator().manual_seed(5)
    master = {"y": activation(shape, 0), "identity": activation(shape, 1),
              "fc1_weight": torch.randn(hidden, c, 1, 1, generator=g, dtype=torch.float64) * 0.5,
              "fc1_bias": torch.randn(hidden, generator=g, dtype=torch.float64) * 0.1,
              "fc2_weight": torch.randn(c, hidden, 1, 1, generator=g, dtype=torch.float64) * 0.5,
              "fc2_bias": torch.randn(c, generator=g, dtype=torch.float64) * 0.1}
    with_bn(master, c, seed=2, **bn_kwargs)
    return with_bn(master, c, seed=3, prefix="id_", **bn_kwargs) if identity_bn else master


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("identity_bn", [False, True], ids=["identity", "downsample_bn"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_matches_eager(op_backend, shape, fmt, training, identity_bn, dtype):
    master = master_inputs(shape, identity_bn)
    compare(call(ops.squeeze_excite, training, identity_bn), call(reference.squeeze_excite, training, identity_bn),
            master, NAMES_ID_BN if identity_bn else NAMES, dtype, fmt)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_no_affine_and_cumulative_momentum(op_backend, training):
    master = master_inputs((3, 6, 4, 4), True, affine=False)
    compare(call(ops.squeeze_excite, training, True, momentum=None),
            call(reference.squeeze_excite, training, True, momentum=None), master, NAMES_ID_BN, torch.float64)


def test_gradcheck(op_backend):
    master = master_inputs((2, 4, 3, 3), False, hidden=2)
    keys = ("y", "identity", "weight", "bias") + SE
    for training in (True, False):
        inputs = [master[k].clone().requires_grad_() for k in keys]
        rm, rv = master["running_mean"].clone(), master["running_var"].clone()
        assert torch.autograd.gradcheck(
            lambda y, i, w, b, f1w, f1b, f2w, f2b: ops.squeeze_excite(
                y, w, b, rm, rv, f1w, f1b, f2w, f2b, i, training=training, momentum=0.0), inputs)


def test_bad_se_weights(op_backend):
    y = torch.randn(2, 8, 3, 3)
    bn = (torch.ones(8), torch.zeros(8), torch.zeros(8), torch.ones(8))
    with pytest.raises(RuntimeError, match="fc1_weight"):
        ops.squeeze_excite(y, *bn, torch.randn(2, 7, 1, 1), None, torch.randn(8, 2, 1, 1), None, y, training=True)
    with pytest.raises(RuntimeError, match="fc2_weight"):
        ops.squeeze_excite(y, *bn, torch.randn(2, 8, 1, 1), None, torch.randn(8, 3, 1, 1), None, y, training=True)
