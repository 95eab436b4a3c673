"""A backward that is itself differentiable, for gradients taken with create_graph=True.

The fused ops' backward runs kernels (C++, Triton, CUDA) that autograd cannot see into: a
gradient taken with ``create_graph=True`` (gradient penalties, Hessian-vector products,
MAML) would get a graph that silently drops every second-order term through the op (torch
only warns that the op has no autograd kernel). Autograd runs a backward with grad mode on
when, and only when, the graph of the gradient is being built (create_graph=True; torch.func
transforms always build it), so ``wanted()`` tells the ops' backward to take this path
instead: recompute the op's output from the saved tensors with differentiable eager
operations and return its vector-Jacobian product (``gradients``), itself differentiable.
That costs what eager costs; the first-order values equal the kernels' up to rounding, and
every higher-order term is eager PyTorch's.

The recomputation follows resnet_fast/ops/reference.py: batch statistics recomputed from the
saved activation in training (they depend on it), the saved running ones as constants in
eval, in the accumulation dtype, the output rounded to the activation's dtype.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from . import _bn
from .primitives import acc_dtype

Tensor = torch.Tensor


def wanted() -> bool:
    """Whether this backward must be differentiable (autograd is recording it)."""
    return torch.is_grad_enabled()


def require_supported(group_name: str) -> None:
    if group_name:
        raise NotImplementedError(
            f"resnet_fast: a gradient with create_graph=True (double backward) is not supported with synchronized "
            f"batch statistics (group_name={group_name!r})")


def batch_norm(y: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], mean: Tensor, invstd: Tensor,
               use_batch_stats: bool, eps: float) -> Tensor:
    """bn(y) in the acc dtype: statistics of y in training, ``mean`` / ``invstd`` (the running
    ones the forward used) as constants in eval."""
    acc = acc_dtype(y.dtype)
    y = y.to(acc)
    if use_batch_stats:
        mean = y.mean((0, 2, 3))
        invstd = torch.rsqrt(y.var((0, 2, 3), unbiased=False) + eps)
    else:
        mean, invstd = mean.detach().to(acc), invstd.detach().to(acc)
    a = invstd if weight is None else weight.to(acc) * invstd
    c0 = -(mean * a) if bias is None else bias.to(acc) - mean * a
    return y * a[:, None, None] + c0[:, None, None]


def se_scale(b: Tensor, se: _bn.SEParams) -> Tensor:
    """b * gate, gate = sigmoid(fc2(relu(fc1(mean_hw(b))))) (reference.squeeze_excite)."""
    gate, _ = _bn.se_gate(b.mean((2, 3)), se)
    return b * gate[:, :, None, None]


def activation(z: Tensor, relu: bool, like: Tensor) -> Tensor:
    return (torch.relu(z) if relu else z).to(like.dtype)


def gradients(fn: Callable[..., Tensor], inputs: Sequence[Optional[Tensor]], grad_out: Tensor,
              needs: Sequence[bool]) -> tuple[Optional[Tensor], ...]:
    """The vector-Jacobian product of ``fn`` at ``inputs`` with grad_out, for each input that
    ``needs`` it (None for the others and for inputs that are None), itself differentiable.

    torch.func.vjp rather than torch.autograd.grad: its derivatives are partial ones, as a
    backward must return, even where one input was computed from another (a block's
    identity is an ancestor of y, and autograd.grad with respect to the identity would add
    the path through y), and it also runs inside torch.func transforms (jacrev vmaps it).
    """
    take = [bool(n) and t is not None for t, n in zip(inputs, needs)]
    if not any(take):
        return tuple(None for _ in inputs)

    def of_taken(*taken):
        values = iter(taken)
        return fn(*(next(values) if k else t for t, k in zip(inputs, take)))

    _, vjp = torch.func.vjp(of_taken, *(t for t, k in zip(inputs, take) if k))
    grads = iter(vjp(grad_out))
    return tuple(next(grads) if k else None for k in take)
