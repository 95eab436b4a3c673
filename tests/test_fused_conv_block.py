"""Whole blocks through the fused convolution chain (ops.fused_conv_chain, models/_conv_fusion.py)
against torchvision's blocks: output, input gradient, every parameter gradient, running statistics.

Without a CUDA device the Triton kernels run on CPU tensors under the interpreter (TRITON_INTERPRET=1,
set by conftest before triton is imported): tiny blocks (N = 2, 6x6, 8-32 channels), whose interpreter
tiles (32 rows x 16 channels) still give row and channel tails. The BN primitives run the Triton
backend too (set_backend("triton")), so the route is the GPU's: block -> fused_conv_chain ->
FusedConvChainFunction -> conv primitives + bn_finalize / bn_backward_finalize -> kernels.
"""
import pytest
import torch
from torch import nn

import resnet_fast
from op_testing import selected_backend
from resnet_fast import backend, conv_backend, ops
from resnet_fast.models.blocks import BasicBlock, Bottleneck

tv = pytest.importorskip("torchvision.models.resnet")
pytestmark = pytest.mark.skipif(not backend.triton_status()[0], reason=backend.triton_status()[1])

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
# Errors relative to the reference's largest magnitude. fp32: summation order only (three convolutions
# and two BN backward passes deep). fp16: every stored tensor rounded to fp16 (2^-11), compounding.
TOL = {torch.float32: 1e-4, torch.float16: 3e-2}


@pytest.fixture(autouse=True)
def no_tf32():
    """On a GPU, fp32 convolutions (cuDNN's and the kernels', which follow cudnn.allow_tf32) in IEEE fp32:
    the fp32 tolerances are for summation order, not TF32's 10-bit mantissa."""
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = previous


@pytest.fixture
def conv_choice():
    """Select a convolution backend for the test, restoring the previous one after."""
    previous = conv_backend.get_conv_backend()
    yield resnet_fast.set_conv_backend
    resnet_fast.set_conv_backend(previous)


@pytest.fixture
def fused(conv_choice):
    """The Triton BN primitives and the forced Triton convolution chain."""
    conv_choice("triton")
    with selected_backend("triton"):
        yield


@pytest.fixture
def chain_calls(monkeypatch):
    """Counts the blocks that ran the fused chain."""
    calls = []
    original = ops.fused_conv_chain

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(ops, "fused_conv_chain", counting)
    return calls


# ----------------------------------------------------------------------------- helpers
def downsample(c_in, c_out, stride, momentum=0.1):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out, momentum=momentum))


def make_pair(kind, stride, momentum=0.1, seed=0):
    """(torchvision block, resnet_fast block) with equal weights, non-trivial BN affines and running stats."""
    torch.manual_seed(seed)
    if kind == "bottleneck":
        c_in, planes = 16, 8
        c_out = planes * 4
        ds = downsample(c_in, c_out, stride, momentum) if stride != 1 or c_in != c_out else None
        ref = tv.Bottleneck(c_in, planes, stride=stride, downsample=ds)
    else:
        c_in, planes = 8, 8 if stride == 1 else 24
        ds = downsample(c_in, planes, stride, momentum) if stride != 1 or c_in != planes else None
        ref = tv.BasicBlock(c_in, planes, stride=stride, downsample=ds)
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = momentum
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    block = (Bottleneck if kind == "bottleneck" else BasicBlock)(
        c_in, planes, stride=stride, downsample=None if ds is None else downsample(c_in, ds[0].out_channels, stride,
                                                                                  momentum))
    block.load_state_dict(ref.state_dict())
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = momentum
    return ref.to(DEVICE), block.to(DEVICE), c_in


def block_input(c_in, dtype=torch.float32, fmt=torch.channels_last, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.relu(torch.randn(2, c_in, 6, 6, generator=g))  # a block input is a ReLU output
    return x.to(device=DEVICE, dtype=dtype).contiguous(memory_format=fmt)


def run(block, x, grad_seed=2, fn=None):
    """Output, input gradient and parameter gradients of one forward+backward (of ``fn``, a compiled block,
    when given)."""
    for p in block.parameters():
        p.grad = None
    x = x.detach().clone().requires_grad_(True)
    out = (block if fn is None else fn)(x)
    g = torch.Generator().manual_seed(grad_seed)
    grad = torch.randn(out.shape, generator=g).to(device=out.device, dtype=out.dtype)
    out.backward(grad)
    grads = {name: p.grad for name, p in block.named_parameters()}
    return out.detach(), x.grad, grads


def close(got, want, tol, name):
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    assert got.shape == want.shape, name
    if got.numel() == 0:
        return
    err = (got - want).abs().max().item()
    scale = max(want.abs().max().item(), 1e-6)
    assert err <= tol * scale, f"{name}: max error {err:.3g} > {tol} x {scale:.3g}"


def compare_blocks(ref, block, x, dtype, training, calls):
    ref.train(training)
    block.train(training)
    out, gx, grads = run(block, x)
    assert calls == [1], "the block did not run the fused chain"
    assert out.dtype == dtype and gx.dtype == dtype
    ref_out, ref_gx, ref_grads = run(ref.float(), x.float())
    tol = TOL[dtype]
    close(out, ref_out, tol, "output")
    close(gx, ref_gx, tol, "input gradient")
    assert set(grads) == set(ref_grads)
    for name in ref_grads:
        close(grads[name], ref_grads[name], tol, name)
    for (name, got), (_, want) in zip(block.named_buffers(), ref.named_buffers()):
        if name.endswith("num_batches_tracked"):
            assert torch.equal(got, want), name
        else:
            close(got, want, 1e-5 if dtype == torch.float32 else 1e-3, name)


# ----------------------------------------------------------------------------- whole blocks
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval-with-grad"])
def test_bottleneck_stride2_downsample_matches_torchvision(fused, chain_calls, training):
    ref, block, c_in = make_pair("bottleneck", 2)
    compare_blocks(ref, block, block_input(c_in), torch.float32, training, chain_calls)


@pytest.mark.parametrize("stride, momentum, fmt", [(1, 0.1, torch.channels_last), (2, None, torch.contiguous_format)],
                         ids=["identity-channels_last", "downsample-cumulative-nchw"])
def test_basic_block_matches_torchvision(fused, chain_calls, stride, momentum, fmt):
    """Identity and downsample tails; momentum=None (cumulative average); an NCHW input, which the forced
    chain converts to channels_last (the gradient flows back through the copy)."""
    ref, block, c_in = make_pair("basic", stride, momentum)
    compare_blocks(ref, block, block_input(c_in, fmt=fmt), torch.float32, True, chain_calls)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_forward_without_autograd(fused, chain_calls, training):
    """Forced, the chain runs without autograd too (train under no_grad updates the running statistics;
    inference normalizes with them), as torchvision does."""
    ref, block, c_in = make_pair("basic", 2)
    ref.train(training)
    block.train(training)
    x = block_input(c_in)
    with torch.no_grad():
        out, ref_out = block(x), ref(x)
    assert chain_calls == [1]
    close(out, ref_out, 1e-4, "output")
    for (name, got), (_, want) in zip(block.named_buffers(), ref.named_buffers()):
        close(got, want, 1e-5, name)


def test_bottleneck_float16(fused, chain_calls):
    ref, block, c_in = make_pair("bottleneck", 2)
    compare_blocks(ref, block.half(), block_input(c_in, torch.float16), torch.float16, True, chain_calls)


def rel_errors(result, reference):
    out, gx, grads = result
    ref_out, ref_gx, ref_grads = reference
    pairs = [("output", out, ref_out), ("input gradient", gx, ref_gx)] + [(k, grads[k], ref_grads[k]) for k in ref_grads]
    return {name: ((a.double().cpu() - b.double().cpu()).abs().max() / b.abs().max()).item() for name, a, b in pairs}


def test_bottleneck_bfloat16_as_accurate_as_eager(fused):
    """In bfloat16 (8-bit mantissa) a few pre-activations near 0 round to the other side of the ReLU, and at 18
    values per channel one flipped mask entry moves a BN gradient sum by O(1/18): single gradients end up
    ~0.1-0.4 relative from float32 in eager too, varying with the seed in both paths (fp16 flips none here). A sanity bound, not a precision claim: the fused block's worst error over the output and every
    gradient, against torchvision in float32, stays within 2.5x the worst error of torchvision's block run in
    bfloat16 (a wrong bf16 path, e.g. the interpreter's raw-bits tl.dot, gives O(1) errors)."""
    ref, block, c_in = make_pair("bottleneck", 2)
    x = block_input(c_in)
    reference = run(ref, x)
    fused_errors = rel_errors(run(block.bfloat16(), x.bfloat16()), reference)
    eager_errors = rel_errors(run(ref.bfloat16(), x.bfloat16()), reference)
    assert max(fused_errors.values()) <= 2.5 * max(eager_errors.values()), (fused_errors, eager_errors)


def test_se_bottleneck_matches_aten_path(fused, conv_choice, chain_calls):
    """A post-activation SE block: the chain, then the squeeze_excite tail; against the same block on
    today's path (ATen convolutions; torchvision has no SE block)."""
    from resnet_fast.models.blocks import SEModule

    torch.manual_seed(0)
    block = Bottleneck(16, 8, stride=2, downsample=downsample(16, 32, 2), se_layer=SEModule).to(DEVICE)
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    x = block_input(16)
    state = {k: v.clone() for k, v in block.state_dict().items()}
    out, gx, grads = run(block, x)
    assert chain_calls == [1]
    fused_state = {k: v.clone() for k, v in block.state_dict().items()}
    block.load_state_dict(state)
    conv_choice("aten")
    ref_out, ref_gx, ref_grads = run(block, x)
    assert chain_calls == [1]
    close(out, ref_out, 1e-4, "output")
    close(gx, ref_gx, 1e-4, "input gradient")
    for name in ref_grads:
        close(grads[name], ref_grads[name], 1e-4, name)
    for name, value in block.state_dict().items():
        close(fused_state[name], value, 1e-5, name)


def test_double_backward(fused):
    """A gradient with create_graph=True (gradient penalty): the chain's backward recomputes with eager
    operations (_double_backward), so the second-order terms are eager PyTorch's."""
    results = []
    for model in make_pair("basic", 1)[:2]:
        model.train()
        x = block_input(8).requires_grad_(True)
        (gx,) = torch.autograd.grad(model(x).square().sum(), x, create_graph=True)
        gx.square().sum().backward()
        results.append((gx.detach(), model.conv1.weight.grad, model.bn1.weight.grad))
    for got, want, name in zip(results[1], results[0], ("input gradient", "conv1.weight", "bn1.weight")):
        close(got, want, 1e-4, name)


def test_saves_only_raw_outputs(fused):
    """The chain keeps x, the raw y1, y2 and per-channel vectors: no normalized or ReLU'd activation.
    With the tail (y3 and the downsample's raw output) and the downsample conv's input (x) that makes
    four distinct activations of the block's batch: x, y1, y2, y3, identity."""
    _, block, c_in = make_pair("bottleneck", 2)
    x = block_input(c_in).requires_grad_(True)
    saved = {}

    def pack(t):
        if t.dim() == 4 and t.shape[0] == x.shape[0]:
            saved[t.untyped_storage().data_ptr()] = tuple(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        block(x)
    assert sorted(saved.values()) == sorted([(2, 16, 6, 6), (2, 8, 6, 6), (2, 8, 3, 3), (2, 32, 3, 3),
                                             (2, 32, 3, 3)]), saved


def test_bitwise_repeatable(fused):
    _, block, c_in = make_pair("basic", 1)
    x = block_input(c_in)
    first, second = run(block, x), run(block, x)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    for name, g in first[2].items():
        assert torch.equal(g, second[2][name]), name


# ----------------------------------------------------------------------------- registration and compile
def conv_samples():
    """(primitive, args): every prologue/epilogue combination of the three convolution primitives."""
    g = torch.Generator().manual_seed(3)

    def act(*shape):
        return torch.randn(shape, generator=g).to(DEVICE).contiguous(memory_format=torch.channels_last)

    def vec(c, positive=False):
        v = torch.randn(c, generator=g)
        return (v.abs() + 0.5 if positive else v).to(DEVICE)

    x, y = act(2, 8, 5, 5), act(2, 24, 3, 3)
    w = act(24, 8, 3, 3)
    scale, shift, mean = vec(8, True), vec(8), vec(8)
    coefs = (vec(24, True), vec(24), vec(24))
    return [
        ("conv_forward", (x, w, 2, 1, None, None)),
        ("conv_forward", (x, w, 2, 1, scale, shift)),
        ("conv_dgrad", (y, w, 5, 5, 2, 1, None, None, None, None, None, None, None, None)),
        ("conv_dgrad", (y, w, 5, 5, 2, 1, y, *coefs, x, scale, shift, mean)),
        ("conv_wgrad", (x, y, [24, 8, 3, 3], 2, 1, None, None, None, None, None, None)),
        ("conv_wgrad", (x, y, [24, 8, 3, 3], 2, 1, scale, shift, y, *coefs)),
    ]


@pytest.mark.parametrize("index", range(6))
def test_conv_primitives(index):
    """torch.library.opcheck of the registered op (schema, fake, autograd registration), and the Triton
    adapter the conv table calls against it (the reference, plain torch)."""
    name, args = conv_samples()[index]
    op = getattr(torch.ops.resnet_fast, name).default
    torch.library.opcheck(op, args)
    expected = op(*args)
    got = getattr(conv_backend._table("triton"), name)(*args)
    expected, got = (expected, got) if isinstance(got, tuple) else ((expected,), (got,))
    for i, (a, b) in enumerate(zip(got, expected)):
        assert a.shape == b.shape and a.dtype == b.dtype, (name, i)
        if a.dim() == 4:
            assert a.is_contiguous(memory_format=torch.channels_last), (name, i)
        close(a, b, 1e-5, f"{name} output {i}")


def test_compile_fullgraph_block(conv_choice):
    """A fused Bottleneck is one graph under torch.compile(fullgraph=True) and matches torchvision. On CPU
    tensors Dynamo cannot trace the interpreted Triton kernels: the chain then runs the registered conv
    primitives (their reference kernels), which is what this checks (the graph holds them; on a GPU it holds
    the Triton launches through wrap_triton)."""
    from torch._dynamo.backends.debugging import aot_eager

    torch._dynamo.reset()
    conv_choice("triton")
    graphs = []

    def backend_fn(gm, inputs):
        graphs.append(gm.print_readable(print_output=False))
        return aot_eager(gm, inputs)

    with selected_backend("reference" if not CUDA else "triton"):
        ref, block, c_in = make_pair("bottleneck", 2)
        x = block_input(c_in)
        compiled = torch.compile(block, fullgraph=True, backend=backend_fn)
        out, gx, grads = run(block, x, fn=compiled)
    assert len(graphs) == 1
    if not CUDA:
        for name in ("conv_forward", "conv_dgrad", "conv_wgrad"):  # the chain's forward and backward bodies
            assert f"torch.ops.resnet_fast.{name}.default" in graphs[0], name
    ref_out, ref_gx, ref_grads = run(ref, x)
    close(out, ref_out, 1e-4, "output")
    close(gx, ref_gx, 1e-4, "input gradient")
    for name in ref_grads:
        close(grads[name], ref_grads[name], 1e-4, name)
    close(block.bn2.running_var, ref.bn2.running_var, 1e-5, "bn2.running_var")
    torch._dynamo.reset()


def test_launcher_checks_trace():
    """The conv launchers' argument checks trace under torch.compile(fullgraph=True) (plain ``if``s, not
    torch._check, whose message closures over tensors Dynamo refuses): on a GPU the launchers run inside
    the compiled chain. (The launches themselves need a GPU: wrap_triton rejects interpreted kernels.)"""
    from resnet_fast.kernels.triton.conv import _common

    def checks(x, w, scale):
        _common.check_activation("conv_forward", "x", x)
        _common.check_weight("conv_forward", w, x)
        geom = _common.check_geometry("conv_forward", x.shape, w.shape, 2, 1)
        scale = _common.check_vector("conv_forward", "scale", scale, geom.c_in, x.device)
        return _common.weight_krsc(w).sum() + scale.sum() + geom.rows

    x = torch.randn(2, 8, 5, 5, device=DEVICE).contiguous(memory_format=torch.channels_last)
    w, scale = torch.randn(16, 8, 3, 3, device=DEVICE), torch.ones(8, device=DEVICE)
    torch._dynamo.reset()
    assert torch.equal(torch.compile(checks, fullgraph=True, backend="eager")(x, w, scale), checks(x, w, scale))
    with pytest.raises(RuntimeError, match="must be channels_last"):
        torch.compile(checks, fullgraph=True, backend="eager")(x.contiguous(), w, scale)
    torch._dynamo.reset()


# ----------------------------------------------------------------------------- routing
def test_aten_and_auto_on_cpu_keep_todays_path(conv_choice, chain_calls):
    _, block, c_in = make_pair("basic", 1)
    x = block_input(c_in).to("cpu")
    block.to("cpu")
    for choice in ("aten", "auto"):
        conv_choice(choice)
        block(x.requires_grad_(True))
    assert chain_calls == []


def test_auto_follows_the_table(fused, conv_choice, chain_calls, monkeypatch):
    """auto runs the chain where the table chose Triton for every layer, with autograd recording, on a
    channels_last input; today's path otherwise."""
    conv_choice("auto")
    asked = []

    def table(device, dtype, layers):
        asked.append((dtype, layers))
        return layers[0][0] == 8

    monkeypatch.setattr(conv_backend, "table_chooses_triton", table)
    monkeypatch.setattr(conv_backend, "has_table", lambda: True)
    _, block, c_in = make_pair("basic", 1)
    x = block_input(c_in).requires_grad_(True)
    with torch.no_grad():
        block(x)  # inference: today's (folded) path, the table not even asked
    block(x.contiguous())  # NCHW input: today's path
    assert chain_calls == [] and asked == []
    block(x)
    assert chain_calls == [1]
    assert asked == [(torch.float32, [(8, 6, 6, 8, 3, 1), (8, 6, 6, 8, 3, 1)])]
    monkeypatch.setattr(conv_backend, "table_chooses_triton", lambda *args: False)
    block(x)
    assert chain_calls == [1]


def test_table_chooses_triton(monkeypatch):
    monkeypatch.setattr(conv_backend, "_gpu_name", lambda index: "GPU X")
    layers = [(16, 6, 6, 8, 1, 1), (8, 6, 6, 8, 3, 2)]
    keys = [conv_backend.table_key("GPU X", torch.float16, *layer) for layer in layers]
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(conv_backend, "load_table", lambda: {keys[0]: "triton", keys[1]: "triton"})
    assert conv_backend.table_chooses_triton(cuda, torch.float16, layers)
    assert not conv_backend.table_chooses_triton(cuda, torch.bfloat16, layers)  # no entry: ATen
    assert not conv_backend.table_chooses_triton(torch.device("cpu"), torch.float16, layers)
    monkeypatch.setattr(conv_backend, "load_table", lambda: {keys[0]: "triton", keys[1]: "aten"})
    assert not conv_backend.table_chooses_triton(cuda, torch.float16, layers)  # one layer ATen: the block too


# ----------------------------------------------------------------------------- bad inputs
def test_forced_triton_names_what_is_not_covered(fused, monkeypatch):
    x = block_input(16).requires_grad_(True)
    grouped = Bottleneck(16, 8, groups=2, base_width=64, downsample=downsample(16, 32, 1)).to(DEVICE)
    with pytest.raises(RuntimeError, match=r"Bottleneck cannot run its convolutions fused: conv2 is grouped "
                                           r"\(groups=2"):
        grouped(x)
    dilated = Bottleneck(16, 8, dilation=2, downsample=downsample(16, 32, 1)).to(DEVICE)
    with pytest.raises(RuntimeError, match=r"conv2 is dilated \(dilation=\(2, 2\)"):
        dilated(x)
    double = Bottleneck(16, 4).to(DEVICE).double()
    with pytest.raises(RuntimeError, match="activations of dtype torch.float64"):
        double(x.double())
    if not CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(RuntimeError, match="only under TRITON_INTERPRET=1"):
            Bottleneck(16, 4)(x)


def test_functional_bad_inputs(fused):
    x = block_input(8)
    w3 = torch.randn(8, 8, 3, 3, device=DEVICE)
    bn = dict(weight=None, bias=None, running_mean=None, running_var=None, num_batches_tracked=None,
              training=True, momentum=0.1, eps=1e-5)

    def raises(match, *args):
        with pytest.raises((RuntimeError, ValueError), match=match):
            ops.fused_conv_chain(*args)

    raises("expected 2 or 3 weights", x, [w3], [1], [1], [])
    raises("x must be channels_last", x.contiguous(), [w3, w3], [1, 1], [1, 1], [bn])
    raises("kernel size 5x5", x, [w3, torch.randn(8, 8, 5, 5, device=DEVICE)], [1, 1], [1, 2], [bn])
    raises("stride 3", x, [w3, w3], [3, 1], [1, 1], [bn])
    raises("padding 0 of weights", x, [w3, w3], [1, 1], [0, 1], [bn])
    raises(r"weights\[1\] expects 4 input channels, its input has 8 \(grouped", x,
           [w3, torch.randn(8, 4, 3, 3, device=DEVICE)], [1, 1], [1, 1], [bn])
    raises("weights.0. is torch.float16", x, [w3.half(), w3], [1, 1], [1, 1], [bn])
    raises("x must be float16, bfloat16 or float32", x.double(), [w3.double(), w3.double()], [1, 1], [1, 1], [bn])
    raises(r"bns\[0\] weight of shape \(8,\)", x, [w3, w3], [1, 1], [1, 1],
           [dict(bn, weight=torch.ones(3, device=DEVICE))])
    raises("Expected more than 1 value per channel", x[:1, :, :1, :1], [w3, w3], [1, 1], [1, 1], [bn])
