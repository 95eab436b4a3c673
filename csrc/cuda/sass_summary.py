"""Registers, spills and a static SASS summary of the kernels of one .cu file, without a GPU.

    python csrc/cuda/sass_summary.py csrc/cuda/bn_stats.cu --arch 90 [--kernel REGEX]

Compiles the file with the extension's nvcc flags (resnet_fast/_build_config.py) plus
``-Xptxas -v`` to a cubin for sm_<arch>, then for every kernel whose name matches REGEX prints
ptxas's registers / stack / spill stores / spill loads and, from ``cuobjdump -sass``, the
instruction counts that csrc/cuda/NOTES.md uses for its per-element estimates: the code outside
loops (up to the first CALL target: the division slow path), and each loop (a backward BRA's
target up to the branch) with its size. Needs nvcc (CUDA_HOME) and cuobjdump (CUDA's, or the
copy bundled with Triton).
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _build_config():
    spec = importlib.util.spec_from_file_location("_build_config", os.path.join(ROOT, "resnet_fast", "_build_config.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # by path: importing resnet_fast would JIT-build the extension
    return module


def _cuobjdump(cuda_home: str) -> str:
    for candidate in [os.path.join(cuda_home, "bin", "cuobjdump"), shutil.which("cuobjdump")]:
        if candidate and os.path.exists(candidate):
            return candidate
    import triton  # its NVIDIA backend ships cuobjdump

    found = glob.glob(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))
    if not found:
        sys.exit("cuobjdump not found (CUDA_HOME/bin, PATH, or triton/backends/nvidia/bin)")
    return found[0]


def compile_cubin(source: str, arch: str, out: str) -> str:
    """nvcc -cubin with the extension's flags; returns ptxas's -v report."""
    bc = _build_config()
    cuda_home = bc.find_cuda_home()
    if cuda_home is None:
        sys.exit("nvcc not found (set CUDA_HOME)")
    import torch.utils.cpp_extension as ext

    _, kwargs, _, _ = bc.extension_sources(ROOT, with_cuda=True)
    flags = kwargs["extra_compile_args"]["nvcc"] + [f"-D{k}={v}" for k, v in kwargs.get("define_macros", [])]
    includes = [f"-I{p}" for p in ext.include_paths("cuda")] + [f"-I{sysconfig.get_paths()['include']}"]
    cmd = [os.path.join(cuda_home, "bin", "nvcc"), "-cubin", "-std=c++20", "--expt-relaxed-constexpr",
           "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
           "-D__CUDA_NO_HALF2_OPERATORS__", *flags, *includes, f"-gencode=arch=compute_{arch},code=sm_{arch}",
           "-Xptxas", "-v", source, "-o", out]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(run.stderr[-4000:])
    return run.stderr


def ptxas_report(text: str) -> dict[str, dict]:
    """kernel name -> {regs, stack, spill_st, spill_ld}."""
    report, name = {}, None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\S+)'", line)
        if m:
            name = m.group(1)
            report[name] = {}
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and name:
            report[name].update(stack=int(m.group(1)), spill_st=int(m.group(2)), spill_ld=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m and name:
            report[name]["regs"] = int(m.group(1))
    return report


def sass_functions(cubin: str, cuobjdump: str) -> dict[str, list[tuple[int, str]]]:
    out = subprocess.run([cuobjdump, "-sass", cubin], capture_output=True, text=True, check=True).stdout
    funcs, name = {}, None
    for line in out.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            name = m.group(1)
            funcs[name] = []
            continue
        m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if m and name:
            funcs[name].append((int(m.group(1), 16), m.group(2).strip()))
    return funcs


def loop_summary(ins: list[tuple[int, str]]):
    """(instructions outside loops, [(start, end, size) per loop], divisions (MUFU.RCP), shuffles)."""
    calls = [int(m.group(1), 16) for _, t in ins for m in [re.search(r"CALL\.\S+ (0x[0-9a-f]+)", t)] if m]
    end = min(calls) if calls else (ins[-1][0] + 16 if ins else 0)
    main = [(a, t) for a, t in ins if a < end and not t.startswith("NOP")]
    loops = []
    for a, t in main:
        m = re.search(r"BRA (?:`\(\.L_x_\d+\) )?(0x[0-9a-f]+)", t)
        if m and int(m.group(1), 16) <= a:
            start = int(m.group(1), 16)
            loops.append((start, a, sum(1 for b, _ in main if start <= b <= a)))
    in_loop = {b for start, a, _ in loops for b, _ in main if start <= b <= a}
    outside = sum(1 for b, _ in main if b not in in_loop)
    return outside, loops, sum("MUFU.RCP" in t for _, t in main), sum("SHFL" in t for _, t in main)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("--arch", default="90", help="80 or 90")
    parser.add_argument("--kernel", default="", help="regex on the mangled kernel name")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "k.cubin")
        report = ptxas_report(compile_cubin(args.source, args.arch, cubin))
        funcs = sass_functions(cubin, _cuobjdump(_build_config().find_cuda_home() or ""))
    for name in sorted(report):
        if not re.search(args.kernel, name):
            continue
        r = report[name]
        outside, loops, rcp, shfl = loop_summary(funcs.get(name, []))
        short = re.sub(r"_GLOBAL__N__\w+?_cu_[0-9a-f]+_\d+", "", name)
        print(f"sm_{args.arch} {short}\n    regs {r.get('regs')}, stack/spill st/ld {r.get('stack')}/{r.get('spill_st')}/"
              f"{r.get('spill_ld')}; SASS outside loops {outside}, loops {[(hex(s), z) for s, _, z in loops]}, "
              f"MUFU.RCP {rcp}, SHFL {shfl}")


if __name__ == "__main__":
    main()
