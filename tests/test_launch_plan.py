"""The CUDA kernels' launch planning, checked on the CPU: tests/cpp/test_launch_plan.cpp compiled with the
system C++ compiler against csrc/cuda/launch_plan.h, the header the .cu files take every offset from.

It simulates every thread of every launch (reductions and elementwise passes, both layouts, load widths
8/4/2/1 as the plan picks them for 16-byte, 8-byte and element-size alignment, the reduction ops' unrolls,
elementwise batches of 1/2/4 vectors, 108 and 132 SMs, one and several chunks) and checks that each
element is read once, each partial written once, each partial's count is the finalize's segment_count,
and the bn_stats shift is read from the segment's first values; it also runs the stage-2 lanes per
sample (every (n, s) partial merged once) and FastDiv against / and %. See the .cpp for the list. No
GPU, CUDA toolkit or torch headers involved.
"""
import os
import shutil
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CXX = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


@pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++ / c++ / $CXX)")
def test_launch_plan_covers_every_element_and_partial_once(tmp_path):
    binary = tmp_path / "test_launch_plan"
    build = subprocess.run([CXX, "-std=c++20", "-O2", "-Wall", "-Wextra", "-Wno-unknown-pragmas", "-Werror",
                            f"-I{os.path.join(REPO, 'csrc', 'cuda')}", os.path.join(HERE, "cpp", "test_launch_plan.cpp"),
                            "-o", str(binary)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "launch plan OK" in run.stdout
