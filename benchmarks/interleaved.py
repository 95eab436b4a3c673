"""Model steps (or op calls) of several contenders timed in turn, round by round, in one process.

The pytest-benchmark rows (test_models.py) time each contender's rounds back to back, one
contender after the other. On a CPU that is shared, or whose process state changes as it
runs (freed memory, page faults: see the README), a contender timed later meets another
machine than one timed first. Here every round times one step of every contender, in an
order that rotates from round to round, so drift and process state weigh on all alike; the
ratio to eager is the median of the per-round ratios.

    python benchmarks/interleaved.py --model resnet50 --mode train \\
        --contenders eager,compile,rf_cpu,rf_cpu_low_memory --rounds 10 --out DIR

Contenders as in test_models.py: eager, compile / compile_max (torch.compile of the eager
model), rf_<backend>, rf_<backend>_low_memory (train), rf_<backend>_conv_<aten|triton>
(set_conv_backend); not the _cached ones. Sizes,
device and threads from the RESNET_FAST_BENCH_* variables (bench_config.py). Writes
DIR/interleaved-<model>-<mode>.json and .md and prints the table.

With --ops, the same for op calls (test_ops.py's cases and modes) at every stage shape:
each round times, per contender, as many calls as last MIN_ROUND_S (bench_harness.py).

    python benchmarks/interleaved.py --ops bn_relu,bn_add_relu --op-mode fwdbwd --rounds 15 --out DIR
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import resnet_fast  # noqa: E402

import bench_cases as cases  # noqa: E402
import bench_config as config  # noqa: E402
import bench_harness as harness  # noqa: E402
import memory  # noqa: E402


def measure(name: str, mode: str, contenders: list[str], rounds: int, warmup: int) -> dict:
    settings = config.settings()
    torch.set_num_threads(settings.threads)
    g = torch.Generator(device=settings.device).manual_seed(0)
    x = torch.randn(settings.model_batch, 3, settings.image, settings.image, generator=g,
                    device=settings.device).contiguous(memory_format=settings.memory_format)
    labels = torch.randint(0, 1000, (settings.model_batch,), generator=g, device=settings.device)
    eager = cases.build_eager_model(name).to(settings.device, memory_format=settings.memory_format)
    steps, saved = {}, {}
    for contender in contenders:  # every copy of the eager model has the same seeded weights
        source = eager if contender == "eager" else cases.build_eager_model(name).to(
            settings.device, memory_format=settings.memory_format)
        model, why = cases.contender_model(name, source, contender, settings.device)
        if model is None:
            raise SystemExit(f"interleaved: {contender}: {why}")
        model.train(mode == "train")
        steps[contender] = harness.model_step(model, x, labels, mode, settings)
        if mode == "train":
            backend(contender)
            saved[contender] = memory.saved_bytes(model, (x,), context=harness.autocast(settings))
    times = harness.interleave(steps, rounds, warmup, settings.device, before=backend)
    rows = []
    for contender in contenders:
        median = statistics.median(times[contender])
        rows.append(dict(contender=contender, median_s=median, images_per_s=settings.model_batch / median,
                         vs_eager=_vs_eager(times, contender), times_s=times[contender],
                         saved_bytes=saved.get(contender)))
    return dict(model=name, mode=mode, batch=settings.model_batch, image=settings.image, rounds=rounds,
                warmup=warmup, environment=config.environment(), command=" ".join(sys.argv),
                variables=_variables(), rows=rows)


def measure_ops(ops: list[str], mode: str, contenders: list[str], rounds: int, warmup: int) -> dict:
    settings = config.settings()
    torch.set_num_threads(settings.threads)
    rows = []
    for op in ops:
        for stage in settings.stages:
            steps, inner = {}, {}
            for contender in contenders:  # one input set each, from the same seed
                case = cases.make_op_case(op, stage, settings.op_batch, settings.device, settings.act_dtype)
                backend(contender)
                with harness.autocast(settings):
                    steps[contender] = cases.op_step(harness.op_function(op, contender), case, mode)
                    inner[contender] = harness.calibrate_inner(steps[contender], settings)
            with harness.autocast(settings):
                times = harness.interleave(steps, rounds, warmup, settings.device, inner=inner, before=backend)
            for contender in contenders:
                rows.append(dict(op=op, shape=list(cases.op_shapes(op, stage, settings.op_batch)[0]),
                                 contender=contender, calls_per_round=inner[contender],
                                 median_s=statistics.median(times[contender]),
                                 vs_eager=_vs_eager(times, contender), times_s=times[contender]))
            del steps
            harness.release(settings.device)
    return dict(ops=ops, mode=mode, batch=settings.op_batch, rounds=rounds, warmup=warmup,
                environment=config.environment(), command=" ".join(sys.argv), variables=_variables(), rows=rows)


def _vs_eager(times: dict, contender: str):
    """Median of the per-round ratios eager / contender (None without an eager contender)."""
    if "eager" not in times:
        return None
    return statistics.median(e / t for e, t in zip(times["eager"], times[contender]))


def _variables() -> dict:
    """Variables that change what is measured: the harness's knobs, and the allocator's (README)."""
    return {k: v for k, v in os.environ.items()
            if k.startswith(("RESNET_FAST", "GLIBC_TUNABLES", "MALLOC_", "LD_PRELOAD", "OMP_"))}


def backend(contender: str) -> None:
    if contender.startswith(config.RF_PREFIX):
        resnet_fast.set_backend(config.contender_backend(contender))
        resnet_fast.set_conv_backend(config.contender_conv_backend(contender))


def _header(result: dict, what: str, size: str, rounds: str) -> list[str]:
    """Title, command, environment, versions, and ``rounds``: how a round ran."""
    env = result["environment"]
    variables = ", ".join(f"{k}={v}" for k, v in result["variables"].items()) or "(none set)"
    return [f"# {what}, interleaved: {size}, {env['device_name']}, {env['threads']} threads, {env['dtype']}, "
            f"{env.get('memory_format', 'channels_last')}", "",
            f"- command: `{result['command']}`", f"- environment: {variables}",
            f"- torch {env['torch']}, resnet_fast {env['resnet_fast']}"
            + (f", C++ CPU kernels {env['cpu_kernels']}" if env.get("cpu_kernels") else ""),
            f"- {result['rounds']} rounds after {result['warmup']} warm-up rounds; {rounds}", ""]


def markdown(result: dict) -> str:
    eager_saved = next((r["saved_bytes"] for r in result["rows"] if r["contender"] == "eager"), None)
    image = result["image"]
    lines = _header(result, f"{result['model']} {result['mode']}", f"{result['batch']}x3x{image}x{image}",
                    "each round times one step of every contender, the order rotating; vs eager = median of "
                    "the per-round ratios")
    lines += ["| contender | median | img/s | vs eager | saved for backward | vs eager |",
              "|---|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        saved = r["saved_bytes"]
        lines.append(f"| {r['contender']} | {r['median_s']:.3f} s | {r['images_per_s']:.1f} | "
                     f"{r['vs_eager']:.2f}x | " + (f"{saved / 2**20:.0f} MiB | {saved / eager_saved:.2f}x |"
                                                   if saved and eager_saved else " | |"))
    return "\n".join(lines) + "\n"


def ops_markdown(result: dict) -> str:
    lines = _header(result, f"ops {result['mode']}", f"batch {result['batch']}",
                    "each round times every contender's calls (as many as fill the round time), the order "
                    "rotating; per call: median over rounds; vs eager = median of the per-round ratios")
    lines += ["| op | shape | contender | per call | vs eager |", "|---|---|---|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['op']} | {'x'.join(map(str, r['shape']))} | {r['contender']} | "
                     f"{r['median_s'] * 1e3:.3f} ms | {r['vs_eager']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet50", choices=config.MODELS)
    p.add_argument("--mode", default="train", choices=config.MODEL_MODES)
    p.add_argument("--contenders", default="eager,rf_cpu", help="comma list (default: eager,rf_cpu)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", help="folder for the JSON and markdown (default: print only)")
    p.add_argument("--ops", help="comma list of ops: time op calls at the stage shapes instead of a model")
    p.add_argument("--op-mode", default="fwdbwd", choices=config.OP_MODES)
    args = p.parse_args(argv)
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    for contender in contenders:
        # An inference_cache() scope is per thread: it cannot stay open for one model and not another.
        if contender.endswith(config.CACHED_SUFFIX):
            p.error(f"{contender}: cached contenders run in test_models.py only")
        if contender not in ("eager", *config.COMPILE_MODES) and not contender.startswith(config.RF_PREFIX):
            p.error(f"unknown contender {contender!r}")
    if "eager" not in contenders:
        contenders.insert(0, "eager")
    if args.ops:
        ops = [o.strip() for o in args.ops.split(",") if o.strip()]
        for op in ops:
            if op not in config.OPS:
                p.error(f"unknown op {op!r} (one of {', '.join(config.OPS)})")
        result = measure_ops(ops, args.op_mode, contenders, args.rounds, args.warmup)
        text, stem = ops_markdown(result), f"interleaved-ops-{args.op_mode}"
    else:
        result = measure(args.model, args.mode, contenders, args.rounds, args.warmup)
        text, stem = markdown(result), f"interleaved-{args.model}-{args.mode}"
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        stem = os.path.join(args.out, stem)
        with open(stem + ".json", "w") as f:
            json.dump(result, f, indent=1)
        with open(stem + ".md", "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
