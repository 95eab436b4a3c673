"""The backends' self-check (resnet_fast/self_check.py) and how ``auto`` uses it (resnet_fast/backend.py).

On the CPU ``auto`` does not self-check the compiled CPU kernels, so the mechanism is tested by
putting a deliberately broken backend first in auto's candidate list (``backend._auto_candidates``,
the documented internal seam): it must be skipped for the primitive it breaks, with one warning
naming the backend, the primitive and the error, and the fused ops must still give the reference's
numbers. ``python -m resnet_fast.info --check`` runs the real check of every backend usable here.
"""
from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch

import resnet_fast
from resnet_fast import backend, ops, self_check
from resnet_fast.ops import primitives as P
from op_testing import selected_backend

CPU = torch.device("cpu")
REPO = os.path.dirname(os.path.dirname(resnet_fast.__file__))


# ----------------------------------------------------------------------------- broken backends
def _wrong_bn_finalize(mean, var, weight, bias, eps, count, n):
    """bn_finalize whose invstd is 1 % off: a plausible kernel bug (a wrong eps, a rounding mode)."""
    invstd, var_update, scale, shift = P.bn_finalize(mean, var, weight, bias, eps, count, n)
    return invstd * 1.01, var_update, scale * 1.01, shift


def _raising_bn_stats(y):
    raise RuntimeError("boom: no kernel image is available for execution on the device")


def _contiguous_scale_shift_act(y, *args):
    """Right numbers, lost memory format: channels_last in, contiguous out."""
    return P.scale_shift_act(y, *args).contiguous()


def broken(**replaced) -> backend.Primitives:
    return backend.Primitives(**{**P.PRIMITIVES, **replaced})


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty verdict cache folder and per-process state; a cheaper check (two dtypes) where the full
    one is not the point (``info --check`` below runs the full one); the selection restored after."""
    monkeypatch.setenv("RESNET_FAST_CACHE", str(tmp_path))
    monkeypatch.delenv(self_check.ENV, raising=False)
    monkeypatch.setattr(backend, "_verdicts", {})
    monkeypatch.setattr(backend, "_warned", set())
    monkeypatch.setattr(self_check, "DTYPES", (torch.float32, torch.bfloat16))
    calls = []
    check = self_check.check_backend

    def counted(name, table, device):
        calls.append(name)
        return check(name, table, device)

    monkeypatch.setattr(self_check, "check_backend", counted)
    with selected_backend("auto"):
        yield calls
    backend.set_backend(backend.get_backend())  # drop tables built with the injected backend


def inject(monkeypatch, name: str, table) -> None:
    """Put backend ``name`` (self-checked) first in auto's list for every device."""
    original = backend._auto_candidates
    monkeypatch.setattr(backend, "_auto_candidates",
                        lambda device: [backend.Candidate(name, table, True)] + original(device))
    backend.set_backend("auto")


def bn_relu_result(seed=0):
    """Output, gradients and running statistics of a bn_relu forward and backward on the current backend."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(4, 6, 5, 5, generator=g) + 0.5).contiguous(memory_format=torch.channels_last).requires_grad_()
    weight = (torch.rand(6, generator=g) + 0.5).requires_grad_()
    bias = torch.randn(6, generator=g).requires_grad_()
    running_mean, running_var = torch.zeros(6), torch.ones(6)
    out = ops.bn_relu(x, weight, bias, running_mean, running_var, training=True)
    grads = torch.autograd.grad(out, (x, weight, bias), torch.randn(out.shape, generator=g))
    return [out.detach(), *grads, running_mean, running_var]


def reference_result(seed=0):
    with selected_backend("reference"):
        return bn_relu_result(seed)


def warnings_of(records, name):
    return [w for w in records if issubclass(w.category, RuntimeWarning) and f"backend {name!r}" in str(w.message)]


# ----------------------------------------------------------------------------- the check itself
def test_check_passes_the_backends_usable_here(fresh):
    """Every check of the reference and (when compiled) the CPU kernels passes; a verdict per check."""
    names = ["reference"] + (["cpu"] if backend.backend_status()["cpu"][0] else [])
    for name in names:
        verdicts = self_check.check_backend(name, backend.table_of(name), CPU)
        assert list(verdicts) == list(self_check.CHECKS)
        assert all(v.passed and v.backend == name for v in verdicts.values()), verdicts


@pytest.mark.parametrize("table, failing, text", [
    (broken(bn_finalize=_wrong_bn_finalize), "bn_finalize", "error"),
    (broken(bn_stats=_raising_bn_stats), "bn_stats", "RuntimeError: boom"),
    (broken(scale_shift_act=_contiguous_scale_shift_act), "scale_shift_act", "memory format"),
])
def test_check_finds_broken_primitives(fresh, table, failing, text):
    """Wrong numbers, an exception and a lost memory format each fail the primitive (and the fused ops
    that use it), with an error that says where: dtype, layout, case."""
    verdicts = self_check.check_backend("broken", table, CPU)
    assert not verdicts[failing].passed and text in verdicts[failing].error
    assert "float32" in verdicts[failing].error
    assert [c for c, v in verdicts.items() if not v.passed and c in P.PRIMITIVES] == [failing]
    assert not verdicts["bn_relu"].passed  # every fused op uses these three primitives


# ----------------------------------------------------------------------------- auto skips a failing backend
def test_auto_skips_a_broken_backend_with_one_warning(fresh, monkeypatch):
    inject(monkeypatch, "broken", broken(bn_finalize=_wrong_bn_finalize))
    fallback = backend._auto_candidates(CPU)[1].name  # "cpu" when compiled, else "reference"
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        got = bn_relu_result()
        again = bn_relu_result(seed=1)
        backend.set_backend("auto")  # a new table: the verdict is kept for the process, no second warning
        assert backend.resolve("bn_finalize", CPU) == fallback
        assert backend.resolve("bn_stats", CPU) == "broken"  # passed its checks: still used
    (warning,) = warnings_of(records, "broken")
    message = str(warning.message)
    assert "bn_finalize" in message and "error" in message and "RESNET_FAST_SELF_CHECK=0" in message
    assert fresh == ["broken"]
    for a, b in zip(got + again, reference_result() + reference_result(seed=1)):
        torch.testing.assert_close(a, b)


def test_auto_skips_a_raising_backend(fresh, monkeypatch):
    inject(monkeypatch, "raising", broken(bn_stats=_raising_bn_stats))
    with pytest.warns(RuntimeWarning, match=r"backend 'raising'.*bn_stats: .*RuntimeError: boom"):
        got = bn_relu_result()
    assert backend.resolve("bn_stats", CPU) != "raising"
    for a, b in zip(got, reference_result()):
        torch.testing.assert_close(a, b)


def test_a_failing_fused_op_skips_every_primitive():
    """A fused op failing while every primitive passes cannot be pinned on one: the backend is skipped for
    all of them; with a failing primitive, only that one."""
    verdicts = {c: self_check.Verdict("b", c, "boom" if c == "squeeze_excite" else "") for c in self_check.CHECKS}
    skipped, first = backend._failed_primitives(verdicts)
    assert skipped == list(P.PRIMITIVES) and first == "squeeze_excite: boom"
    verdicts["bn_stats"] = self_check.Verdict("b", "bn_stats", "bad")  # explains the fused failure
    assert backend._failed_primitives(verdicts) == (["bn_stats"], "bn_stats: bad")


def test_forced_backend_is_not_checked(fresh, monkeypatch):
    """set_backend("cpu") / ("reference"): the user chose; no check runs."""
    inject(monkeypatch, "broken", broken(bn_finalize=_wrong_bn_finalize))
    with selected_backend("reference"):
        bn_relu_result()
    assert fresh == []


# ----------------------------------------------------------------------------- the verdict is cached
def test_verdict_is_cached_per_process_and_on_disk(fresh, monkeypatch, tmp_path):
    table = broken(bn_finalize=_wrong_bn_finalize)
    inject(monkeypatch, "broken", table)
    with pytest.warns(RuntimeWarning):
        backend.primitives(CPU)
    assert fresh == ["broken"]
    backend.set_backend("auto")
    backend.primitives(CPU)  # a second resolution in this process: no second run
    assert fresh == ["broken"]
    (path,) = (tmp_path / "self_check").glob("broken-*.json")
    monkeypatch.setattr(backend, "_verdicts", {})  # as a new process would start: read from the cache folder
    monkeypatch.setattr(backend, "_warned", set())
    backend.set_backend("auto")
    with pytest.warns(RuntimeWarning, match="bn_finalize"):  # a new process warns again (once)
        assert backend.resolve("bn_finalize", CPU) != "broken"
    assert fresh == ["broken"]
    assert self_check.verdict("broken", table, CPU)["bn_finalize"].error  # the stored verdict, not a rerun
    assert fresh == ["broken"]


def test_cache_key_changes_with_versions(monkeypatch):
    key = self_check.cache_key("cuda", CPU)
    assert {"device", "extension", "sources", "torch", "triton"} <= set(key)
    monkeypatch.setattr(torch, "__version__", "99.0.0")
    assert self_check.cache_key("cuda", CPU) != key
    monkeypatch.undo()
    if key["triton"] is not None:
        import triton

        monkeypatch.setattr(triton, "__version__", "99.0.0")
        assert self_check.cache_key("cuda", CPU) != key
        monkeypatch.undo()
    monkeypatch.setattr(self_check, "_device_name", lambda device: "NVIDIA H200")
    assert self_check.cache_key("cuda", CPU) != key
    monkeypatch.setattr(self_check, "_extension_build", lambda: "/elsewhere/_C.so:1:2")
    other = self_check.cache_key("cuda", CPU)
    assert self_check._cache_path(other) != self_check._cache_path(key)
    assert self_check.cache_key("triton", CPU) != self_check.cache_key("cuda", CPU)


def test_stored_verdict_of_another_key_is_ignored(fresh, tmp_path):
    key = self_check.cache_key("broken", CPU)
    verdicts = {c: self_check.Verdict("broken", c, "") for c in self_check.CHECKS}
    path = self_check._cache_path(key)
    self_check._store(path, key, verdicts, 0.1)
    assert self_check._load(path, key) == verdicts
    assert self_check._load(path, dict(key, torch="99.0.0")) is None


# ----------------------------------------------------------------------------- turning it off, deferring it
def test_env_var_turns_the_check_off(fresh, monkeypatch):
    monkeypatch.setenv("RESNET_FAST_SELF_CHECK", "0")
    inject(monkeypatch, "broken", broken(bn_finalize=_wrong_bn_finalize))
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        assert backend.resolve("bn_finalize", CPU) == "broken"
    assert fresh == [] and not warnings_of(records, "broken")


def test_check_is_deferred_where_it_cannot_run(fresh, monkeypatch):
    """Inside a CUDA graph capture (the check synchronizes): the backend is used unchecked, the table is not
    kept, and the first call outside runs the check."""
    inject(monkeypatch, "broken", broken(bn_finalize=_wrong_bn_finalize))
    monkeypatch.setattr(backend, "_cannot_check_now", lambda device: True)
    assert backend.primitives(CPU).bn_finalize is _wrong_bn_finalize
    assert fresh == [] and (CPU.type, CPU.index) not in backend._tables
    monkeypatch.setattr(backend, "_cannot_check_now", lambda device: False)
    with pytest.warns(RuntimeWarning, match="broken"):
        assert backend.primitives(CPU).bn_finalize is not _wrong_bn_finalize
    assert fresh == ["broken"]


# ----------------------------------------------------------------------------- python -m resnet_fast.info --check
def run_info(*args, **env):
    return subprocess.run([sys.executable, "-m", "resnet_fast.info", *args], capture_output=True, text=True,
                          timeout=900, cwd=REPO, env=dict(os.environ, **env))


def test_info_check_passes_and_prints_the_table():
    """The full check (four dtypes, both layouts) of the backends usable here; Triton's interpreter is left
    out (test_triton_primitives.py and test_triton_ops.py check those kernels), so it is listed as skipped."""
    result = run_info("--check", TRITON_INTERPRET="0")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for check in self_check.CHECKS:
        (row,) = [line for line in out.splitlines() if line.split()[:1] == [check]]
        assert "FAIL" not in row and "pass" in row, row
    assert "reference" in out and "skipped triton" in out and "self-check: all passed" in out


def test_info_help_names_the_flag():
    """benchmarks/gpu_run.sh runs `info --check` only when `info --help` mentions --check."""
    result = run_info("--help")
    assert result.returncode == 0 and "--check" in result.stdout


# ----------------------------------------------------------------------------- the GPU backends
@pytest.mark.slow
def test_triton_passes_under_the_interpreter():
    """The Triton kernels' full check on CPU tensors through the interpreter (about 40 s on 2 busy cores)."""
    usable, why = backend.backend_status()["triton"]
    if not usable or torch.cuda.is_available():
        pytest.skip(why or "a GPU is present: test_auto_checks_the_gpu_backends checks Triton there")
    from _triton_compat import installed_problem

    if installed_problem() is not None:
        pytest.skip(installed_problem())
    verdicts = self_check.check_backend("triton", backend.table_of("triton"), CPU)
    assert all(v.passed for v in verdicts.values()), {c: v.error for c, v in verdicts.items() if not v.passed}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_checks_the_gpu_backends(monkeypatch, tmp_path):
    """On CUDA, auto checks its candidates before their first use: they pass, and once the kernels are
    compiled the check takes well under a second per backend."""
    import time

    monkeypatch.setenv("RESNET_FAST_CACHE", str(tmp_path))
    monkeypatch.delenv(self_check.ENV, raising=False)
    device = torch.device("cuda", torch.cuda.current_device())
    candidates = [c for c in backend._auto_candidates(device) if c.self_check]
    for candidate in candidates:
        self_check.check_backend(candidate.name, candidate.table, device)  # compiles the Triton kernels
        start = time.perf_counter()
        verdicts = self_check.check_backend(candidate.name, candidate.table, device)
        seconds = time.perf_counter() - start
        assert all(v.passed for v in verdicts.values()), {c: v.error for c, v in verdicts.items() if not v.passed}
        assert seconds < 1.0, f"{candidate.name}: the self-check took {seconds:.2f} s"
    monkeypatch.setattr(backend, "_verdicts", {})
    with selected_backend("auto"), warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        backend.primitives(device)
    assert not [w for w in records if "failed its self-check" in str(w.message)]
    assert {name for name, *_ in backend._verdicts} <= {c.name for c in candidates}
    if candidates:
        assert list((tmp_path / "self_check").glob("*.json"))


def test_first_use_inside_torch_compile_runs_the_check_eagerly(fresh, monkeypatch):
    """The first resolution inside torch.compile: Dynamo calls the check for real (assume_constant_result),
    so the compiled graph never holds the broken primitive, and the result is the reference's."""
    calls = []

    def counted_wrong(*args):
        calls.append(1)
        return _wrong_bn_finalize(*args)

    inject(monkeypatch, "broken", broken(bn_finalize=counted_wrong))
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    compiled = torch.compile(lambda x: ops.bn_relu(x, None, None, None, None, training=True), fullgraph=True,
                             backend="eager")
    with pytest.warns(RuntimeWarning, match="backend 'broken'"):
        out = compiled(x)
    calls.clear()  # the check itself called it
    out = compiled(x)
    out.sum().backward()
    assert calls == [] and fresh == ["broken"]
    with selected_backend("reference"):
        torch.testing.assert_close(out, ops.bn_relu(x, None, None, None, None, training=True))


def _first_call(context):
    x = torch.randn(2, 3, 4, 4)
    bn_relu = lambda x: ops.bn_relu(x, None, None, None, None, training=True)  # noqa: E731
    if context == "inference_mode":
        with torch.inference_mode():
            bn_relu(x)
    elif context == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bn_relu(x.requires_grad_())
    elif context == "torch.func.grad":
        torch.func.grad(lambda x: bn_relu(x).sum())(x)
    else:  # vmap
        torch.func.vmap(lambda xi: bn_relu(xi[None]))(x)


@pytest.mark.parametrize("context", ["inference_mode", "autocast", "torch.func.grad", "vmap"])
def test_first_use_in_any_context(fresh, monkeypatch, context):
    """The first use may come under inference_mode, autocast or a torch.func transform: the check runs
    plain eager autograd anyway and reaches the same verdict."""
    inject(monkeypatch, "broken", broken(bn_finalize=_wrong_bn_finalize))
    with pytest.warns(RuntimeWarning, match="backend 'broken'"):
        _first_call(context)
    failed = sorted(c for c, v in backend._verdicts["broken", "cpu", None].items() if not v.passed)
    assert failed == sorted(("bn_finalize",) + self_check.FUSED_OPS)


def test_info_check_exits_1_on_a_failure(fresh, monkeypatch, capsys):
    """A backend whose bn_finalize is wrong: FAIL in the table, the error below it, exit status 1."""
    from resnet_fast import info

    target = "cpu" if backend.backend_status()["cpu"][0] else "reference"
    table_of = backend.table_of
    monkeypatch.setattr(backend, "table_of", lambda name: broken(bn_finalize=_wrong_bn_finalize) if name == target
                        else table_of(name))
    status = dict(backend.backend_status(), triton=(False, "left out by this test (slow under the interpreter)"))
    monkeypatch.setattr(backend, "backend_status", lambda: status)
    assert info.main(["--check"]) == 1
    out = capsys.readouterr().out
    (row,) = [line for line in out.splitlines() if line.split()[:1] == ["bn_finalize"]]
    assert "FAIL" in row
    assert f"FAIL {target} bn_finalize: float32 contiguous" in out and "failed" in out.splitlines()[-1]
