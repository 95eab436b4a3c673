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
PHASES = ["preflight", "build", "info", "env_report", "info_check", "tests", "conv_layers", "models", "ops_stage",
          "primitives", "ops_rest", "summary"]


def _dry_run(tmp_path, **extra):
    env = dict(os.environ, PYTHON=sys.executable, RESNET_FAST_BENCH_BUDGET_S="60", **extra)
    for name in ("PHASES", "RESNET_FAST_GPU_RUN_SKIP"):  # the defaults unless the test sets them
        if name not in extra:
            env.pop(name, None)
    start = time.monotonic()
    done = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "gpu_run.sh"), str(tmp_path / "out")], env=env,
                          capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - start
    log = (tmp_path / "out" / "run.log").read_text()
    lines = [json.loads(line) for line in (tmp_path / "out" / "status.jsonl").read_text().splitlines()]
    return done, seconds, log, lines


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: gpu_run.sh would do the real run")
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_run_dry_run_without_gpu(tmp_path):
    done, seconds, log, lines = _dry_run(tmp_path)
    assert done.returncode == 3, f"expected exit 3 (no GPU), got {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert seconds < 60, f"the no-GPU path should fail fast, took {seconds:.0f} s"
    states = {line["phase"]: line["state"] for line in lines}
    assert [line["phase"] for line in lines] == PHASES, lines
    assert states["preflight"] == "no_gpu"
    assert all(state == "no_gpu" for name, state in states.items() if name != "preflight"), states
    assert "preflight: no GPU" in log and "] FAIL" not in log, log
    # what each phase would run is named, so the dry run shows the real commands (GPU test files only)
    assert "tests/test_cuda_primitives.py tests/test_triton_primitives.py tests/test_triton_ops.py" in log
    assert "--maxfail" in log and "resnet_fast.info" in log
    # the edge-case tests join the GPU tests once their file exists
    edge = os.path.exists(os.path.join(REPO, "tests", "test_cuda_edge_cases.py"))
    assert ("tests/test_cuda_edge_cases.py" in log) == edge
    # the convolution layers write the conv table into the output folder
    assert "benchmarks/conv_layers.py" in log and "--table" in log and "conv_table.json" in log
    assert 'not compile_max and not low_memory and not rf_triton_conv' in log


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: gpu_run.sh would do the real run")
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_run_issue20_preset_and_skips(tmp_path):
    """The issue-20 selections: tests left out by RESNET_FAST_GPU_RUN_SKIP, only the conv layers, the models
    and the opt-in max-autotune phase (its eager baseline beside it)."""
    done, _, log, lines = _dry_run(tmp_path, RESNET_FAST_GPU_RUN_SKIP="tests",
                                   PHASES="conv_layers models models_compile_max")
    assert done.returncode == 3, f"{done.stdout}\n{done.stderr}"
    states = {line["phase"]: line["state"] for line in lines}
    assert [line["phase"] for line in lines] == ["preflight", "build", "info", "env_report", "info_check", "tests",
                                                 "conv_layers", "models", "models_compile_max", "summary"], lines
    assert states["tests"] == "skipped" and states["build"] == "no_gpu" and states["models_compile_max"] == "no_gpu"
    assert "SKIP tests: in RESNET_FAST_GPU_RUN_SKIP" in log and "] FAIL" not in log
    assert "train and (eager or compile_max)" in log
