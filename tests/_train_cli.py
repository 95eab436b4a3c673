"""Run the entry points as a user does: a fresh ``python -m ...`` of the package under test.

From outside the repository, so that the child imports the same resnet_fast as the tests (the
installed one, or the source tree when PYTHONPATH names it) and never an unbuilt source tree."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import resnet_fast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(module: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(resnet_fast.__file__)))
    env = dict(os.environ)
    if package_parent == ROOT:  # testing the source tree: the child must find it too
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", module, *args], cwd=tempfile.gettempdir(), env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_usage_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit status 2, one line on stderr naming ``fragments``, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
