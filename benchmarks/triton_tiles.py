"""Time the Triton primitives' candidate tiles on this GPU and write resnet_fast/kernels/triton/tile_table.json.

    python benchmarks/triton_tiles.py resnet_fast/kernels/triton/tile_table.json [--batch 64] [--quick]

The only place where the Triton launch parameters are timed (the primitives themselves never autotune:
their summation order, and so their bits, must not depend on timing; see _tiles.py). For each key of
_tiles.table_key at ResNet-50 shapes (kernel, dtype, layout, flags, C, H*W) it times the rule's tile and
every _tiles.candidates tile through the real launcher (triton.testing.do_bench, median), and writes the
fastest when it beats the rule by more than 3 % (else the rule stays in charge: no entry). The merges keep
the rule's tile (they move O(N*S*C) bytes). Needs a GPU; not run in CI. Ship the table by committing it.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import sys

import torch

RESNET50 = [(64, 56), (256, 56), (128, 28), (512, 28), (256, 14), (1024, 14), (512, 7), (2048, 7)]
QUICK = [(256, 56), (1024, 14), (2048, 7)]
# the flag sets ResNet uses: conv-bn-relu, block tail with identity, block tail with a BN'd downsample
FWD_FLAGS = [dict(HAS_RES=False, RES_AFFINE=False, RELU=True), dict(HAS_RES=True, RES_AFFINE=False, RELU=True),
             dict(HAS_RES=True, RES_AFFINE=True, RELU=True)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="three shapes instead of ResNet-50's eight")
    args = parser.parse_args()
    if not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("triton_tiles: needs a CUDA device and TRITON_INTERPRET unset; nothing timed")
        return 0
    import triton
    from triton.testing import do_bench

    from resnet_fast.kernels.triton import _launch, _tiles
    ssa = importlib.import_module("resnet_fast.kernels.triton.scale_shift_act")
    bwd = importlib.import_module("resnet_fast.kernels.triton.scale_shift_act_backward")
    stats = importlib.import_module("resnet_fast.kernels.triton.bn_stats")

    entries, log = {}, []
    for dtype in (torch.bfloat16, torch.float32):
        for memory_format, channels_last in ((torch.channels_last, True), (torch.contiguous_format, False)):
            for c, h in (QUICK if args.quick else RESNET50):
                y = torch.randn(args.batch, c, h, h, device="cuda", dtype=dtype).contiguous(memory_format=memory_format)
                r, g = torch.randn_like(y), torch.randn_like(y)
                k = torch.rand(args.batch, c, device="cuda") + 0.5
                kc = torch.rand(c, device="cuda")
                if dtype == torch.float64:
                    k, kc = k.double(), kc.double()
                calls = []  # (kernel, flags, launcher call)
                for f in FWD_FLAGS:
                    res = r if f["HAS_RES"] else None
                    rs = (kc, kc) if f["RES_AFFINE"] else (None, None)
                    calls.append(("scale_shift_act", f, lambda res=res, rs=rs: ssa.scale_shift_act_launcher(
                        y, k, k, res, *rs, True)))
                    for res_sum in ((False, True) if res is not None else (False,)):
                        rf = dict(f, RES_SUM=res_sum)
                        calls.append(("ssa_bwd_reduce_partial", rf, lambda res=res, rs=rs, s=res_sum:
                                      bwd.scale_shift_act_backward_reduce_launcher(
                                          g, y, k, k, res, *rs, True, kc, kc if s else None)))
                    for res_grad in ((False, True) if res is not None else (False,)):
                        af = dict(f, RES_GRAD=res_grad)
                        extra = (kc, kc, kc, kc) if res_grad else (None, None, None, None)
                        calls.append(("ssa_bwd_apply", af, lambda res=res, rs=rs, e=extra:
                                      bwd.scale_shift_act_backward_apply_launcher(
                                          g, y, k, k, res, *rs, True, k, k, kc, kc, *e)))
                calls.append(("bn_stats_partial", {}, lambda: stats.bn_stats_launcher(y)))
                for kernel, flags, call in calls:
                    key = _tiles.table_key(kernel, dtype, channels_last, flags, c, h * h)
                    rule = _tiles.rule(kernel, dtype, channels_last, flags, c, h * h)
                    times = {}
                    for tile in dict.fromkeys([rule, *_tiles.candidates(kernel, dtype, channels_last)]):
                        _tiles._TABLE[key] = tile
                        _launch.clear()  # the launchers keep their plans (tiles included) per input signature
                        try:
                            times[tile] = do_bench(call, warmup=10, rep=50, return_mode="median")
                        except triton.runtime.errors.OutOfResources as error:
                            print(f"{key} {tuple(tile)}: {error}")
                    _tiles._TABLE.pop(key, None)
                    _launch.clear()
                    best = min(times, key=times.get)
                    gain = times[rule] / times[best] - 1
                    log.append(dict(key=key, rule=list(rule), best=list(best), gain=gain,
                                    ms={",".join(map(str, t)): ms for t, ms in times.items()}))
                    print(f"{key}: rule {tuple(rule)} {times[rule]:.4f} ms, best {tuple(best)} "
                          f"{times[best]:.4f} ms ({gain:+.1%})")
                    if best != rule and gain > 0.03:
                        entries[key] = list(best)
                del y, r, g
    table = {
        "tiles": entries,
        "measured": {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                     "triton": triton.__version__, "batch": args.batch, "date": datetime.date.today().isoformat(),
                     "command": " ".join(sys.argv)},
        "timings": log,
    }
    with open(args.output, "w") as f:
        json.dump(table, f, indent=1)
    print(f"wrote {args.output}: {len(entries)} entries override the rule")
    return 0


if __name__ == "__main__":
    sys.exit(main())
