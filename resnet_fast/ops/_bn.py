"""Host-side BatchNorm algebra shared by the fused ops.

Every fused op computes, for a conv output ``y`` (N, C, H, W),

    b   = bn(y) = a[c] * y + c0[c],   a = gamma * invstd,  c0 = beta - mean * a
    z   = b * gate[n, c] + R           (gate = 1 without Squeeze-Excitation;
                                        R = identity, bn(identity) or 0)
    out = relu(z)  (or z)

with the elementwise passes done by the backend's primitives and only per-channel
and per-(n, c) vectors computed here.

Backward (training, M = N*H*W values per channel, x_hat = (y - mean) * invstd):

    g       = dout * (z > 0)                         ReLU mask recomputed from y
    dz      = g * gate + ds[n, c] / (H*W)            ds: gradient into the SE squeeze
    dbeta   = sum dz,   dgamma = sum dz * x_hat
    dy      = a * (dz - dbeta / M - x_hat * dgamma / M)

The primitive ``scale_shift_act_backward_reduce`` returns per-(n, c) sums
A = sum_hw g and B = sum_hw g * (y - mean); since gate and ds are constant over
(h, w), every sum above is a per-channel combination of A and B:

    sum dz         = sum_n (gate * A + ds)
    sum dz * x_hat = invstd * sum_n (gate * B + ds * (sample_mean - mean))
    dgate          = sum_hw g * b = a * B + beta * A

and ``scale_shift_act_backward_apply`` evaluates dy = k_g * g + k_0 + k_y * (y - mean).
In eval mode the statistics are constants: dy = a * dz.

On the cpu backend without Squeeze-Excitation or SyncBN, ``bn_act_forward`` and
``bn_act_backward`` hand the whole computation to one C++ op per direction
(csrc/cpu/bn_act.cpp, see ``cpu_fused``): the same kernels, with this algebra in C++.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Optional

import torch
from torch.autograd import forward_ad

from .. import backend
from .primitives import acc_dtype

Tensor = torch.Tensor


def prim(op: str, like: Tensor):
    return backend.implementation(op, like.device)


# ----------------------------------------------------------------------------- checks
def require(condition, message) -> None:
    """Raise RuntimeError(message()) unless ``condition``.

    Not torch._check: Dynamo cannot trace its message closures when they capture tensors,
    while a plain ``if`` on shapes and dtypes is decided (and guarded) at trace time.
    """
    if not condition:
        raise RuntimeError(message())


def check_activation(op: str, name: str, t: Tensor) -> None:
    require(isinstance(t, Tensor), lambda: f"{op}: {name} must be a Tensor, got {type(t).__name__}")
    require(t.dim() == 4, lambda: f"{op}: expected {name} to be 4-D (N, C, H, W), got {t.dim()}-D "
                                       f"of shape {tuple(t.shape)}")
    require(t.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64),
                 lambda: f"{op}: {name} must be float16, bfloat16, float32 or float64, got {t.dtype}")


def check_channel_vector(op: str, name: str, t: Optional[Tensor], channels: int, like: Tensor) -> None:
    if t is None:
        return
    require(t.dim() == 1 and t.shape[0] == channels,
                 lambda: f"{op}: expected {name} of shape ({channels},) to match the input's channels, "
                         f"got {tuple(t.shape)}")
    require(t.device == like.device,
                 lambda: f"{op}: {name} is on {t.device}, the input on {like.device}")
    require(t.is_floating_point(), lambda: f"{op}: {name} must be floating point, got {t.dtype}")


def check_conv(op: str, name: str, x: Tensor, weight: Tensor, groups: int) -> None:
    """The convolution weight's rank, channels (against ``x``, named ``name``) and device."""
    require(weight.dim() == 4, lambda: f"{op}: expected a 4-D conv weight, got {weight.dim()}-D")
    require(x.shape[1] == weight.shape[1] * groups,
            lambda: f"{op}: {name} has {x.shape[1]} channels, the weight expects "
                    f"{weight.shape[1] * groups} (weight {tuple(weight.shape)}, groups={groups})")
    require(weight.device == x.device, lambda: f"{op}: weight is on {weight.device}, {name} on {x.device}")


def check_bn_vectors(op: str, params: "BNParams", channels: int, like: Tensor, prefix: str = "",
                     affine_prefix: Optional[str] = None) -> None:
    """The BN's weight, bias, running_mean, running_var against ``channels``, named with ``prefix``;
    ``affine_prefix`` names weight and bias apart (ops with a conv weight too: bn_weight, bn_bias)."""
    affine_prefix = prefix if affine_prefix is None else affine_prefix
    for name in ("weight", "bias", "running_mean", "running_var"):
        check_channel_vector(op, (prefix if "running" in name else affine_prefix) + name, getattr(params, name),
                             channels, like)


def check_same_shape(op: str, name: str, t: Tensor, like: Tensor) -> None:
    require(t.shape == like.shape,
                 lambda: f"{op}: {name} has shape {tuple(t.shape)}, expected {tuple(like.shape)}")
    require(t.dtype == like.dtype, lambda: f"{op}: {name} has dtype {t.dtype}, expected {like.dtype}")
    require(t.device == like.device, lambda: f"{op}: {name} is on {t.device}, expected {like.device}")


def check_batch_norm(op: str, y: Tensor, params: "BNParams", use_batch_stats: bool, prefix: str = "",
                     affine_prefix: Optional[str] = None) -> None:
    check_bn_vectors(op, params, y.shape[1], y, prefix, affine_prefix)
    require((params.running_mean is None) == (params.running_var is None),
                 lambda: f"{op}: {prefix}running_mean and {prefix}running_var must both be given or both None")
    require(use_batch_stats or params.running_mean is not None,
                 lambda: f"{op}: eval mode needs {prefix}running_mean and {prefix}running_var")
    if use_batch_stats:
        verify_batch_size(y.shape)


def verify_batch_size(size: torch.Size) -> None:
    """PyTorch's check (torch.nn.functional._verify_batch_size), with its message."""
    values = size[0] * size[2] * size[3] if len(size) == 4 else size[0]
    if isinstance(values, int) and values == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {size}")


def match_layout(t: Tensor, ref: Tensor) -> Tensor:
    """``t`` in the layout the kernels will read ``ref`` in (NCHW when contiguous, else channels_last)."""
    if torch._C._functorch.is_batchedtensor(ref):
        # Under vmap only the contiguous layout can be queried; the kernels run per sample.
        return t.contiguous()
    fmt = torch.contiguous_format if ref.is_contiguous() else torch.channels_last
    return t if t.is_contiguous(memory_format=fmt) else t.contiguous(memory_format=fmt)


def standard_layout(t: Tensor) -> Tensor:
    """NCHW-contiguous or channels_last-contiguous (the layouts the kernels take), copying only otherwise."""
    if torch._C._functorch.is_batchedtensor(t):
        return t.contiguous()  # under vmap only the contiguous layout can be queried
    if t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last):
        return t
    return t.contiguous(memory_format=torch.channels_last if t.stride(1) == 1 else torch.contiguous_format)


# ----------------------------------------------------------------------------- statistics
@dataclass
class BNParams:
    weight: Optional[Tensor]
    bias: Optional[Tensor]
    running_mean: Optional[Tensor]
    running_var: Optional[Tensor]


def _process_group(group_name: str):
    from torch.distributed.distributed_c10d import _resolve_process_group

    return _resolve_process_group(group_name)


def sync_statistics(mean: Tensor, var: Tensor, count: int, group_name: str) -> tuple[Tensor, Tensor, int]:
    """Merge per-rank (count, mean, biased var) across the process group (Chan's formula).

    Ranks may hold different counts, zero included: the merge weights each by its count.
    """
    import torch.distributed as dist

    group = _process_group(group_name)
    world = dist.get_world_size(group)
    local = torch.cat([mean.new_full((1,), float(count)), mean, var])
    gathered = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(gathered, local, group=group)
    stacked = torch.stack(gathered)
    counts, means, variances = stacked[:, :1], stacked[:, 1:1 + mean.numel()], stacked[:, 1 + mean.numel():]
    total = counts.sum()
    merged_mean = (counts * means).sum(0) / total
    m2 = (counts * (variances + (means - merged_mean) ** 2)).sum(0)
    return merged_mean, m2 / total, int(total.item())


def all_reduce_sum(tensors: list[Tensor], group_name: str) -> list[Tensor]:
    import torch.distributed as dist

    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, group=_process_group(group_name))
    return list(flat.split([t.numel() for t in tensors]))


def statistics(y: Tensor, params: BNParams, use_batch_stats: bool, eps: float, group_name: str,
               need_sample_mean: bool):
    """(mean, var, invstd, sample_mean or None, local count, global count) used to normalize ``y``.

    ``var`` is the biased batch variance in training (for the running-stats update) and
    the running variance in eval.
    """
    acc = acc_dtype(y.dtype)
    count = y.shape[0] * y.shape[2] * y.shape[3]
    sample_mean = None
    if use_batch_stats or need_sample_mean:
        mean, var, sample_mean = prim("bn_stats", y)(y)
    if use_batch_stats:
        if group_name:
            mean, var, global_count = sync_statistics(mean, var, count, group_name)
            return mean, var, torch.rsqrt(var + eps), sample_mean, count, global_count
    else:
        mean, var = params.running_mean.to(acc), params.running_var.to(acc)
    invstd = torch.rsqrt(var + eps)
    return mean, var, invstd, (sample_mean if need_sample_mean else None), count, count


def affine(mean: Tensor, invstd: Tensor, weight: Optional[Tensor], bias: Optional[Tensor]):
    """(a, c0) with bn(y) = a * y + c0 per channel."""
    a = invstd if weight is None else weight.to(invstd.dtype) * invstd
    beta = torch.zeros_like(mean) if bias is None else bias.to(invstd.dtype)
    return a, beta - mean * a


def beta_of(bias: Optional[Tensor], like: Tensor) -> Tensor:
    return torch.zeros_like(like) if bias is None else bias.to(like.dtype)


def expand_nc(v: Tensor, n: int) -> Tensor:
    return v.unsqueeze(0).expand(n, -1).contiguous()


# ----------------------------------------------------------------------------- Squeeze-Excitation MLP
@dataclass
class SEParams:
    fc1_weight: Tensor  # (C_r, C, 1, 1) or (C_r, C)
    fc1_bias: Optional[Tensor]
    fc2_weight: Tensor  # (C, C_r, 1, 1) or (C, C_r)
    fc2_bias: Optional[Tensor]


def _as_matrix(w: Tensor, dtype) -> Tensor:
    return w.reshape(w.shape[0], w.shape[1]).to(dtype)


def se_gate(squeeze: Tensor, se: SEParams):
    """gate = sigmoid(fc2(relu(fc1(squeeze)))) on (N, C); returns (gate, hidden pre-ReLU)."""
    dtype = squeeze.dtype
    hidden = squeeze @ _as_matrix(se.fc1_weight, dtype).t()
    if se.fc1_bias is not None:
        hidden = hidden + se.fc1_bias.to(dtype)
    logits = torch.relu(hidden) @ _as_matrix(se.fc2_weight, dtype).t()
    if se.fc2_bias is not None:
        logits = logits + se.fc2_bias.to(dtype)
    return torch.sigmoid(logits), hidden


def se_gate_backward(dgate: Tensor, gate: Tensor, hidden: Tensor, squeeze: Tensor, se: SEParams):
    """Gradients (d squeeze, d fc1_weight, d fc1_bias, d fc2_weight, d fc2_bias) of the SE MLP."""
    dtype = squeeze.dtype
    dlogits = dgate * gate * (1 - gate)
    relu_hidden = torch.relu(hidden)
    d_fc2_weight = (dlogits.t() @ relu_hidden).reshape(se.fc2_weight.shape).to(se.fc2_weight.dtype)
    d_fc2_bias = None if se.fc2_bias is None else dlogits.sum(0).to(se.fc2_bias.dtype)
    dhidden = (dlogits @ _as_matrix(se.fc2_weight, dtype)) * (hidden > 0)
    d_fc1_weight = (dhidden.t() @ squeeze).reshape(se.fc1_weight.shape).to(se.fc1_weight.dtype)
    d_fc1_bias = None if se.fc1_bias is None else dhidden.sum(0).to(se.fc1_bias.dtype)
    dsqueeze = dhidden @ _as_matrix(se.fc1_weight, dtype)
    return dsqueeze, d_fc1_weight, d_fc1_bias, d_fc2_weight, d_fc2_bias


# ----------------------------------------------------------------------------- forward
@dataclass
class Normalized:
    """What the backward needs of one normalized tensor (per-channel, acc dtype), and the BN's
    affine parameters; ``a`` and ``c0`` (bn(y) = a * y + c0) are computed at first use (the
    C++ CPU path computes its own and never asks)."""
    mean: Tensor
    invstd: Tensor
    count: int
    weight: Optional[Tensor]
    bias: Optional[Tensor]

    @cached_property
    def coefficients(self) -> tuple[Tensor, Tensor]:
        return affine(self.mean, self.invstd, self.weight, self.bias)

    @property
    def a(self) -> Tensor:
        return self.coefficients[0]

    @property
    def c0(self) -> Tensor:
        return self.coefficients[1]


def normalize(y, params, use_batch_stats, eps, group_name, need_sample_mean=False):
    mean, var, invstd, sample_mean, count, global_count = statistics(y, params, use_batch_stats, eps, group_name,
                                                                     need_sample_mean)
    if use_batch_stats:
        var = unbiased(var, global_count)
    return Normalized(mean, invstd, count, params.weight, params.bias), var, sample_mean


def running_normalized(params: BNParams, eps: float, acc: torch.dtype) -> Normalized:
    """Normalization by the running statistics (eval mode), without looking at the data."""
    mean = params.running_mean.to(acc)
    invstd = torch.rsqrt(params.running_var.to(acc) + eps)
    return Normalized(mean, invstd, 0, params.weight, params.bias)


def residual_coefficients(res: Optional[Normalized]):
    return (None, None) if res is None else (res.a, res.c0)


# ----------------------------------------------------------------------------- the C++ CPU path
NO_BN = BNParams(None, None, None, None)


def cpu_fused(y: Tensor, se: Optional["SEParams"], group_name: str) -> bool:
    """Whether ``torch.ops.resnet_fast.bn_act_forward / bn_act_backward`` (csrc/cpu/bn_act.cpp)
    do the whole BN + activation in one C++ call per direction: same kernels as the primitives
    below (one pass fewer in backward with a plain residual), the per-channel algebra between
    them in C++ instead of ~30 small tensor ops. For the CPU backend on a non-empty y, without
    Squeeze-Excitation or SyncBN."""
    return False  # csrc/cpu/bn_act.cpp is removed (issue 19); this file is being rewritten


def _cpu_forward(y, params, use_batch_stats, eps, relu, residual, res_params) -> "ForwardResult":
    res = res_params or NO_BN
    out, mean, invstd, var, res_mean, res_invstd, res_var = torch.ops.resnet_fast.bn_act_forward(
        y, params.weight, params.bias, params.running_mean, params.running_var, residual, res.weight, res.bias,
        res.running_mean, res.running_var, res_params is not None, use_batch_stats, eps, relu)
    count = y.shape[0] * y.shape[2] * y.shape[3]
    norm = Normalized(mean, invstd, count, params.weight, params.bias)
    if res_params is None:
        return ForwardResult(out, norm, var, None, None, None)
    return ForwardResult(out, norm, var, Normalized(res_mean, res_invstd, count, res.weight, res.bias), res_var, None)


GRADIENTS = ("y", "weight", "bias", "residual", "res_weight", "res_bias")


def _cpu_backward(grad_out, y, params, norm, use_batch_stats, relu, residual, res_params, res_norm,
                  needs) -> "BackwardResult":
    res = res_params or NO_BN
    wanted = [bool(needs.get(name)) for name in GRADIENTS]
    wanted[3] = wanted[3] and residual is not None
    wanted[4] = wanted[4] and res_norm is not None
    wanted[5] = wanted[5] and res_norm is not None
    grads = torch.ops.resnet_fast.bn_act_backward(
        grad_out, y, params.weight, params.bias, norm.mean, norm.invstd, residual, res.weight, res.bias,
        None if res_norm is None else res_norm.mean, None if res_norm is None else res_norm.invstd,
        use_batch_stats, relu, wanted)
    return BackwardResult(*(g if w else None for g, w in zip(grads, wanted)), ())


# ----------------------------------------------------------------------------- backward
@dataclass
class BackwardResult:
    grad_y: Optional[Tensor]
    grad_weight: Optional[Tensor]
    grad_bias: Optional[Tensor]
    grad_residual: Optional[Tensor]
    grad_res_weight: Optional[Tensor]
    grad_res_bias: Optional[Tensor]
    grad_se: tuple  # (fc1_weight, fc1_bias, fc2_weight, fc2_bias) grads, or ()


def bn_act_backward(grad_out: Tensor, y: Tensor, params: BNParams, norm: Normalized, use_batch_stats: bool,
                    relu: bool, residual: Optional[Tensor], res_params: Optional[BNParams],
                    res_norm: Optional[Normalized], se: Optional[SEParams], sample_mean: Optional[Tensor],
                    group_name: str, needs: dict) -> BackwardResult:
    """Gradients of out = act((a*y + c0) * gate + R) through y, the BN affine, R and the SE MLP.

    ``needs`` maps "y", "weight", "bias", "residual", "res_weight", "res_bias", "se" to bools.
    """
    if cpu_fused(y, se, group_name):
        return _cpu_backward(grad_out, y, params, norm, use_batch_stats, relu, residual, res_params, res_norm, needs)
    n, hw = y.shape[0], y.shape[2] * y.shape[3]
    grad_out = match_layout(grad_out, y)  # the kernels index both tensors alike
    res_scale, res_shift = residual_coefficients(res_norm)
    if se is not None:
        squeeze = sample_mean * norm.a + norm.c0
        gate, hidden = se_gate(squeeze, se)
        scale, shift = norm.a * gate, norm.c0 * gate
    else:
        gate = None
        scale, shift = expand_nc(norm.a, n), expand_nc(norm.c0, n)
    args = (grad_out, y, scale, shift, residual, res_scale, res_shift, relu)
    sum_g, sum_g_y, sum_g_res = prim("scale_shift_act_backward_reduce", y)(
        *args, norm.mean, None if res_norm is None else res_norm.mean)

    # Squeeze-Excitation: gradient into the gate, then through the MLP into the squeeze.
    grad_se, ds = (), None
    if se is not None:
        beta = beta_of(params.bias, norm.mean)
        dgate = norm.a * sum_g_y + beta * sum_g
        ds, *grad_se = se_gate_backward(dgate, gate, hidden, squeeze, se)
        sum_dz = (gate * sum_g + ds).sum(0)
        sum_dz_y = (gate * sum_g_y + ds * (sample_mean - norm.mean)).sum(0)
    else:
        sum_dz, sum_dz_y = sum_g.sum(0), sum_g_y.sum(0)
    grad_weight = (sum_dz_y * norm.invstd).to(params.weight.dtype) if needs.get("weight") else None
    grad_bias = sum_dz.to(params.bias.dtype) if needs.get("bias") else None

    sum_g_all = sum_g.sum(0) if residual is not None else None
    grad_res_weight = grad_res_bias = None
    if res_norm is not None:
        if needs.get("res_weight"):
            grad_res_weight = (sum_g_res * res_norm.invstd).to(res_params.weight.dtype)
        if needs.get("res_bias"):
            grad_res_bias = sum_g_all.to(res_params.bias.dtype)

    grad_y = grad_residual = None
    if needs.get("y") or needs.get("residual"):
        count = norm.count
        if use_batch_stats and group_name:  # SyncBN: global sums and count, local dgamma/dbeta
            reduced = [sum_dz, sum_dz_y, sum_dz.new_full((1,), float(count))]
            reduced += [sum_g_all, sum_g_res] if res_norm is not None else []
            reduced = all_reduce_sum(reduced, group_name)
            sum_dz, sum_dz_y, count = reduced[0], reduced[1], reduced[2]
            if res_norm is not None:
                sum_g_all, sum_g_res = reduced[3:]
        k_g = norm.a * gate if gate is not None else expand_nc(norm.a, n)
        k_0 = torch.zeros_like(k_g) if ds is None else norm.a * ds / hw
        k_y = torch.zeros_like(norm.mean)
        if use_batch_stats:
            k_0 = k_0 - norm.a * sum_dz / count
            k_y = -norm.a * norm.invstd * norm.invstd * sum_dz_y / count
        res_k = (None, None, None, None)
        if residual is not None and needs.get("residual"):
            if res_norm is None:  # plain identity: d residual = g
                ones = torch.ones_like(norm.mean)
                res_k = (ones, torch.zeros_like(ones), torch.zeros_like(ones), torch.zeros_like(ones))
            elif use_batch_stats:
                res_k = (res_norm.a, -res_norm.a * sum_g_all / count,
                         -res_norm.a * res_norm.invstd * res_norm.invstd * sum_g_res / count,
                         res_norm.mean)
            else:
                zeros = torch.zeros_like(res_norm.a)
                res_k = (res_norm.a, zeros, zeros, res_norm.mean)
        grad_y, grad_residual = prim("scale_shift_act_backward_apply", y)(
            *args, k_g, k_0, k_y, norm.mean, *res_k)
        grad_y = grad_y if needs.get("y") else None
        grad_residual = grad_residual if res_k[0] is not None else None
    return BackwardResult(grad_y, grad_weight, grad_bias, grad_residual, grad_res_weight, grad_res_bias,
                          tuple(grad_se))


# ----------------------------------------------------------------------------- running statistics
@torch.no_grad()
def update_running_stats(running_mean: Optional[Tensor], running_var: Optional[Tensor],
                         num_batches_tracked: Optional[Tensor], batch_mean: Tensor, unbiased_var: Tensor,
                         momentum: Optional[float]) -> None:
    """nn.BatchNorm's update with the batch's unbiased variance: momentum, or None for the cumulative average."""
    if running_mean is None:
        return
    if forward_ad._current_level >= 0:  # the statistics may carry tangents; the buffers must not
        batch_mean, unbiased_var = batch_mean.detach(), unbiased_var.detach()
    if num_batches_tracked is not None:
        num_batches_tracked.add_(1)
    if momentum is None:
        require(num_batches_tracked is not None,
                     lambda: "momentum=None (cumulative average) needs num_batches_tracked")
        factor = 1.0 / num_batches_tracked.to(batch_mean.dtype)
    else:
        factor = momentum
        if (running_mean.dtype == batch_mean.dtype and running_var.dtype == unbiased_var.dtype
                and not torch._C._are_functorch_transforms_active()):  # (foreach ops have no vmap rule)
            # Two foreach calls instead of eight small ops: at the 7x7 stage this update
            # costs as much host time as a fused op's kernels.
            torch._foreach_mul_([running_mean, running_var], 1 - factor)
            torch._foreach_add_([running_mean, running_var], [batch_mean, unbiased_var], alpha=factor)
            return
    running_mean.copy_(batch_mean * factor + running_mean.to(batch_mean.dtype) * (1 - factor))
    running_var.copy_(unbiased_var * factor + running_var.to(unbiased_var.dtype) * (1 - factor))


def unbiased(var: Tensor, count: int) -> Tensor:
    return var * (count / max(count - 1, 1))


# ----------------------------------------------------------------------------- fused forward
@dataclass
class ForwardResult:
    out: Tensor
    norm: Normalized
    var: Tensor  # unbiased batch variance in training (for the running-stats update), running_var in eval
    res_norm: Optional[Normalized]
    res_var: Optional[Tensor]
    sample_mean: Optional[Tensor]


def bn_act_forward(y: Tensor, params: BNParams, use_batch_stats: bool, eps: float, relu: bool,
                   residual: Optional[Tensor] = None, res_params: Optional[BNParams] = None,
                   se: Optional[SEParams] = None, group_name: str = "") -> ForwardResult:
    """out = act(bn(y) * gate + R) with R = residual, bn_res(residual) or 0; see the module docstring."""
    if torch._C._functorch.is_batchedtensor(y):
        # Under vmap the kernels run once per sample on slices of the batched tensors, which
        # must be contiguous: batch dimension in front (what a batched .contiguous() gives).
        y, residual = y.contiguous(), None if residual is None else residual.contiguous()
    if cpu_fused(y, se, group_name):
        return _cpu_forward(y, params, use_batch_stats, eps, relu, residual, res_params)
    norm, var, sample_mean = normalize(y, params, use_batch_stats, eps, group_name, need_sample_mean=se is not None)
    res_norm = res_var = None
    if res_params is not None:
        res_norm, res_var, _ = normalize(residual, res_params, use_batch_stats, eps, group_name)
    n = y.shape[0]
    if se is not None:
        gate, _ = se_gate(sample_mean * norm.a + norm.c0, se)
        scale, shift = norm.a * gate, norm.c0 * gate
    else:
        scale, shift = expand_nc(norm.a, n), expand_nc(norm.c0, n)
    res_scale, res_shift = residual_coefficients(res_norm)
    out = prim("scale_shift_act", y)(y, scale, shift, residual, res_scale, res_shift, relu)
    return ForwardResult(out, norm, var, res_norm, res_var, sample_mean)


def empty_stats(y: Tensor) -> Tensor:
    """What an op returns for batch statistics it did not compute (eval mode)."""
    return y.new_empty((0,), dtype=acc_dtype(y.dtype))


def saved_normalized(mean: Tensor, invstd: Tensor, params: BNParams, y: Tensor) -> Normalized:
    """Rebuild Normalized in backward from the mean and invstd an op returned (count: local)."""
    return Normalized(mean, invstd, y.shape[0] * y.shape[2] * y.shape[3], params.weight, params.bias)
