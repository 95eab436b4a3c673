"""summarize.py on the committed CPU record: the markdown table and both plots, each within 1600 x 1000 px."""
from __future__ import annotations

import os

import pytest

import summarize

RECORD = os.path.join(os.path.dirname(__file__), "results", "cpu-2026-12-02-avx512", "results.json")


@pytest.mark.skipif(not os.path.exists(RECORD), reason="the CPU record is not in this checkout")
def test_summary_and_plots_of_the_cpu_record(tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image

    prefix = str(tmp_path / "summary")
    assert summarize.main([RECORD, "--out", prefix]) == 0
    assert "| resnet50 train" in open(prefix + ".md").read()
    for name in ("-models.png", "-ops.png"):
        width, height = Image.open(prefix + name).size
        assert width <= 1600 and height <= 1000, (name, width, height)
    data = summarize.load([RECORD])
    assert summarize.device_label(data) == "AMD EPYC (2 threads), 2026-12-02"
