"""The one route of every fused op: a torch.autograd.Function over the registered primitives.

Each fused op is a ``FusedFunction`` subclass in flash-attention's placement: the kernel
calls inside it are custom ops with fake implementations (ops/_registration.py), autograd
is the Function. One class serves plain eager, torch.compile (Dynamo traces the Function;
the primitives stay opaque), torch.func's transforms (setup_context style with a generated
vmap rule: under vmap the compiled primitives run once per sample) and double backward
(a backward run with grad mode on takes the differentiable eager path, _double_backward.py).

Forward-mode AD (torch.autograd.forward_ad, torch.func.jvp / jacfwd / hessian) has no
formula here: where it may see the op, ``call`` runs the Function's ``compute`` on the
reference primitives, plain torch, outside any Function, which forward AD differentiates
as it does eager.

A subclass defines ``compute(prims, ...)`` (the forward on a table of primitives), a
``forward`` with the same explicit arguments that calls it with ``backend.primitives`` (Dynamo
matches forward's signature), ``setup_context`` and ``backward``. Arguments are few on
purpose: tensors, then one tuple of constants.

Host time. ``Function.apply`` of a setup_context-style Function binds the arguments to
forward's signature with ``inspect`` on every call and takes a slower path in backward too:
measured on this project's 2-core CPU at 8x64x2x2, a bn_relu forward+backward through it
took 162 us against 106 us through an old-style (``forward(ctx, ...)``) Function running the
same forward, setup_context and backward. So in plain eager (no torch.func transform, no
forward-mode AD, not compiling) ``call`` applies ``cls.plain``, that old-style twin built
from the subclass's own methods; the setup_context class serves the transforms and Dynamo.
Both run the same code; only the binding differs.
"""
from __future__ import annotations

import torch
from torch.autograd import forward_ad

from .. import backend


class FusedFunction(torch.autograd.Function):
    generate_vmap_rule = True
    plain: type  # the old-style twin (set for each subclass)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.plain = _old_style_twin(cls)

    @staticmethod
    def compute(prims, *args):
        raise NotImplementedError

    @classmethod
    def call(cls, *args):
        """``plain.apply(*args)`` in plain eager, ``apply(*args)`` under torch.compile or a torch.func
        transform, ``compute`` on the reference primitives where forward-mode AD may see it."""
        if torch.compiler.is_compiling():
            return cls.apply(*args)
        if forward_mode(args):
            return cls.compute(backend.REFERENCE, *args)
        return cls.apply(*args) if transform_active() else cls.plain.apply(*args)


def _old_style_twin(function: type) -> type:
    """An old-style Function running ``function``'s forward, setup_context and backward (see the
    module docstring: its apply costs a fraction of the setup_context style's)."""

    def forward(ctx, *args):
        output = function.forward(*args)
        function.setup_context(ctx, args, output)
        return output

    return type(function.__name__ + "Plain", (torch.autograd.Function,),
                {"forward": staticmethod(forward), "backward": staticmethod(function.backward),
                 "__module__": function.__module__, "__doc__": f"{function.__name__} for plain eager."})


def forward_mode(args: tuple) -> bool:
    """Whether forward-mode AD may see the op: a tangent reaches it, or a dual level is open under a
    torch.func transform (jacfwd of jacrev: the tangent lives on tensors the inner transform wrapped)."""
    return forward_ad._current_level >= 0 and (
        torch._C._are_functorch_transforms_active()
        or any(isinstance(a, torch.Tensor) and forward_ad.unpack_dual(a).tangent is not None for a in args))


def transform_active() -> bool:
    """A torch.func transform or a forward-mode AD dual level is active: the ops' inference
    shortcuts (BN folded into the weights, oneDNN epilogues) step aside, as they can neither
    look at batched tensors nor carry tangents."""
    return torch._C._are_functorch_transforms_active() or forward_ad._current_level >= 0
