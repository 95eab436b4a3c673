"""bn_add_relu (block tail) against eager: relu(bn(y) + identity), identity optionally BN'd (downsample)."""
import pytest
import torch

from op_testing import DTYPES, FORMATS, SHAPES, Names, activation, bn_names, compare, with_bn
from resnet_fast import ops
from resnet_fast.ops import reference

PARAMS, BUFFERS, FIXED = bn_names()
ID_PARAMS, ID_BUFFERS, ID_FIXED = bn_names("id_")
NAMES = Names(("y", "identity") + PARAMS, ("y", "identity"), BUFFERS, FIXED)
NAMES_ID_BN = Names(("y", "identity") + PARAMS + ID_PARAMS, ("y", "identity"), BUFFERS + ID_BUFFERS,
                    FIXED + ID_FIXED)


def call(fn, training, identity_bn, relu=True, momentum=0.1):
    def run(y, identity, weight, bias, running_mean, running_var, num_batches_tracked, **id_bn):
        id_args = None
        if identity_bn:
            id_args = tuple(id_bn["id_" + k] for k in ("weight", "bias", "running_mean", "running_var",
                                                          "num_batches_tracked"))
        return fn(y, weight, bias, running_mean, running_var, identity, training=training, momentum=momentum,
                  relu=relu, num_batches_tracked=num_batches_tracked, identity_bn=id_args)
    return run


def master_inputs(shape, identity_bn, **bn_kwargs):
    master = with_bn({"y": activation(shape, 0), "identity": activation(shape, 1)}, shape[1], seed=2, **bn_kwargs)
    return with_bn(master, shape[1], seed=3, prefix="id_", **bn_kwargs) if identity_bn else master


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("identity_bn", [False, True], ids=["identity", "downsample_bn"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_matches_eager(op_backend, shape, fmt, training, identity_bn, dtype):
    master = master_inputs(shape, identity_bn)
    compare(call(ops.bn_add_relu, training, identity_bn), call(reference.bn_add_relu, training, identity_bn),
            master, NAMES_ID_BN if identity_bn else NAMES, dtype, fmt)


@pytest.mark.parametrize("bn_kwargs", [{"affine": False}, {"track_running_stats": False}],
                         ids=["no_affine", "no_running_stats"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_bn_variants(op_backend, bn_kwargs, training):
    master = master_inputs((3, 5, 4, 4), True, **bn_kwargs)
    compare(call(ops.bn_add_relu, training, True, momentum=None),
            call(reference.bn_add_relu, training, True, momentum=None), master, NAMES_ID_BN, torch.float64)


def test_mixed_memory_formats(op_backend):
    """identity in another layout than y: the output follows y."""
    master = master_inputs((2, 8, 5, 5), False)
    fused = call(ops.bn_add_relu, True, False)
    compare(lambda identity, **kw: fused(identity=identity.contiguous(memory_format=torch.channels_last), **kw),
            call(reference.bn_add_relu, True, False), master, NAMES, torch.float32)


def test_gradcheck(op_backend):
    master = master_inputs((2, 3, 3, 4), True)
    keys = ("y", "identity", "weight", "bias", "id_weight", "id_bias")
    for training in (True, False):
        inputs = [master[k].clone().requires_grad_() for k in keys]
        stats = [master[k].clone() for k in ("running_mean", "running_var", "id_running_mean", "id_running_var")]
        assert torch.autograd.gradcheck(
            lambda y, i, w, b, iw, ib: ops.bn_add_relu(y, w, b, stats[0], stats[1], i, training=training,
                                                       momentum=0.0, identity_bn=(iw, ib, stats[2], stats[3])),
            inputs)


def test_bad_inputs(op_backend):
    y = torch.randn(2, 4, 3, 3)
    bn = (torch.ones(4), torch.zeros(4), torch.zeros(4), torch.ones(4))
    with pytest.raises(RuntimeError, match="identity has shape"):
        ops.bn_add_relu(y, *bn, y[:, :3], training=True)
    with pytest.raises(RuntimeError, match="identity has dtype"):
        ops.bn_add_relu(y, *bn, y.double(), training=True)
    with pytest.raises(RuntimeError, match="identity_bn weight"):
        ops.bn_add_relu(y, *bn, y, training=True, identity_bn=(torch.ones(3),) + bn[1:])
