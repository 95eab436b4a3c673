"""The BatchNorm + activation layer shared by the fused ops, on the kernel primitives.

Every fused op computes, for a conv output ``y`` (N, C, H, W),

    b   = bn(y) = a[c] * y + c0[c],   a = gamma * invstd,  c0 = beta - mean * a
    z   = b * gate[n, c] + R           (gate = 1 without Squeeze-Excitation;
                                        R = identity, bn(identity) or 0)
    out = relu(z)  (or z)

Forward: ``bn_stats`` (one pass over y) and ``bn_finalize`` (per channel: invstd, a, c0
as (N, C) tables, the unbiased variance for running_var), then ``scale_shift_act`` (one
pass). Backward (training, M = N*H*W values per channel, x_hat = (y - mean) * invstd):

    g       = dout * (z > 0)                         ReLU mask recomputed from y
    dz      = g * gate + ds[n, c] / (H*W)            ds: gradient into the SE squeeze
    dbeta   = sum dz,   dgamma = sum dz * x_hat
    dy      = a * (dz - dbeta / M - x_hat * dgamma / M)

``scale_shift_act_backward_reduce`` returns per-(n, c) sums A = sum_hw g and
B = sum_hw g * (y - mean); ``bn_backward_finalize`` turns them into dgamma, dbeta and the
coefficients of dy = k_g * g + k_0 + k_y * (y - mean), which
``scale_shift_act_backward_apply`` evaluates (the residual's BN gets the same finalize).
Without SE, sum dz = sum_n A and sum dz * (y - mean) = sum_n B, so the kernels' outputs
feed each other directly. With SE, gate and ds are constant over (h, w), so

    sum dz           = sum_n (gate * A + ds)
    sum dz (y - mu)  = sum_n (gate * B + ds * (sample_mean - mean))
    dgate            = sum_hw g * b = a * B + beta * A

are (N, C) tables computed here, with the SE MLP's few small matrix products. SyncBN
all-gathers the statistics and all-reduces the gradient sums between the steps.
``prims`` is the table of primitives of one backend (``backend.primitives(device)``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch.autograd import forward_ad

from .primitives import acc_dtype

Tensor = torch.Tensor


# ----------------------------------------------------------------------------- checks
def require(condition, message) -> None:
    """Raise RuntimeError(message()) unless ``condition``.

    Not torch._check: Dynamo cannot trace its message closures when they capture tensors,
    while a plain ``if`` on shapes and dtypes is decided (and guarded) at trace time.
    """
    if not condition:
        raise RuntimeError(message())


_ACTIVATION_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_activation(op: str, name: str, t: Tensor) -> None:
    if type(t) is Tensor and t.dim() == 4 and t.dtype in _ACTIVATION_DTYPES:
        return  # the common case without building the messages' closures (host time per call)
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
    device = like.device
    for t in (params.weight, params.bias, params.running_mean, params.running_var):
        if t is not None and not (t.dim() == 1 and t.shape[0] == channels and t.device == device
                                  and t.is_floating_point()):
            break
    else:
        return  # all fine: checked without building the messages' closures (host time per call)
    affine_prefix = prefix if affine_prefix is None else affine_prefix
    for name in ("weight", "bias", "running_mean", "running_var"):
        check_channel_vector(op, (prefix if "running" in name else affine_prefix) + name, getattr(params, name),
                             channels, like)


def check_same_shape(op: str, name: str, t: Tensor, like: Tensor) -> None:
    if t.shape == like.shape and t.dtype == like.dtype and t.device == like.device:
        return
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


def empty_activation(t: Tensor) -> bool:
    """An activation with channels but no values (N = 0 or H*W = 0): the ops then run eager's
    composition (resnet_fast/ops/reference.py), which returns the empty output, zero parameter
    gradients and leaves the running statistics as they are (the kernels' per-sample tables and
    statistics assume values). C = 0 goes on to the kernels, which refuse it as eager does."""
    return t.numel() == 0 and t.shape[1] > 0


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


# ----------------------------------------------------------------------------- Squeeze-Excitation MLP
@dataclass
class SEParams:
    fc1_weight: Tensor  # (C_r, C, 1, 1) or (C_r, C)
    fc1_bias: Optional[Tensor]
    fc2_weight: Tensor  # (C, C_r, 1, 1) or (C, C_r)
    fc2_bias: Optional[Tensor]


def _as_matrix(w: Tensor, dtype) -> Tensor:
    return w.reshape(w.shape[0], w.shape[1]).to(dtype)


def _linear(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    w = _as_matrix(weight, x.dtype).t()
    return x @ w if bias is None else torch.addmm(bias.to(x.dtype), x, w)


def se_gate(squeeze: Tensor, se: SEParams):
    """gate = sigmoid(fc2(relu(fc1(squeeze)))) on (N, C); returns (gate, relu(fc1(squeeze)))."""
    hidden = torch.relu(_linear(squeeze, se.fc1_weight, se.fc1_bias))
    return torch.sigmoid(_linear(hidden, se.fc2_weight, se.fc2_bias)), hidden


def se_gate_backward(dgate: Tensor, gate: Tensor, hidden: Tensor, squeeze: Tensor, se: SEParams):
    """Gradients (d squeeze, d fc1_weight, d fc1_bias, d fc2_weight, d fc2_bias) of the SE MLP;
    ``hidden`` is relu(fc1(squeeze)) as se_gate returned it."""
    dtype = squeeze.dtype
    dlogits = torch.ops.aten.sigmoid_backward(dgate, gate)
    d_fc2_weight = (dlogits.t() @ hidden).reshape(se.fc2_weight.shape).to(se.fc2_weight.dtype)
    d_fc2_bias = None if se.fc2_bias is None else dlogits.sum(0).to(se.fc2_bias.dtype)
    dhidden = torch.ops.aten.threshold_backward(dlogits @ _as_matrix(se.fc2_weight, dtype), hidden, 0)
    d_fc1_weight = (dhidden.t() @ squeeze).reshape(se.fc1_weight.shape).to(se.fc1_weight.dtype)
    d_fc1_bias = None if se.fc1_bias is None else dhidden.sum(0).to(se.fc1_bias.dtype)
    dsqueeze = dhidden @ _as_matrix(se.fc1_weight, dtype)
    return dsqueeze, d_fc1_weight, d_fc1_bias, d_fc2_weight, d_fc2_bias


# ----------------------------------------------------------------------------- forward
@dataclass
class Normalized:
    """One BatchNorm as the forward applied it (per-channel tensors in the acc dtype) and what its
    backward needs: ``scale``/``shift`` are the tables scale_shift_act took ((N, C), the SE gate
    folded in; (C,) for a residual's BN), ``a`` the per-channel factor (SE only)."""
    mean: Tensor
    invstd: Tensor
    var_update: Tensor  # unbiased batch variance (training: updates running_var)
    scale: Tensor
    shift: Tensor
    count: int  # values per channel (over all ranks in the forward under SyncBN; this rank's in backward)


@dataclass
class SEState:
    """What the Squeeze-Excitation backward needs from the forward."""
    se: SEParams
    a: Tensor  # (C,)
    sample_mean: Tensor  # (N, C) per-sample means of y
    squeeze: Tensor  # (N, C) mean_hw(bn(y))
    gate: Tensor  # (N, C)
    hidden: Tensor  # (N, C_r) relu(fc1(squeeze))


def count_of(y: Tensor) -> int:
    """Values per channel of y (this rank's)."""
    return y.shape[0] * y.shape[2] * y.shape[3]


def normalize(prims, y: Tensor, params: BNParams, use_batch_stats: bool, eps: float, group_name: str, rows: int,
              need_sample_mean: bool = False, stats: Optional[tuple] = None) -> tuple[Normalized, Optional[Tensor]]:
    """Statistics (batch or running) and bn_finalize's coefficients, as (N=rows, C) tables (rows 0: (C,));
    with the per-sample means of y when asked (Squeeze-Excitation). ``stats``: y's batch (mean, biased
    variance) when its producer computed them already (the fused convolution's epilogue): no pass over y."""
    count = count_of(y)
    sample_mean = None
    if stats is not None and use_batch_stats and not need_sample_mean:
        mean, var = stats
    elif use_batch_stats or need_sample_mean:
        mean, var, sample_mean = prims.bn_stats(y)
    if use_batch_stats:
        if group_name:
            mean, var, count = sync_statistics(mean, var, count, group_name)
    else:
        acc = acc_dtype(y.dtype)
        # (a copy of the running mean: the ops return the mean, which must not alias the buffer)
        mean, var = params.running_mean.to(acc, copy=True), params.running_var.to(acc)
    invstd, var_update, scale, shift = prims.bn_finalize(mean, var, params.weight, params.bias, eps, count, rows)
    return Normalized(mean, invstd, var_update, scale, shift, count), sample_mean


def se_forward(norm: Normalized, sample_mean: Tensor, se: SEParams) -> SEState:
    """The gate from the squeeze mean_hw(bn(y)) = a * sample_mean + c0; folds it into norm's tables."""
    a, c0 = norm.scale, norm.shift
    squeeze = torch.addcmul(c0, sample_mean, a)
    gate, hidden = se_gate(squeeze, se)
    norm.scale, norm.shift = a * gate, c0 * gate
    return SEState(se, a, sample_mean, squeeze, gate, hidden)


@dataclass
class ForwardResult:
    out: Tensor
    norm: Normalized
    res_norm: Optional[Normalized]
    se: Optional[SEState]


def bn_act_forward(prims, y: Tensor, params: BNParams, use_batch_stats: bool, eps: float, relu: bool,
                   residual: Optional[Tensor] = None, res_params: Optional[BNParams] = None,
                   se: Optional[SEParams] = None, group_name: str = "", y_stats: Optional[tuple] = None
                   ) -> ForwardResult:
    """out = act(bn(y) * gate + R) with R = residual, bn_res(residual) or 0; see the module docstring.
    ``y_stats``: y's batch (mean, biased variance) from its producer, when it has them (normalize)."""
    if torch._C._functorch.is_batchedtensor(y):
        # Under vmap the kernels run once per sample on slices of the batched tensors, which
        # must be contiguous: batch dimension in front (what a batched .contiguous() gives).
        y, residual = y.contiguous(), None if residual is None else residual.contiguous()
    norm, sample_mean = normalize(prims, y, params, use_batch_stats, eps, group_name,
                                  0 if se is not None else y.shape[0], need_sample_mean=se is not None,
                                  stats=y_stats)
    se_state = se_forward(norm, sample_mean, se) if se is not None else None
    res_norm = None
    if res_params is not None:
        res_norm, _ = normalize(prims, residual, res_params, use_batch_stats, eps, group_name, 0)
    out = prims.scale_shift_act(y, norm.scale, norm.shift, residual, None if res_norm is None else res_norm.scale,
                                None if res_norm is None else res_norm.shift, relu)
    return ForwardResult(out, norm, res_norm, se_state)


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


GRADIENTS = ("y", "weight", "bias", "residual", "res_weight", "res_bias")


def _as(t: Optional[Tensor], like: Optional[Tensor], wanted) -> Optional[Tensor]:
    """A parameter's gradient in the parameter's dtype, when wanted."""
    return t.to(like.dtype) if wanted and like is not None else None


def _se_sums(sum_g: Tensor, sum_g_y: Tensor, norm: Normalized, params: BNParams, state: SEState):
    """(sum dz, sum dz * (y - mean), ds, SE parameter gradients): the module docstring's SE sums."""
    beta = state.a.new_zeros(()) if params.bias is None else params.bias.to(state.a.dtype)
    dgate = torch.addcmul(beta * sum_g, state.a, sum_g_y)
    ds, *grad_se = se_gate_backward(dgate, state.gate, state.hidden, state.squeeze, state.se)
    sum_dz = torch.addcmul(ds, state.gate, sum_g)
    sum_dz_y = torch.addcmul(ds * (state.sample_mean - norm.mean), state.gate, sum_g_y)
    return sum_dz, sum_dz_y, ds, tuple(grad_se)


def bn_act_backward(prims, grad_out: Tensor, y: Tensor, params: BNParams, norm: Normalized, use_batch_stats: bool,
                    relu: bool, residual: Optional[Tensor], res_params: Optional[BNParams],
                    res_norm: Optional[Normalized], se: Optional[SEState], group_name: str,
                    needs: dict) -> BackwardResult:
    """Gradients of out = act((a*y + c0) * gate + R) through y, the BN affine, R and the SE MLP.

    ``needs`` maps "y", "weight", "bias", "residual", "res_weight", "res_bias" to bools.
    """
    n, hw = y.shape[0], y.shape[2] * y.shape[3]
    grad_out = match_layout(grad_out, y)  # the kernels index both tensors alike
    res_scale, res_shift = (None, None) if res_norm is None else (res_norm.scale, res_norm.shift)
    args = (grad_out, y, norm.scale, norm.shift, residual, res_scale, res_shift, relu)
    sum_g, sum_g_y, sum_g_res = prims.scale_shift_act_backward_reduce(
        *args, norm.mean, None if res_norm is None else res_norm.mean)

    grad_se, ds = (), None
    sum_dz, sum_dz_y = sum_g, sum_g_y
    if se is not None:
        sum_dz, sum_dz_y, ds, grad_se = _se_sums(sum_g, sum_g_y, norm, params, se)
    sync = use_batch_stats and bool(group_name)
    rows = 0 if se is not None else n
    count = norm.count
    grad_weight, grad_bias, k_g, k_0, k_y = prims.bn_backward_finalize(
        sum_dz, sum_dz_y, norm.invstd, params.weight, count, rows, use_batch_stats)
    res_sums = (sum_g, sum_g_res)
    res_count = None if res_norm is None else res_norm.count
    if sync and (needs.get("y") or needs.get("residual")):
        # SyncBN: the input gradient takes every rank's sums and count; d(gamma), d(beta) stay local.
        totals = [sum_dz.sum(0), sum_dz_y.sum(0), norm.invstd.new_full((1,), float(count))]
        totals += [sum_g.sum(0), sum_g_res] if res_norm is not None else []
        totals = all_reduce_sum(totals, group_name)
        count = res_count = int(totals[2].item())
        _, _, k_g, k_0, k_y = prims.bn_backward_finalize(totals[0], totals[1], norm.invstd, params.weight, count,
                                                         rows, use_batch_stats)
        if res_norm is not None:
            res_sums = (totals[3], totals[4])
    if se is not None:
        k_0 = torch.addcmul(k_0, k_g, ds, value=1.0 / hw)  # + a * ds / (H*W): the squeeze's gradient
        k_g = k_g * se.gate

    grad_res_weight = grad_res_bias = None
    res_k = (None, None, None, None)
    if res_norm is not None and (needs.get("res_weight") or needs.get("res_bias") or needs.get("residual")):
        # This rank's sums give d(gamma), d(beta); the input-gradient coefficients take every rank's
        # (the same sums without SyncBN: one finalize serves both).
        g_w, g_b, r_k_g, r_k_0, r_k_y = prims.bn_backward_finalize(sum_g, sum_g_res, res_norm.invstd,
                                                                   res_params.weight, res_norm.count, 0,
                                                                   use_batch_stats)
        grad_res_weight = _as(g_w, res_params.weight, needs.get("res_weight"))
        grad_res_bias = _as(g_b, res_params.bias, needs.get("res_bias"))
        if needs.get("residual"):
            if sync:
                _, _, r_k_g, r_k_0, r_k_y = prims.bn_backward_finalize(
                    res_sums[0], res_sums[1], res_norm.invstd, res_params.weight, res_count, 0, use_batch_stats)
            res_k = (r_k_g, r_k_0, r_k_y, res_norm.mean)
    elif residual is not None and needs.get("residual"):  # plain identity: d residual = g
        ones, zeros = unit_coefficients(norm.invstd)
        res_k = (ones, zeros, zeros, zeros)

    grad_y = grad_residual = None
    if needs.get("y") or res_k[0] is not None:
        grad_y, grad_residual = prims.scale_shift_act_backward_apply(*args, k_g, k_0, k_y, norm.mean, *res_k)
        grad_y = grad_y if needs.get("y") else None
        grad_residual = grad_residual if res_k[0] is not None else None
    return BackwardResult(grad_y, _as(grad_weight, params.weight, needs.get("weight")),
                          _as(grad_bias, params.bias, needs.get("bias")), grad_residual, grad_res_weight,
                          grad_res_bias, grad_se)


_UNIT_COEFFICIENTS: dict = {}


def unit_coefficients(like: Tensor) -> tuple[Tensor, Tensor]:
    """(ones, zeros) shaped, typed and placed like ``like``: the identity's input-gradient coefficients.
    Kept per (shape, dtype, device) in plain eager (two allocations fewer per backward); made afresh
    under torch.compile or a transform, which must see them as ops of the graph, and while a CUDA
    graph is captured (whose memory pool must not hold a tensor kept past it)."""
    if (torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active() or torch.is_grad_enabled()
            or (like.is_cuda and torch.cuda.is_current_stream_capturing())):
        return like.new_ones(like.shape), like.new_zeros(like.shape)
    key = (like.shape, like.dtype, like.device)
    pair = _UNIT_COEFFICIENTS.get(key)
    if pair is None:
        if len(_UNIT_COEFFICIENTS) > 64:
            _UNIT_COEFFICIENTS.clear()
        pair = _UNIT_COEFFICIENTS[key] = (like.new_ones(like.shape), like.new_zeros(like.shape))
    return pair


# ----------------------------------------------------------------------------- running statistics
def update_running_stats(running_mean: Optional[Tensor], running_var: Optional[Tensor],
                         num_batches_tracked: Optional[Tensor], batch_mean: Tensor, unbiased_var: Tensor,
                         momentum: Optional[float]) -> None:
    """nn.BatchNorm's update with the batch's unbiased variance: momentum, or None for the cumulative average.

    No grad mode to turn off: the buffers and the statistics (non-differentiable outputs) never
    require grad, so autograd records nothing here (and the context manager cost host time)."""
    if running_mean is None:
        return
    if forward_ad._current_level >= 0 or batch_mean.requires_grad or unbiased_var.requires_grad:
        # The statistics may carry tangents (forward AD) or a graph (the reference primitives called
        # outside a Function); the buffers must take neither.
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
            # One foreach call instead of eight small ops (every dispatched op costs host time: about
            # 8 us each in a bn_relu forward+backward on this project's CPU). running + m * (batch -
            # running) is eager's (1 - m) * running + m * batch up to rounding.
            torch._foreach_lerp_([running_mean, running_var], [batch_mean, unbiased_var], factor)
            return
    running_mean.copy_(batch_mean * factor + running_mean.to(batch_mean.dtype) * (1 - factor))
    running_var.copy_(unbiased_var * factor + running_var.to(unbiased_var.dtype) * (1 - factor))
