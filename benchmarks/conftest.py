"""pytest configuration of the benchmarks: --smoke, threads, cuDNN, backend restore, JSON metadata.

Run from the repository root, e.g.
    pytest benchmarks --smoke --benchmark-disable          # CI: tiny shapes, checks only
    pytest benchmarks/test_ops.py --benchmark-json=ops.json

benchmarks/ is deliberately not a package: pytest puts this folder (not the repository
root) on sys.path, so the helpers import as top-level ``bench_*`` / ``memory`` modules and
``import resnet_fast`` finds the installed package, compiled extension included, rather
than the source tree (add the root to PYTHONPATH to benchmark a checkout instead).
"""
from __future__ import annotations

import os
import signal
import sys

import pytest


def pytest_addoption(parser):
    parser.addoption("--smoke", action="store_true", default=False,
                     help="resnet_fast benchmarks: tiny shapes, one round, no torch.compile, outputs "
                          "asserted against eager (same as RESNET_FAST_BENCH_SMOKE=1)")


def pytest_configure(config):
    # Before the test modules import benchmarks.config (collection reads the settings).
    disabled = config.getoption("benchmark_disable", default=False)
    if config.getoption("smoke") or (disabled and "RESNET_FAST_BENCH_SMOKE" not in os.environ):
        os.environ["RESNET_FAST_BENCH_SMOKE"] = "1"
    import torch

    import bench_config
    import bench_harness

    s = bench_config.settings()
    if s.device == "cpu":
        torch.set_num_threads(s.threads)
    else:
        torch.backends.cudnn.benchmark = True  # every contender gets the autotuned convolutions
    bench_harness.configure_dynamo()
    # `timeout` (the run scripts' time budget) sends SIGTERM: stop like Ctrl-C, so that the
    # session ends normally and pytest-benchmark still writes the JSON of what finished.
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    """Drop a benchmark interrupted before its first round (no data): pytest-benchmark would
    fail to write the JSON of all the others (min() of an empty sequence). Runs before
    pytest-benchmark's own hookwrapper, which saves the JSON."""
    bench_session = getattr(session.config, "_benchmarksession", None)
    if bench_session is not None:
        bench_session.benchmarks[:] = [b for b in bench_session.benchmarks if b.stats and b.stats.data]
    yield


def pytest_report_header(config):
    import bench_config

    s = bench_config.settings()
    env = bench_config.environment()
    lines = [f"resnet_fast benchmarks: device={env['device_name']} torch={env['torch']} dtype={env['dtype']} "
             f"cpu_kernels={env['cpu_kernels']} smoke={s.smoke}",
             f"  contenders: ops={s.op_contenders()}  models(resnet50 infer)={s.model_contenders('resnet50', 'infer')}"]
    lines += [f"  backend {name} not used: {why}" for name, why in s.backend_why_not.items()
              if not why.startswith("not a ")]
    return lines


@pytest.fixture
def settings():
    import bench_config

    return bench_config.settings()


@pytest.fixture
def restore_backend():
    """Tests call resnet_fast.set_backend (and set_conv_backend); put the previous selections back afterwards."""
    import resnet_fast

    previous, previous_conv = resnet_fast.get_backend(), resnet_fast.get_conv_backend()
    yield resnet_fast.set_backend
    resnet_fast.set_backend(previous)
    resnet_fast.set_conv_backend(previous_conv)


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Run-level facts for summarize.py: command, device, versions, settings."""
    import bench_config

    s = bench_config.settings()
    output_json["resnet_fast"] = {
        "command": " ".join(["pytest", *sys.argv[1:]]),
        **bench_config.environment(),
        "backends": list(s.backends),
        "conv_backends": list(s.conv_backends),
        "backend_why_not": s.backend_why_not,
        "op_batch": s.op_batch,
        "model_batch": s.model_batch,
        "image": s.image,
    }
