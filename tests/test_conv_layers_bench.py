"""benchmarks/conv_layers.py (fused convolution layers against ATen + the BN primitives, and the conv table).

The benchmark itself needs a GPU; here it runs end to end on the CPU through the Triton interpreter on one
tiny layer (the smoke mode: channels and sizes divided by 8, batch 2), in a child process because
TRITON_INTERPRET must be set before triton is imported. The checks: the JSON's rows and totals, the table's
keys (conv_backend.table_key, what resnet_fast's "auto" convolution backend looks up), and that the fused
results agree with today's path (the script compares them itself and exits 1 if not).
"""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "conv_layers.py")


def _module(path=SCRIPT, name="conv_layers_bench"):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_resnet50_layers_cover_every_bottleneck_convolution():
    layers = _module().resnet50_layers()
    assert len(layers) == 23
    assert sum(layer.count for layer in layers) == 16 * 3 + 4  # three per bottleneck, four downsamples
    by_name = {layer.name: layer for layer in layers}
    conv2 = by_name["layer2.0.conv2"]  # the stride-2 3x3: BN-ReLU prologue, dBN prologue in backward
    assert (conv2.c_in, conv2.size, conv2.c_out, conv2.kernel, conv2.stride, conv2.out_size) == (128, 56, 128, 3, 2, 28)
    assert conv2.prologue and conv2.consumer_bn and conv2.count == 1
    assert by_name["layer1.0.conv2"].count == 3 and by_name["layer3.1.conv2"].count == 5
    down = by_name["layer4.0.downsample.0"]
    assert (down.c_in, down.c_out, down.stride, down.prologue, down.consumer_bn) == (1024, 2048, 2, False, False)
    conv3 = by_name["layer1.0.conv3"]  # feeds the block tail (today's bn_add_relu): no dBN prologue
    assert conv3.prologue and not conv3.consumer_bn and conv3.count == 3


def test_byte_model():
    m = _module()
    layer = m.ConvLayer("t", c_in=64, size=56, c_out=64, kernel=3, stride=1, prologue=True, consumer_bn=True)
    x = y = 256 * 64 * 56 * 56 * 2
    w = 64 * 64 * 9 * 2
    b = m.layer_bytes(layer, 256, 2)
    assert b["today_fwd"] == 2 * x + (x + w + y) + y  # scale_shift_act, conv, bn_stats
    assert b["fused_fwd"] == x + w + y
    assert b["today_bwd"] == 3 * y + (y + w + x) + (y + x + w) + 2 * x  # apply, dgrad, wgrad, reduce
    assert b["fused_bwd"] == (2 * y + w + 2 * x) + (x + 2 * y + w)
    # a stride-2 1x1 reads only the strided pixels in its forward and wgrad
    down = m.ConvLayer("d", c_in=256, size=56, c_out=512, kernel=1, stride=2, prologue=False, consumer_bn=False)
    xr = 256 * 256 * 28 * 28 * 2
    assert m.layer_bytes(down, 256, 2)["fused_fwd"] == xr + 512 * 256 * 2 + 256 * 512 * 28 * 28 * 2
    assert m.layer_flops(down, 256) == {"fwd": 2 * 256 * 28 * 28 * 512 * 256, "bwd": 4 * 256 * 28 * 28 * 512 * 256}


def test_no_gpu_exits_cleanly(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the script would run")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=REPO, RESNET_FAST_JIT="0")
    done = subprocess.run([sys.executable, SCRIPT, str(tmp_path / "r.json")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "conv_layers: no CUDA device" in done.stdout
    assert not (tmp_path / "r.json").exists()


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
def test_interpreter_smoke_run_writes_results_and_table(tmp_path):
    out, table = tmp_path / "conv_layers.json", tmp_path / "conv_table.json"
    env = dict(os.environ, PYTHONPATH=REPO, RESNET_FAST_JIT="0", TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, SCRIPT, str(out), "--table", str(table), "--batch", "2", "--shrink", "8",
                           "--warmup", "0", "--repeats", "2", "--only", "layer2.0.conv2"],
                          env=env, capture_output=True, text=True, timeout=180, cwd=str(tmp_path))
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    result = json.loads(out.read_text())
    assert result["complete"] and result["interpreted"] and result["batch"] == 2 and result["dtype"] == "bfloat16"
    assert "conv_layers.py" in result["command"]
    (row,) = result["results"]
    assert row["name"] == "layer2.0.conv2" and (row["c_in"], row["size"], row["stride"]) == (16, 7, 2)
    assert row["ok"] and set(row["rel_err"]) == {"y", "mean", "var", "dw", "dx", "sum_g", "sum_gx"}
    assert max(row["rel_err"].values()) < row["tolerance"]
    for key in ("today_fwd", "today_bwd", "fused_fwd", "fused_bwd"):
        assert len(row["times_ms"][key]) == 2 and row[f"{key}_ms"] > 0 and row[f"{key}_GBps"] > 0
    assert row["today_ms"] == pytest.approx(row["today_fwd_ms"] + row["today_bwd_ms"])
    assert result["totals"]["speedup_all_fused"] == pytest.approx(row["today_ms"] / row["fused_ms"])

    from resnet_fast.conv_backend import load_table, table_key

    data = json.loads(table.read_text())
    key = table_key(result["device"], torch.bfloat16, 16, 7, 7, 16, 3, 2)
    assert set(data["choice"]) == {key}
    assert data["choice"][key] == ("triton" if row["fused_ms"] < row["today_ms"] else "aten")
    assert data["layers"][key]["layers"] == ["layer2.0.conv2"] and data["complete"]
    assert data["measured"]["device"] == result["device"] and data["measured"]["triton"]
    assert load_table(str(table)) == data["choice"]  # what the "auto" convolution backend reads

    # the summary's table and goal rows (summarize.py --conv-layers, as gpu_run.sh passes it)
    summarize = _module(os.path.join(REPO, "benchmarks", "summarize.py"), "summarize_bench")
    text = "\n".join(summarize.conv_markdown(result))
    assert "## Convolution layers" in text and "| layer2.0.conv2 | 1 | 16→16 7² k3 s2 |" in text
    assert "SMOKE" in text
    goals = summarize.conv_goals(result)
    assert len(goals) == 2 and all("≥1.15x" in g for g in goals)
    assert f"{result['totals']['speedup_all_fused']:.2f}x" in goals[1]


def test_layers_match_compile_check():
    """The benchmark times the specializations the compile check compiles (compile_check refuses to import
    under TRITON_INTERPRET: a child process without it)."""
    code = ("import json\nfrom resnet_fast.kernels.triton.conv.compile_check import resnet50_layers\n"
            "print(json.dumps(sorted({(l.geom.c_in, l.geom.h, l.geom.c_out, l.geom.kh, l.geom.stride, l.prologue,"
            " l.consumer_bn) for l in resnet50_layers()})))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=REPO, RESNET_FAST_JIT="0")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0 and "No module named 'triton'" in done.stderr:
        pytest.skip("needs triton")
    assert done.returncode == 0, done.stderr
    theirs = [tuple(v) for v in json.loads(done.stdout)]
    ours = sorted((l.c_in, l.size, l.c_out, l.kernel, l.stride, l.prologue, l.consumer_bn)
                  for l in _module().resnet50_layers())
    assert ours == theirs
