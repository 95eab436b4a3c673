"""The interleaved timer (interleaved.py) runs and writes what it says, at smoke sizes."""
from __future__ import annotations

import json

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
