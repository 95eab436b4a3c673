"""The Triton interpreter / numpy pairing check (tests/_triton_compat.py) that conftest.py skips by."""
import pytest

from _triton_compat import installed_problem, interpreter_problem


@pytest.mark.parametrize("triton_version, numpy_version, broken", [
    ("3.6.0", "2.4.0", True),     # torch 2.10 / 2.11's Triton with a recent numpy (triton-lang/triton#9171)
    ("3.6.0", "2.5.1", True),
    ("3.6.0", "2.3.5", False),
    ("3.5.1", "1.26.4", False),
    ("3.7.0", "2.4.0", False),    # fixed
    ("3.8.0+git1", "2.5.0", False),
    (None, "2.5.0", False),       # no triton: nothing to skip for
])
def test_interpreter_problem(triton_version, numpy_version, broken):
    reason = interpreter_problem(triton_version, numpy_version)
    assert (reason is not None) == broken
    if broken:
        assert "numpy<2.4" in reason and triton_version in reason


def test_installed_versions_are_checked():
    reason = installed_problem()  # this machine: whatever is installed; the answer must be consistent
    assert reason is None or "triton-lang/triton#9171" in reason
