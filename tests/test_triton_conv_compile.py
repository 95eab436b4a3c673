"""Every fused-convolution configuration compiles for sm_80 and sm_90, without a GPU, and its code is sound.

Runs resnet_fast.kernels.triton.conv.compile_check in a child process: the kernels must be compiled,
not interpreted, and triton reads TRITON_INTERPRET once at import (this test session may have set it
for the interpreter tests). The check fails a configuration on a compile or ptxas error, a register
spill, a main loop without tensor-core instructions (wgmma on sm_90, mma.sync on sm_80) or an activation
operand without 16-byte global loads. Registers, shared memory and spills per configuration are in
resnet_fast/kernels/triton/conv/NOTES.md.
"""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")
pytest.importorskip("triton.backends.nvidia.driver")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("dtypes", [("float16", "bfloat16"), ("float32",)], ids=["16-bit", "float32"])
def test_compile_every_configuration(tmp_path, dtypes):
    out = tmp_path / "records.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("RESNET_FAST_JIT", "0")  # the compile needs no C++ kernels
    result = subprocess.run([sys.executable, "-m", "resnet_fast.kernels.triton.conv.compile_check",
                             "--arch", "80", "90", "--dtype", *dtypes, "--json", str(out)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    records = json.loads(out.read_text())
    assert all(not r["problems"] for r in records)
    assert {r["arch"] for r in records} == {80, 90}
    labels = {r["config"] for r in records}
    for kernel in ("fwd", "dgrad", "wgrad"):
        for geometry in ("1x1s1", "1x1s2", "3x3s1", "3x3s2"):
            for dtype in dtypes:
                assert any(lb.startswith(f"{kernel} {geometry} ") and f" {dtype} " in lb for lb in labels), \
                    (kernel, geometry, dtype)
    assert any("bnrelu-prologue" in lb for lb in labels) and any("dbn-prologue+drelu-epilogue" in lb
                                                                   for lb in labels)
    assert any("recompute-a+recompute-dy" in lb for lb in labels)
