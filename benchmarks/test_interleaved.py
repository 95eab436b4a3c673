"""The interleaved timer (interleaved.py) runs and writes what it says, at smoke sizes."""
from __future__ import annotations

import functools
import json

import pytest
import torch

import bench_config as config
import interleaved


def test_interleaved_train_writes_rows(tmp_path, restore_backend):
    backend = config.settings().backends[0]
    contenders = f"rf_{backend},rf_{backend}_low_memory"
    assert interleaved.main(["--contenders", contenders, "--rounds", "2", "--warmup", "0",
                             "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "interleaved-resnet50-train.json").read_text())
    rows = {r["contender"]: r for r in result["rows"]}
    assert list(rows) == ["eager", f"rf_{backend}", f"rf_{backend}_low_memory"]  # eager always first
    assert all(len(r["times_s"]) == 2 and r["median_s"] > 0 for r in rows.values())
    assert rows["eager"]["vs_eager"] == 1.0
    assert rows[f"rf_{backend}_low_memory"]["saved_bytes"] < rows[f"rf_{backend}"]["saved_bytes"]
    assert (tmp_path / "interleaved-resnet50-train.md").read_text().startswith("# resnet50 train, interleaved")


def test_interleaved_ops_writes_rows(tmp_path, restore_backend):
    backend = config.settings().backends[0]
    ops = ("bn_relu", "bn_add_relu")
    assert interleaved.main(["--ops", ",".join(ops), "--contenders", f"rf_{backend}", "--rounds", "2",
                             "--warmup", "0", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "interleaved-ops-fwdbwd.json").read_text())
    stages = config.settings().stages
    assert [(r["op"], r["contender"]) for r in result["rows"]] == [
        (op, contender) for op in ops for _ in stages for contender in ("eager", f"rf_{backend}")]
    assert all(len(r["times_s"]) == 2 and r["median_s"] > 0 for r in result["rows"])
    assert all(r["vs_eager"] == 1.0 for r in result["rows"] if r["contender"] == "eager")
    assert (tmp_path / "interleaved-ops-fwdbwd.md").read_text().startswith("# ops fwdbwd, interleaved")


def test_memory_format_knob(tmp_path, restore_backend, monkeypatch):
    """RESNET_FAST_BENCH_MEMORY_FORMAT=contiguous: op inputs and the recorded environment follow
    it; an unknown value is refused by name."""
    import bench_cases as cases

    monkeypatch.setattr(config, "settings", functools.lru_cache(maxsize=None)(config.settings.__wrapped__))
    monkeypatch.setenv("RESNET_FAST_BENCH_MEMORY_FORMAT", "contiguous")
    settings = config.settings()
    assert settings.memory_format == torch.contiguous_format
    case = cases.make_op_case("bn_relu", settings.stages[0], settings.op_batch, settings.device, settings.act_dtype)
    y = case.activations[0]
    assert y.is_contiguous() and not y.is_contiguous(memory_format=torch.channels_last)
    backend = settings.backends[0]
    assert interleaved.main(["--ops", "bn_relu", "--contenders", f"rf_{backend}", "--rounds", "1",
                             "--warmup", "0", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "interleaved-ops-fwdbwd.json").read_text())["environment"]["memory_format"] == \
        "contiguous"
    config.settings.cache_clear()
    monkeypatch.setenv("RESNET_FAST_BENCH_MEMORY_FORMAT", "nhwc")
    with pytest.raises(ValueError, match="RESNET_FAST_BENCH_MEMORY_FORMAT='nhwc'"):
        config.settings()


def test_summary_goals_from_interleaved_runs():
    """summarize.py --interleaved: the best resnet_fast contender's median per-round ratio."""
    import summarize

    rows = [{"contender": "eager", "times_s": [2.0, 3.0, 2.0]}, {"contender": "compile", "times_s": [1.0, 2.0, 2.0]},
            {"contender": "rf_cpu", "times_s": [1.0, 2.0, 1.0]}, {"contender": "rf_cpu_low_memory",
                                                                   "times_s": [4.0, 4.0, 4.0]}]
    lines = summarize.interleaved_goals([{"model": "resnet50", "mode": "train", "rows": rows}], "cuda")
    # vs eager: per-round 2.0, 1.5, 2.0 -> 2.0; vs compile: 1.0, 1.0, 2.0 -> 1.0
    assert lines == ["| resnet50 train vs eager (rf_cpu, interleaved) | ≥1.3x | 2.00x | yes |",
                     "| resnet50 train vs compile (rf_cpu, interleaved) | ≥1.1x | 1.00x | no |"]
