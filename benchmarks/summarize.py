"""Turn pytest-benchmark JSON from benchmarks/ into a markdown table and two PNG plots.

    python benchmarks/summarize.py RESULTS.json [MORE.json ...] [--out benchmarks/results/NAME]
                                   [--merged ALL.json] [--interleaved interleaved-*.json ...]
                                   [--conv-layers conv_layers.json]

Writes NAME.md, NAME-models.png (img/s per model: eager, torch.compile, resnet_fast; training
and inference) and NAME-ops.png (op x stage heatmap of speed-ups over eager), default NAME:
benchmarks/results/<first JSON's stem>. Several
JSON files (e.g. the phases of gpu_run.sh) are merged first; ``--merged`` also saves the
merged JSON. Ratios compare rows of the same group (op, mode, shape / model, mode, batch):
"vs eager" = eager median / row median (above 1 = faster than eager), "vs compile" = the
fastest torch.compile contender's median / row median. ``--interleaved`` adds the tables of
benchmarks/interleaved.py runs and their rows to the goals (median of per-round ratios);
``--conv-layers`` the table of benchmarks/conv_layers.py (fused convolution layers against today's path)
and its goal.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections import defaultdict
from typing import Optional

TOL = {"fp32": 1e-4, "bf16 autocast": 3e-2}
# The goals: (device, model, mode, baseline) -> minimum speedup of the best resnet_fast row.
GOALS = {
    "cuda": [("resnet50", "train", "eager", 1.3), ("resnet50", "train", "compile", 1.1),
             ("resnet50", "infer", "eager", 1.5)],
    "cpu": [("resnet50", "train", "eager", 1.15), ("resnet50", "infer", "eager", 1.3)],
}
OP_COPY_GOAL = 0.8  # GPU: fused elementwise ops at >= 80% of copy bandwidth
CONV_GOAL = 1.15  # GPU: the bottlenecks' convolution layers, forward + backward, against today's path


def load(paths: list[str]) -> dict:
    merged = None
    by_key = {}
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        if merged is None:
            merged = {k: v for k, v in data.items() if k != "benchmarks"}
            merged["sources"] = []
        merged["sources"].append(os.path.basename(path))
        for b in data.get("benchmarks", []):
            by_key[(b.get("group"), b.get("extra_info", {}).get("contender"), b["fullname"])] = b
    if merged is None:
        raise SystemExit("summarize: no JSON given")
    merged["benchmarks"] = list(by_key.values())
    return merged


# ----------------------------------------------------------------------------- rows
def _rows(data: dict) -> list[dict]:
    rows = []
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        if "kind" not in info or "stats" not in b:
            continue
        rows.append({"group": b["group"], "median": b["stats"]["median"], "iqr": b["stats"].get("iqr", 0.0),
                     "rounds": b["stats"].get("rounds"), **info})
    copy_bw = {tuple(r["shape"]): r["bytes"] / r["median"] for r in rows if r["contender"] == "copy"}
    groups = defaultdict(list)
    for r in rows:
        groups[r["group"]].append(r)
    for members in groups.values():
        eager = next((r for r in members if r["contender"] == "eager"), None)
        compiled = [r["median"] for r in members if r["contender"].startswith("compile")]
        for r in members:
            r["vs_eager"] = eager["median"] / r["median"] if eager else None
            r["vs_compile"] = min(compiled) / r["median"] if compiled else None
            r["memory"] = r.get("peak_mem_bytes") if r.get("peak_mem_bytes") is not None else (
                r["saved_bytes"] if isinstance(r.get("saved_bytes"), (int, float)) else None)
            eager_mem = eager and (eager.get("peak_mem_bytes") if eager.get("peak_mem_bytes") is not None
                                   else eager.get("saved_bytes"))
            r["mem_vs_eager"] = (r["memory"] / eager_mem if r["memory"] and isinstance(eager_mem, (int, float))
                                 and eager_mem else None)
            if r["kind"] == "op" and r.get("bytes"):
                r["gbps"] = r["bytes"] / r["median"] / 1e9
                ceiling = copy_bw.get(tuple(r["shape"]))
                r["of_copy"] = (r["bytes"] / r["median"]) / ceiling if ceiling and r["contender"] != "copy" else None
    return rows


def _order(r: dict):
    contender_rank = ["eager", "compile", "compile_max"]
    c = r["contender"]
    return (contender_rank.index(c) if c in contender_rank else 3, c)


# ----------------------------------------------------------------------------- formatting
def _time(s: float) -> str:
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3f} ms"
    return f"{s * 1e6:.1f} µs"


def _bytes(n) -> str:
    if n is None:
        return ""
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _ratio(x) -> str:
    return "" if x is None else f"{x:.2f}x"


def _rate(value: float, unit: str) -> str:
    """3 significant digits with an SI prefix: 1.23 TB/s, 45.6 GFLOP/s."""
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def _throughput(r: dict) -> str:
    if r["kind"] == "model":
        return f"{r['images'] / r['median']:.1f} img/s"
    text = _rate(r["bytes"] / r["median"], "B/s") if r.get("bytes") else ""
    if r.get("flops"):
        text += f" · {_rate(r['flops'] / r['median'], 'FLOP/s')}"
    if r.get("of_copy") is not None:
        text += f" ({100 * r['of_copy']:.0f}% of copy)"
    return text


# Gradients of a training step in fp32 are ill-conditioned (training-mode BN over few values per
# channel): torch.compile of the same eager code differs from eager by up to ~1e-1 on some
# parameter. Where a compile row exists, an error within this factor of compile's is not flagged.
COMPILE_ERR_FACTOR = 3.0


def _err(r: dict, dtype: str, members: list[dict]) -> str:
    err = r.get("rel_err")
    if err is None or r["contender"] in ("eager", "copy"):
        return ""
    compiled = [m["rel_err"] for m in members if m["contender"].startswith("compile") and m.get("rel_err")]
    bound = max([TOL.get(dtype, 1e-4)] + [COMPILE_ERR_FACTOR * e for e in compiled])
    return f"{err:.1e}{' ⚠' if err > bound else ''}"


def _table(rows: list[dict], dtype: str, memory_label: str) -> list[str]:
    lines = [f"| benchmark | contender | median | throughput | vs eager | vs compile | {memory_label} | "
             "mem vs eager | rel. err |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    groups = defaultdict(list)
    for r in rows:
        groups[r["group"]].append(r)
    for group, members in groups.items():
        for i, r in enumerate(sorted(members, key=_order)):
            lines.append(f"| {group if i == 0 else ''} | {r['contender']} | {_time(r['median'])} | {_throughput(r)} | "
                         f"{_ratio(r['vs_eager'])} | {_ratio(r['vs_compile'])} | {_bytes(r['memory'])} | "
                         f"{_ratio(r['mem_vs_eager'])} | {_err(r, dtype, members)} |")
    return lines


def _goals(rows: list[dict], device: str) -> list[str]:
    lines = ["| goal | target | measured | met |", "|---|---:|---:|---|"]
    found = False
    for model, mode, baseline, target in GOALS.get(device, []):
        rf = [r for r in rows if r["kind"] == "model" and r.get("model") == model and r["mode"] == mode
              and r["contender"].startswith("rf_") and r.get(f"vs_{baseline}") is not None]
        if not rf:
            continue
        best = max(rf, key=lambda r: r[f"vs_{baseline}"])
        value = best[f"vs_{baseline}"]
        found = True
        lines.append(f"| {model} {mode} vs {baseline} ({best['contender']}) | ≥{target}x | {value:.2f}x | "
                     f"{'yes' if value >= target else 'no'} |")
    if device == "cuda":
        fractions = defaultdict(list)
        for r in rows:
            if r["kind"] == "op" and r["contender"].startswith("rf_") and r.get("of_copy") is not None:
                fractions[(r["group"])].append(r["of_copy"])
        best = sorted(max(v) for v in fractions.values())
        if best:
            found = True
            worst, median = best[0], best[len(best) // 2]
            lines.append(f"| fused elementwise ops, fraction of copy bandwidth (median / worst row) | "
                         f"≥{100 * OP_COPY_GOAL:.0f}% | {100 * median:.0f}% / {100 * worst:.0f}% | "
                         f"{'yes' if worst >= OP_COPY_GOAL else 'no'} |")
    return lines if found else []


def interleaved_goals(results: list[dict], device: str) -> list[str]:
    """Goal rows (no header) from interleaved.py results: the best resnet_fast contender's
    median per-round ratio to ``baseline``."""
    lines = []
    for model, mode, baseline, target in GOALS.get(device, []):
        for result in results:
            if (result.get("model"), result["mode"]) != (model, mode):  # (op runs have no model)
                continue
            times = {r["contender"]: r["times_s"] for r in result["rows"]}
            base = [c for c in times if c == baseline or (baseline == "compile" and c.startswith("compile"))]
            rf = [c for c in times if c.startswith("rf_")]
            if not base or not rf:
                continue

            def ratio(c):  # the fastest baseline contender, per round
                return statistics.median(min(b) / t for *b, t in zip(*(times[x] for x in base), times[c]))
            best = max(rf, key=ratio)
            value = ratio(best)
            lines.append(f"| {model} {mode} vs {baseline} ({best}, interleaved) | ≥{target}x | {value:.2f}x | "
                         f"{'yes' if value >= target else 'no'} |")
    return lines


def conv_goals(conv: Optional[dict]) -> list[str]:
    """Goal rows (no header) from a conv_layers.py result: the layers summed with ResNet-50's counts, with
    the table's per-layer choice (and, for the record, all layers fused)."""
    totals = (conv or {}).get("totals")
    if not totals:
        return []
    partial = "" if conv.get("complete") else f", {len(conv['results'])} of 23 layers"
    lines = []
    for label, key in (("table's choice", "speedup_chosen"), ("all fused", "speedup_all_fused")):
        value = totals[key]
        lines.append(f"| bottleneck convolution layers fwd+bwd vs ATen + BN primitives ({label}{partial}) | "
                     f"≥{CONV_GOAL}x | {value:.2f}x | {'yes' if value >= CONV_GOAL else 'no'} |")
    return lines


def conv_markdown(conv: dict) -> list[str]:
    """The conv_layers.py table: per layer, both paths' forward / backward times, the fused path's achieved
    GB/s (its byte model) and TFLOP/s, the speed-ups, the table's choice, the fused results' worst error."""
    out = ["", "## Convolution layers", "",
           "Each distinct ResNet-50 bottleneck convolution (count: how often the model has it): the fused Triton "
           "kernels (BN-ReLU prologue, statistics / dReLU epilogues) against ATen's convolution plus the BN passes "
           "today's path runs around it (benchmarks/conv_layers.py). GB/s and TFLOP/s: the fused path's, fwd + bwd, "
           "against its minimum bytes and the convolution's FLOPs. choice: what the conv table records.", "",
           f"- command: `{conv.get('command', '?')}`; {conv.get('timing', '')}",
           f"- device: {conv.get('device', '?')}; torch {conv.get('torch', '?')}, CUDA {conv.get('cuda')}, cuDNN "
           f"{conv.get('cudnn')}, Triton {conv.get('triton', '?')}; {conv.get('dtype')}, {conv.get('memory_format')}, "
           f"batch {conv.get('batch')}; today's primitives: {conv.get('today_backend')}"
           + (" (SMOKE: interpreter, the times mean nothing)" if conv.get("interpreted") else ""), "",
           "| layer | count | geometry | today fwd / bwd | fused fwd / bwd | fused GB/s | fused TFLOP/s | "
           "speed-up fwd / bwd / both | choice | rel. err |", "|---|---:|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in conv.get("results", []):
        fused_bytes = r["bytes"]["fused_fwd"] + r["bytes"]["fused_bwd"]
        flops = r["flops"]["fwd"] + r["flops"]["bwd"]
        seconds = r["fused_ms"] / 1e3
        faster = r["ok"] and r["fused_ms"] < r["today_ms"]
        err = max(r["rel_err"].values())
        geometry = f"{r['c_in']}→{r['c_out']} {r['size']}² k{r['kernel']} s{r['stride']}"
        out.append(f"| {r['name']} | {r['count']} | {geometry} | "
                   f"{r['today_fwd_ms']:.3f} / {r['today_bwd_ms']:.3f} ms | {r['fused_fwd_ms']:.3f} / "
                   f"{r['fused_bwd_ms']:.3f} ms | {_rate(fused_bytes / seconds, 'B/s')} | "
                   f"{_rate(flops / seconds, 'FLOP/s')} | {r['speedup_fwd']:.2f}x / {r['speedup_bwd']:.2f}x / "
                   f"{r['speedup']:.2f}x | {'triton' if faster else 'aten'} | {err:.1e}{'' if r['ok'] else ' ⚠'} |")
    t = conv.get("totals")
    if t:
        out += ["", f"Summed with the counts: today {t['today_ms']:.2f} ms, all fused {t['fused_ms']:.2f} ms "
                f"({t['speedup_all_fused']:.2f}x), the table's choice {t['chosen_ms']:.2f} ms "
                f"({t['speedup_chosen']:.2f}x). "
                "Both paths share what is left out (per-channel finalize steps, the block tails bn3 + add + ReLU)."]
    return out


def markdown(data: dict, rows: list[dict], interleaved: list[dict] = (), conv: Optional[dict] = None) -> str:
    meta = data.get("resnet_fast", {})
    machine = data.get("machine_info", {})
    commit = data.get("commit_info", {})
    device = meta.get("device", "?")
    dtype = meta.get("dtype", "")
    out = [f"# resnet_fast benchmarks: {meta.get('device_name', device)}", ""]
    facts = [
        ("date", data.get("datetime", "?")),
        ("command", f"`{meta.get('command', '?')}` (files: {', '.join(data.get('sources', []))})"),
        ("device", meta.get("device_name", "?")),
        ("versions", f"torch {meta.get('torch', '?')}, CUDA {meta.get('cuda')}, resnet_fast "
                     f"{meta.get('resnet_fast', '?')}, Python {machine.get('python_version', '?')}"),
        ("precision", f"{dtype}, {meta.get('memory_format', 'channels_last')}, {meta.get('threads')} CPU threads"),
        ("sizes", f"ops batch {meta.get('op_batch')}, models batch {meta.get('model_batch')} at "
                  f"{meta.get('image')}x{meta.get('image')}"
                  + (" (SMOKE: the times mean nothing)" if meta.get("smoke") else "")),
        ("resnet_fast backends", (", ".join(meta.get("backends", [])) or "none")
         + (f" (C++ CPU kernels: {meta['cpu_kernels']})" if meta.get("cpu_kernels") else "")),
        ("commit", f"{commit.get('id', '?')[:12]}{' (dirty)' if commit.get('dirty') else ''} "
                   f"on {commit.get('branch', '?')}"),
    ]
    out += [f"- **{k}**: {v}" for k, v in facts]
    why_not = {k: v for k, v in meta.get("backend_why_not", {}).items() if not v.startswith("not a ")}
    if why_not:
        out.append("- **backends not measured**: " + "; ".join(f"{k}: {v}" for k, v in why_not.items()))
    memory_label = "peak GPU mem" if device == "cuda" else "saved for bwd"
    out += ["", "Median of the timed rounds. vs eager / vs compile: speedup over eager and over the fastest "
            "torch.compile contender in the same group (above 1 = faster). Memory: "
            + ("`torch.cuda.max_memory_allocated` while timing (model, optimizer state and activations)"
               if device == "cuda" else "bytes saved for backward (unique storages, parameters excluded)")
            + ". rel. err: worst relative L2 error against eager over the output and every gradient (⚠ above "
              "tolerance, or above 3x torch.compile's error where a compile row exists: fp32 training "
              "gradients are ill-conditioned)."]
    goals = _goals(rows, device)
    extra = interleaved_goals(list(interleaved), device) + conv_goals(conv)
    if extra:
        goals = (goals or ["| goal | target | measured | met |", "|---|---:|---:|---|"]) + extra
    if goals:
        out += ["", "## Goals", ""] + goals
    for kind, title in (("model", "Models"), ("op", "Ops")):
        selected = [r for r in rows if r["kind"] == kind]
        if selected:
            out += ["", f"## {title}", ""] + _table(selected, dtype, memory_label)
    if conv and conv.get("results"):
        out += conv_markdown(conv)
    if interleaved:
        import interleaved as timer  # benchmarks/interleaved.py: its own table

        out += ["", "## Interleaved", "", "The same models (ops) timed round by round, every contender in every "
                "round (benchmarks/interleaved.py): the fairer ratio where the machine or the process "
                "changes during a run."]
        for result in interleaved:
            text = timer.ops_markdown(result) if "ops" in result else timer.markdown(result)
            out += [""] + ["#" + line if line.startswith("# ") else line for line in text.rstrip("\n").split("\n")]
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- plots
# Two pictures, each at most 1600 x 1000 px (16 x 10 in at 100 dpi), titled with device and date:
# PREFIX-models.png (img/s per model, grouped bars) and PREFIX-ops.png (speed-up heatmap).
DPI = 100
STAGES = {"s1": "56x56", "s2": "28x28", "s3": "14x14", "s4": "7x7"}
MODES = ["fwd", "bwd", "fwdbwd", "infer"]


def device_label(data: dict) -> str:
    """"AMD EPYC ... (2 threads), 2026-12-02": the device and the run's date, for plot titles."""
    meta = data.get("resnet_fast", {})
    name = meta.get("device_name", "?")
    brand = data.get("machine_info", {}).get("cpu", {}).get("brand_raw")
    if meta.get("device") == "cpu" and brand:
        name = f"{brand} ({meta.get('threads', '?')} threads)"
    return f"{name}, {str(data.get('datetime', '?'))[:10]}"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _is_plain_rf(contender: str) -> bool:
    # rf_<backend> only: the cached / low-memory variants are in the markdown table, not the picture.
    return contender.startswith("rf_") and contender.count("_") == 1


def plot_models(rows: list[dict], path: str, where: str) -> bool:
    """Grouped bars: img/s of eager, torch.compile and each resnet_fast backend, per model; training
    and inference side by side. False if there are no model rows."""
    panels = []
    for mode, label in (("train", "training step"), ("infer", "inference")):
        per_model = defaultdict(dict)
        for r in rows:
            if r["kind"] != "model" or r["mode"] != mode:
                continue
            c = r["contender"]
            name = "eager" if c == "eager" else "torch.compile" if c.startswith("compile") else (
                f"resnet_fast ({c[3:]})" if _is_plain_rf(c) else None)
            if name:
                ips = r["images"] / r["median"]
                per_model[r["model"]][name] = max(ips, per_model[r["model"]].get(name, 0.0))
        if per_model:
            panels.append((label, per_model))
    if not panels:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 6.5), squeeze=False)
    for ax, (label, per_model) in zip(axes[0], panels):
        models = sorted(per_model)
        contenders = sorted({c for v in per_model.values() for c in v},
                            key=lambda c: (["eager", "torch.compile"].index(c) if c in ("eager", "torch.compile")
                                           else 2, c))
        width = 0.8 / len(contenders)
        for i, contender in enumerate(contenders):
            xs = [k - 0.4 + (i + 0.5) * width for k in range(len(models))]
            values = [per_model[m].get(contender) for m in models]
            bars = ax.bar([x for x, v in zip(xs, values) if v], [v for v in values if v], width, label=contender)
            ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels(models, fontsize=9, rotation=15)
        ax.set_ylabel("images / s (higher is better)")
        ax.set_title(label, fontsize=11)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        ax.margins(y=0.12)
    batch = next((r["images"] for r in rows if r["kind"] == "model"), "?")
    fig.suptitle(f"Model throughput, batch {batch} (missing bar: not measured) - {where}", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return True


def plot_ops(rows: list[dict], path: str, where: str) -> bool:
    """Heatmap per resnet_fast backend: op x mode rows, stage-shape columns, eager time / resnet_fast
    time printed in each cell (above 1: faster than eager). False if there are no op rows."""
    grids = defaultdict(dict)  # contender -> (op, mode) -> stage -> speed-up
    for r in rows:
        if r["kind"] == "op" and _is_plain_rf(r["contender"]) and r.get("vs_eager"):
            grids[r["contender"]].setdefault((r["op"], r["mode"]), {})[r["stage"]] = r["vs_eager"]
    if not grids:
        return False
    import math

    plt = _pyplot()
    from matplotlib.colors import LogNorm

    n_rows = max(len(g) for g in grids.values())
    fig, axes = plt.subplots(1, len(grids), figsize=(min(16, 1.5 + 5.5 * len(grids)), min(10, 1.6 + 0.36 * n_rows)),
                             squeeze=False)
    values = [v for g in grids.values() for cells in g.values() for v in cells.values()]
    # Symmetric around 1 on a log scale (2x and 0.5x equally far), saturating at 4x so that one
    # outlier does not wash out the rest; the printed values are exact.
    span = min(4.0, max(2.0, max(values), 1 / min(values)))
    norm = LogNorm(vmin=1 / span, vmax=span, clip=True)
    for ax, (contender, grid) in zip(axes[0], sorted(grids.items())):
        keys = sorted(grid, key=lambda k: (k[0], MODES.index(k[1]) if k[1] in MODES else 9, k[1]))
        stages = sorted({s for cells in grid.values() for s in cells})
        matrix = [[grid[k].get(s, math.nan) for s in stages] for k in keys]
        image = ax.imshow(matrix, cmap="RdBu", norm=norm, aspect="auto")
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                if not math.isnan(v):
                    dark = abs(math.log(v)) > 0.6 * math.log(span)  # white text on the deep colours
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                            color="white" if dark else "black")
        ax.set_xticks(range(len(stages)))
        ax.set_xticklabels([STAGES.get(s, s) for s in stages], fontsize=9)
        ax.set_yticks(range(len(keys)))
        ax.set_yticklabels([f"{op} {mode}" for op, mode in keys], fontsize=8)
        ax.set_xlabel("stage (H x W of the activation)")
        ax.set_title(f"resnet_fast {contender[3:]} over eager", fontsize=10)
        bar = fig.colorbar(image, ax=ax, label="speed-up (eager time / resnet_fast time)", shrink=0.8)
        ticks = [t for t in (0.25, 0.5, 1.0, 2.0, 4.0) if 1 / span <= t <= span]
        bar.set_ticks(ticks, labels=[f"{t:g}x" for t in ticks])
        bar.minorticks_off()
    batch = next((r["shape"][0] for r in rows if r["kind"] == "op"), "?")
    fig.suptitle(f"Op speed-up, batch {batch} - {where}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="pytest-benchmark JSON file(s) (--benchmark-json)")
    parser.add_argument("--out", help="output prefix: writes PREFIX.md, PREFIX-models.png and PREFIX-ops.png "
                                      "(default benchmarks/results/<first JSON's stem>)")
    parser.add_argument("--merged", help="also write the merged JSON here")
    parser.add_argument("--interleaved", nargs="*", default=[], help="JSON files of benchmarks/interleaved.py")
    parser.add_argument("--conv-layers", help="JSON of benchmarks/conv_layers.py")
    args = parser.parse_args(argv)
    paths = [p for p in args.results if os.path.exists(p)]
    for p in set(args.results) - set(paths):
        print(f"summarize: skipping {p} (missing)", file=sys.stderr)
    data = load(paths)
    rows = _rows(data)
    if not rows:
        print("summarize: the JSON holds no resnet_fast benchmark rows", file=sys.stderr)
        return 1
    prefix = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                      os.path.splitext(os.path.basename(paths[0]))[0])
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    interleaved = []
    for path in args.interleaved:
        with open(path) as f:
            interleaved.append(json.load(f))
    conv = None
    if args.conv_layers:
        with open(args.conv_layers) as f:
            conv = json.load(f)
    with open(prefix + ".md", "w") as f:
        f.write(markdown(data, rows, interleaved, conv))
    written = [prefix + ".md"]
    where = device_label(data)
    for name, fn in (("-models.png", plot_models), ("-ops.png", plot_ops)):
        if fn(rows, prefix + name, where):
            written.append(prefix + name)
    if args.merged:
        with open(args.merged, "w") as f:
            json.dump(data, f, indent=1)
    print(f"summarize: {len(rows)} rows -> {', '.join(written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
