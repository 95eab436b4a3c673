"""Dry run of benchmarks/gpu_run.sh on a machine without a GPU: the preflight finds none, fails fast, and
every later phase reaches its "no GPU" branch cleanly (after checking that what it would run exists).

On a GPU machine this would be the real multi-minute run, so the test is skipped there.
"""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASES = ["preflight", "build", "info", "env_report", "info_check", "tests", "models", "ops_stage", "primitives",
          "ops_rest", "summary"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: gpu_run.sh would do the real run")
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_run_dry_run_without_gpu(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, RESNET_FAST_BENCH_BUDGET_S="60")
    env.pop("PHASES", None)
    start = time.monotonic()
    done = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "gpu_run.sh"), str(tmp_path / "out")], env=env,
                          capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - start
    log = (tmp_path / "out" / "run.log").read_text()
    assert done.returncode == 3, f"expected exit 3 (no GPU), got {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert seconds < 60, f"the no-GPU path should fail fast, took {seconds:.0f} s"
    lines = [json.loads(line) for line in (tmp_path / "out" / "status.jsonl").read_text().splitlines()]
    states = {line["phase"]: line["state"] for line in lines}
    assert [line["phase"] for line in lines] == PHASES, lines
    assert states["preflight"] == "no_gpu"
    assert all(state == "no_gpu" for name, state in states.items() if name != "preflight"), states
    assert "preflight: no GPU" in log and "] FAIL" not in log, log
    # what each phase would run is named, so the dry run shows the real commands (GPU test files only)
    assert "tests/test_cuda_primitives.py tests/test_triton_primitives.py tests/test_triton_ops.py" in log
    assert "--maxfail" in log and "resnet_fast.info" in log
