"""The Triton primitives compile to sm_80 and sm_90 cubins, without register spills, with 16-byte accesses.

No GPU needed: tests/_cubin.py's fake-target driver makes Triton compile for a GPU this machine does not
have (ptxas included). The compiles run in a subprocess of their own, because the rest of the suite sets
TRITON_INTERPRET=1 before triton is imported, and interpreted kernels cannot be compiled.

What is compiled (``plan()``), to keep CI near a minute on two cores:
  * sm_90: every kernel x dtype x layout, with all its constexpr flags on (the most registers) and all
    off, at the largest tile the rule (resnet_fast/kernels/triton/_tiles.py) can pick for it; sm_80: the
    same with the flags on; the merges per accumulation dtype (and RES_SUM) on both;
  * sm_90, float32 and float64, flags on: every other tile the rule can pick (each C / H*W range);
  * every entry of a shipped tile_table.json, if there is one.
Left out: the intermediate flag combinations (e.g. a residual without its affine), the smaller tiles of
the 2-byte dtypes and on sm_80, the flags-off variants on sm_80. ``RESNET_FAST_CUBIN_ALL=1`` compiles all
of them (1,872 compiles); NOTES.md beside the kernels says what such a run found.

Checks: no compile error, no spill (ptxas -v), and on channels_last paths at least as many 16-byte
ld.global / st.global instructions as one tile's activation traffic needs (a narrower load would need
more, smaller instructions: the count of 16-byte ones would fall short); likewise on NCHW paths whose
H*W is not a multiple of 16 elements (14 x 14) with VEC-element accesses (_common.nchw_vec: 16 bytes
for fp32, 8 for fp16/bf16; fp64 keeps 8-byte one-element accesses).
"""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

DTYPES = ("float16", "bfloat16", "float32", "float64")
ELEMENTWISE_FLAGS = {  # kernel -> the flag sets it is compiled with (each a dict of constexpr booleans)
    "scale_shift_act": [dict(HAS_RES=r, RES_AFFINE=a, RELU=u) for r, a, u in itertools.product((0, 1), (0, 1), (0, 1))
                        if r or not a],
    "ssa_bwd_apply": [dict(HAS_RES=r, RES_AFFINE=a, RELU=u, RES_GRAD=g)
                      for r, a, u, g in itertools.product((0, 1), (0, 1), (0, 1), (0, 1)) if r or not (a or g)],
}
REDUCE_FLAGS = {
    "bn_stats_partial": [{}],
    "ssa_bwd_reduce_partial": [dict(HAS_RES=r, RES_AFFINE=a, RELU=u, RES_SUM=s)
                               for r, a, u, s in itertools.product((0, 1), (0, 1), (0, 1), (0, 1))
                               if r or not (a or s)],
}
MERGE_FLAGS = {"bn_stats_merge": [{}], "ssa_bwd_reduce_merge": [dict(RES_SUM=0), dict(RES_SUM=1)],
               "bn_stats_combine": [{}], "ssa_bwd_reduce_combine": [{}]}
# The per-channel finalize kernels (bn_finalize.py): BLOCK_C channels per program, no tile rule.
FINALIZE_FLAGS = {"bn_finalize": [dict(HAS_WEIGHT=w, HAS_BIAS=b) for w, b in itertools.product((0, 1), (0, 1))],
                  "bn_backward_finalize": [dict(HAS_WEIGHT=w, USE_BATCH_STATS=u)
                                           for w, u in itertools.product((0, 1), (0, 1))]}
# (C, H*W) of each tile the rule picks: channels_last BLOCK_C follows C, NCHW BLOCK_HW follows H*W.
SHAPES = {
    True: [(2048, 49), (64, 3136), (32, 3136), (128, 784)],  # largest BLOCK_C first
    False: [(64, 3136), (256, 196), (512, 49), (128, 784), (64, 112 * 112), (96, 400), (96, 100)],
}


def _heaviest(flag_sets):
    return max(flag_sets, key=lambda f: sum(f.values()))


def _lightest(flag_sets):
    return min(flag_sets, key=lambda f: sum(f.values()))


def plan(everything: bool) -> list[tuple]:
    """(kernel, dtype, channels_last, flags, C, HW, arch) to compile; see the module docstring. Jobs whose
    rule tiles coincide are dropped by the worker."""
    jobs = []
    sets = {**ELEMENTWISE_FLAGS, **REDUCE_FLAGS}
    for kernel, flag_sets in sets.items():
        for dtype, channels_last, arch in itertools.product(DTYPES, (True, False), (90, 80)):
            shapes = SHAPES[channels_last]
            if everything:
                chosen, sizes = flag_sets, shapes
            else:
                chosen = [_heaviest(flag_sets)] + ([_lightest(flag_sets)] if arch == 90 else [])
                sizes = shapes if arch == 90 and dtype in ("float32", "float64") else shapes[:1]
            for flags in chosen:
                for c, hw in sizes:
                    jobs.append((kernel, dtype, channels_last, dict(flags), c, hw, arch))
    for kernel, flag_sets in MERGE_FLAGS.items():
        for dtype, flags, arch in itertools.product(("float32", "float64"), flag_sets, (90, 80)):
            jobs.append((kernel, dtype, True, flags, 256, 3136, arch))
    for kernel, flag_sets in FINALIZE_FLAGS.items():
        for dtype, flags, arch in itertools.product(("float32", "float64"), flag_sets, (90, 80)):
            jobs.append((kernel, dtype, False, flags, 256, 1, arch))
    return jobs


def _compile_finalize(_cubin, kernels, kernel, dtype_name, flags, arch) -> dict:
    """One finalize kernel (statistics in float32 or float64; the weight in float32)."""
    import torch

    a = torch.empty(64, dtype=getattr(torch, dtype_name))
    w = torch.empty(64, dtype=torch.float32)
    if kernel == "bn_finalize":
        args = (a, a, w, w, a, a, a, a, 256, 8, 1e-5, 1.0)
    else:
        args = (a, a, a, w, a, a, a, a, a, 256, 8, 8, 8, 100.0)
    name = f"{kernel}/{dtype_name}/{flags}/BLOCK_C=256"
    entry = dict(name=name, kernel=kernel, arch=arch, channels_last=False, tile=[256])
    try:
        report = _cubin.compile_kernel(kernels[kernel], args, grid=(1, 1, 1), arch=arch, num_warps=4,
                                       constexprs={**flags, "BLOCK_C": 256}, name=name)
    except Exception as error:  # reported by the test, with the kernel's name
        entry["error"] = f"{type(error).__name__}: {error}"[:2000]
        return entry
    entry.update(registers=report.registers, spill=report.spill_bytes, stack=report.stack, loads=report.loads,
                 loads16=0, stores16=0, need_loads16=0, need_stores16=0, row=report.row())
    return entry


# ----------------------------------------------------------------------------- worker (no interpreter)
def _compile_all(jobs) -> list[dict]:
    import importlib

    import torch

    import _cubin
    from resnet_fast.kernels.triton import _tiles

    # the modules (the package's names bn_stats, scale_shift_act are the primitives)
    bn_stats, scale_shift_act, scale_shift_act_backward, bn_finalize = (
        importlib.import_module(f"resnet_fast.kernels.triton.{name}")
        for name in ("bn_stats", "scale_shift_act", "scale_shift_act_backward", "bn_finalize"))

    kernels = {
        "scale_shift_act": scale_shift_act._scale_shift_act_fwd_kernel,
        "ssa_bwd_apply": scale_shift_act_backward._ssa_bwd_apply_kernel,
        "bn_stats_partial": bn_stats._bn_stats_partial_kernel,
        "ssa_bwd_reduce_partial": scale_shift_act_backward._ssa_bwd_reduce_partial_kernel,
        "bn_stats_merge": bn_stats._bn_stats_merge_kernel,
        "ssa_bwd_reduce_merge": scale_shift_act_backward._ssa_bwd_reduce_merge_kernel,
        "bn_stats_combine": bn_stats._bn_stats_combine_kernel,
        "ssa_bwd_reduce_combine": scale_shift_act_backward._ssa_bwd_reduce_combine_kernel,
        "bn_finalize": bn_finalize._bn_finalize_kernel,
        "bn_backward_finalize": bn_finalize._bn_backward_finalize_kernel,
    }
    table = [tuple(key.split("/")) for key in _tiles._TABLE]  # shipped entries, compiled as well
    for kernel, dtype, layout, flag_text, c, hw in table:
        flags = {k: int(v) for k, v in (f.split("=") for f in flag_text.split(",") if f)}
        for arch in (90, 80):
            jobs.append((kernel, dtype, layout == "nhwc", flags, int(c[2:]), int(hw[3:]), arch))

    results, seen = [], set()
    for kernel, dtype_name, channels_last, flags, c, hw, arch in jobs:
        if kernel in FINALIZE_FLAGS:
            results.append(_compile_finalize(_cubin, kernels, kernel, dtype_name, flags, arch))
            continue
        dtype = getattr(torch, dtype_name)
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        tile = _tiles.pick(kernel, dtype, channels_last, flags, c, hw)
        # NCHW: H*W and the n, c strides go in divided by VEC (the launchers' _common.nchw_vec)
        vec = 1 if channels_last or dtype.itemsize > 4 else min(16 // dtype.itemsize, hw & -hw)
        key = (kernel, dtype_name, channels_last, tuple(sorted(flags.items())), tuple(tile), vec, hw % (16 * vec) == 0,
               arch)
        if key in seen:  # another shape with the same tile: the same kernel (C, HW // VEC only specialize as % 16)
            continue
        seen.add(key)
        t = torch.empty(64, dtype=dtype)  # 64-byte aligned storage: like the GPU's 256-byte aligned allocations
        a = torch.empty(64, dtype=acc)
        # NCHW (n, c, hw) strides (C*HW, HW, 1); channels_last (HW*C, 1, C)
        strides = (hw * c, 1, c) if channels_last else (c * hw // vec, hw // vec, 1)
        constexprs = dict(BLOCK_C=tile.block_c, BLOCK_HW=tile.block_hw, VEC=vec)
        if kernel == "scale_shift_act":
            args = (t, t, t, a, a, a, a, c, hw // vec, *strides, *strides)
            tensors_in, tensors_out = 1 + flags["HAS_RES"], 1
        elif kernel == "ssa_bwd_apply":
            args = (t, t, t, t, t, *[a] * 12, c, hw // vec, *strides, *strides, *strides)
            tensors_in = 2 + (flags["HAS_RES"] and (flags["RELU"] or flags["RES_GRAD"]))
            tensors_out = 1 + flags["RES_GRAD"]
        elif kernel == "bn_stats_partial":
            args = (t, a, c, hw // vec, 256, *strides)
            tensors_in, tensors_out = 1, 0
        elif kernel == "ssa_bwd_reduce_partial":
            args = (t, t, t, *[a] * 7, c, hw // vec, 256, *strides, *strides, *strides)
            constexprs["STAGES"] = tile.num_stages
            tensors_in, tensors_out = 2 + (flags["HAS_RES"] and (flags["RELU"] or flags["RES_SUM"])), 0
        elif kernel == "bn_stats_merge":
            args = (a, a, a, 256, c, hw, 7, 512)
            constexprs = dict(BLOCK_N=tile.block_n, BLOCK_C=tile.block_c, BLOCK_S=8)
            tensors_in = tensors_out = 0
        elif kernel == "ssa_bwd_reduce_merge":
            args = (a, a, a, a, 256, c, 7)
            constexprs = dict(BLOCK_N=tile.block_n, BLOCK_C=tile.block_c, BLOCK_S=8)
            tensors_in = tensors_out = 0
        elif kernel == "bn_stats_combine":
            args = (a, a, a, 256, c, hw, 32, 8)
            constexprs = dict(BLOCK_B=tile.block_n, BLOCK_C=tile.block_c)
            tensors_in = tensors_out = 0
        else:  # ssa_bwd_reduce_combine
            args = (a, a, c, 32)
            constexprs = dict(BLOCK_B=tile.block_n, BLOCK_C=tile.block_c)
            tensors_in = tensors_out = 0
        name = f"{kernel}/{dtype_name}/{'nhwc' if channels_last else 'nchw'}/{flags}/C={c}/HW={hw}/{tuple(tile)}"
        entry = dict(name=name, kernel=kernel, arch=arch, channels_last=channels_last, tile=list(tile))
        try:
            report = _cubin.compile_kernel(kernels[kernel], args, grid=(1, 1, 1), arch=arch, num_warps=tile.num_warps,
                                           constexprs={**flags, **constexprs}, name=name)
        except Exception as error:  # reported by the test, with the kernel's name
            entry["error"] = f"{type(error).__name__}: {error}"[:2000]
            results.append(entry)
            continue
        # The widest activation access a tile allows: 16 bytes along channels_last's c; along an NCHW row
        # whose length is not a multiple of 16 elements, VEC elements (16 bytes for fp32 at 14 x 14, 8 for
        # 2-byte dtypes; nothing checked where VEC = 1: 7 x 7, fp64, or where H*W % 16 == 0).
        width = 16 if channels_last else (min(16, vec * dtype.itemsize) if vec > 1 and hw % 16 else 0)
        # accesses of that width one tile needs per thread, per activation tensor
        per_thread = tile.block_c * tile.block_hw * dtype.itemsize // (32 * tile.num_warps * width) if width else 0
        entry.update(registers=report.registers, spill=report.spill_bytes, stack=report.stack, width=width,
                     loads16=sum(k for b, k in report.loads.items() if width and b >= width),
                     stores16=sum(k for b, k in report.stores.items() if width and b >= width),
                     need_loads16=tensors_in * per_thread, need_stores16=tensors_out * per_thread,
                     loads=report.loads, row=report.row())
        results.append(entry)
    return results


def _worker(out_path: str, everything: bool) -> None:
    sys.path.insert(0, HERE)
    results = _compile_all(plan(everything))
    with open(out_path, "w") as f:
        json.dump(results, f, indent=1)


# ----------------------------------------------------------------------------- the test
def test_triton_primitives_compile_for_sm80_sm90_without_spills(tmp_path):
    pytest.importorskip("triton")
    out = tmp_path / "cubins.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([REPO, HERE] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("RESNET_FAST_JIT", "0")  # the Triton kernels need no C++ extension
    everything = os.environ.get("RESNET_FAST_CUBIN_ALL", "0") == "1"
    start = time.monotonic()
    done = subprocess.run([sys.executable, __file__, "--worker", str(out), "1" if everything else "0"], env=env,
                          capture_output=True, text=True, timeout=1800 if everything else 600)
    assert done.returncode == 0, f"cubin worker failed:\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}"
    results = json.loads(out.read_text())
    print(f"{len(results)} compiles in {time.monotonic() - start:.0f} s")
    for r in results:
        print(r.get("row") or r["name"])
    errors = [f"{r['name']} sm_{r['arch']}: {r['error']}" for r in results if "error" in r]
    assert not errors, "compile errors:\n" + "\n".join(errors)
    spills = [r["row"] for r in results if r["spill"] or r["stack"]]
    assert not spills, "register spills / stack frames:\n" + "\n".join(spills)
    narrow = [f"{r['row']} (needs >= {r['need_loads16']} {r['width']}-byte loads, {r['need_stores16']} stores)"
              for r in results if r.get("width")
              and (r["loads16"] < r["need_loads16"] or r["stores16"] < r["need_stores16"])]
    assert not narrow, "activation accesses narrower than the layout allows:\n" + "\n".join(narrow)
    assert {r["arch"] for r in results} == {80, 90}


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--worker":
    _worker(sys.argv[2], sys.argv[3] == "1")
