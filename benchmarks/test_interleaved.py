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
