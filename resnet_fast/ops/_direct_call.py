"""Call a fused op's implementation without torch's custom-op dispatch when nothing needs it.

Every fused op is a ``torch.library.custom_op`` with an autograd formula, which is what
torch.compile, torch.export, opcheck, FakeTensor and tensor subclasses see. In plain eager
mode that costs 45-75 µs of host time per forward+backward (bn_relu / bn_add_relu, measured
on a 2-core CPU) on top of the op's own work: the dispatcher, the Python autograd kernel that
custom_op generates (it re-binds every argument to the schema,
``torch._library.utils.fill_defaults``, quadratic in their number), a redispatch below
autograd and pytree handling. At the 7×7 stage on a CPU that is a tenth of the op; on a GPU,
where the op's kernels take tens of microseconds, it would be most of it.

``register_autograd`` registers the formula on the op as usual and returns a caller. The
caller runs the op's own forward, setup_context and backward as a plain
``torch.autograd.Function``, the same autograd node the generated kernel would build,
when the call is plain eager on CPU or CUDA tensors. Under a torch.func transform (grad,
vjp, jacrev, vmap), which refuses the generated kernel's Function, it runs the same three
as a Function in the style torch.func requires (setup_context, a generated vmap rule).
Otherwise (compiling, tracing, a dispatch or torch-function mode, tensor subclasses, other
devices) it calls the registered op. Where forward-mode AD may see the op it runs the op's
forward on the reference backend, plain torch, outside any Function (``forward_mode``).
The direct call and the registered op give the same results bit for bit
(tests/test_direct_call.py); under a transform the backward is itself differentiated and
takes the create_graph path (_double_backward.py, tests/test_func_transforms.py).
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch.autograd import forward_ad
from torch.overrides import has_torch_function

from .. import backend

_state = {"enabled": True}


def _plain_eager(args: tuple) -> bool:
    return (_state["enabled"]
            and args[0].device.type in ("cpu", "cuda")
            and not torch.compiler.is_compiling()
            and not torch.jit.is_tracing()
            and torch._C._len_torch_dispatch_stack() == 0
            and torch._C._len_torch_function_stack() == 0
            and not has_torch_function(args))


def direct_call_allowed(args: tuple) -> bool:
    """Whether ``args`` (the op's arguments, first one a tensor) may skip the dispatcher."""
    return _plain_eager(args) and not torch._C._are_functorch_transforms_active()


def functorch_call_allowed(args: tuple) -> bool:
    """Whether to run the op as the Function torch.func accepts (setup_context style, vmap
    rule generated): under a torch.func transform (grad, vjp, jacrev, vmap), where the
    registered op's generated autograd.Function is refused."""
    return _plain_eager(args) and torch._C._are_functorch_transforms_active()


def transform_active() -> bool:
    """A torch.func transform or a forward-mode AD dual level is active: the ops' inference
    shortcuts (BN folded into the weights, oneDNN epilogues) step aside, as they can neither
    look at batched tensors nor carry tangents."""
    return torch._C._are_functorch_transforms_active() or forward_ad._current_level >= 0


def forward_mode(args: tuple) -> bool:
    """Whether forward-mode AD (torch.autograd.forward_ad, torch.func.jvp / jacfwd / hessian) may
    see the op: a tangent reaches it, or a dual level is open under a torch.func transform
    (jacfwd of jacrev: the tangent lives on tensors the inner transform wrapped)."""
    return forward_ad._current_level >= 0 and (
        torch._C._are_functorch_transforms_active()
        or any(isinstance(a, torch.Tensor) and forward_ad.unpack_dual(a).tangent is not None for a in args))


@contextlib.contextmanager
def through_dispatcher():
    """Inside: every call goes through the registered op (tests compare both paths)."""
    previous = _state["enabled"]
    _state["enabled"] = False
    try:
        yield
    finally:
        _state["enabled"] = previous


def register_autograd(op, forward: Callable, setup_context: Callable, backward: Callable) -> Callable:
    """``op.register_autograd(backward, setup_context=setup_context)``; returns ``call(*args)``
    running ``forward`` (the op's implementation) directly where ``direct_call_allowed``."""
    op.register_autograd(backward, setup_context=setup_context)
    name = op._name

    # forward(ctx, ...) rather than a separate setup_context: Function.apply binds the
    # arguments of the latter style with inspect.signature, ~40 µs for an op's 9-19 arguments.
    def forward_and_setup(ctx, *args):
        output = forward(*args)
        setup_context(ctx, args, output)
        return output

    function = type(f"{name}_direct", (torch.autograd.Function,), {
        "forward": staticmethod(forward_and_setup),
        "backward": staticmethod(backward),
    })
    # The same node in the style torch.func requires; its backward, differentiated by the
    # transforms, takes the create_graph path (_double_backward).
    functorch_function = type(f"{name}_functorch", (torch.autograd.Function,), {
        "forward": staticmethod(forward),
        "setup_context": staticmethod(setup_context),
        "backward": staticmethod(backward),
        "generate_vmap_rule": True,
    })

    def call(*args):
        if forward_mode(args):
            # Forward-mode AD has no formula of its own: the op's forward on the reference
            # backend is plain torch, which forward AD (and autograd) differentiate as eager.
            # The registered op would drop the tangent (torch.func.jvp would return zeros).
            with backend.forced("reference"):
                return forward(*args)
        if direct_call_allowed(args):
            return function.apply(*args)
        if functorch_call_allowed(args):
            return functorch_function.apply(*args)
        return op(*args)

    call.__name__ = call.__qualname__ = f"call_{name}"
    return call
