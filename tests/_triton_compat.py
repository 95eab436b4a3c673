"""Known breakages of the Triton interpreter by the versions around it (used by conftest.py to skip).

Triton < 3.7's interpreter fails with numpy >= 2.4: ``for k in range(...)`` over a 0-d array raises
"only 0-dimensional arrays can be converted to Python scalars" (triton-lang/triton#9171, fixed in 3.7).
torch 2.10 and 2.11, which the package supports, ship Triton 3.6; a pyproject marker cannot name
Triton's version, so the interpreter tests are skipped with this reason instead of failing, and the
fix for a user is ``pip install "numpy<2.4"`` (or Triton >= 3.7). GPU runs are unaffected.
"""
from __future__ import annotations

import re


def _major_minor(version: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def interpreter_problem(triton_version: str | None, numpy_version: str | None) -> str | None:
    """Why the Triton interpreter cannot run with these versions, or None when it can."""
    if triton_version is None or numpy_version is None:
        return None
    if _major_minor(triton_version) < (3, 7) and _major_minor(numpy_version) >= (2, 4):
        return (f"the Triton interpreter of Triton {triton_version} fails with numpy {numpy_version} "
                "(triton-lang/triton#9171, fixed in Triton 3.7): pip install 'numpy<2.4' to run these tests")
    return None


def installed_problem() -> str | None:
    """interpreter_problem for the installed triton and numpy."""
    from importlib import metadata

    def version(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return interpreter_problem(version("triton"), version("numpy"))
