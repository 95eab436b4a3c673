"""The convolution backend's selection and table (resnet_fast/conv_backend.py)."""
import json
import os
import subprocess
import sys

import pytest
import torch

import resnet_fast
from resnet_fast import conv_backend


@pytest.fixture
def restore():
    before = conv_backend.get_conv_backend()
    yield
    resnet_fast.set_conv_backend(before)


def test_set_and_get(restore):
    for name in conv_backend.CONV_BACKENDS:
        resnet_fast.set_conv_backend(name)
        assert resnet_fast.get_conv_backend() == name


def test_unknown_name_is_refused(restore):
    with pytest.raises(ValueError, match="unknown convolution backend 'cudnn'"):
        resnet_fast.set_conv_backend("cudnn")


def test_environment_variable():
    code = "import resnet_fast; print(resnet_fast.get_conv_backend())"
    env = dict(os.environ, RESNET_FAST_CONV_BACKEND="aten")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "aten"
    env["RESNET_FAST_CONV_BACKEND"] = "bogus"
    code = "import resnet_fast; resnet_fast.get_conv_backend()"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "RESNET_FAST_CONV_BACKEND='bogus'" in out.stderr


def test_table_key_names_every_part():
    key = conv_backend.table_key("NVIDIA H100 80GB HBM3", torch.bfloat16, 64, 56, 56, 256, 1, 1)
    assert key == "NVIDIA H100 80GB HBM3|bfloat16|64x56x56|256|k1s1"


def test_table_load(tmp_path):
    path = tmp_path / "conv_table.json"
    path.write_text(json.dumps({"choice": {"a": "triton", "b": "aten", "c": "bogus"}}))
    assert conv_backend.load_table(str(path)) == {"a": "triton", "b": "aten"}
    assert conv_backend.load_table(str(tmp_path / "missing.json")) == {}
    (tmp_path / "broken.json").write_text("{")
    assert conv_backend.load_table(str(tmp_path / "broken.json")) == {}


def test_table_path_from_environment(tmp_path):
    path = tmp_path / "table.json"
    path.write_text(json.dumps({"choice": {"k": "triton"}}))
    code = "from resnet_fast import conv_backend as c; print(c.TABLE_PATH, c.table_choice('k'))"
    env = dict(os.environ, RESNET_FAST_CONV_TABLE=str(path))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(path), "triton"]


def test_auto_without_a_table_decides_nothing(monkeypatch, restore):
    """auto with no table (as shipped until a GPU run writes one): the blocks return before looking at
    their convolutions."""
    from resnet_fast.models import _conv_fusion

    monkeypatch.setattr(conv_backend, "has_table", lambda: False)
    monkeypatch.setattr(_conv_fusion, "uncovered", lambda *a: (_ for _ in ()).throw(AssertionError("asked")))
    resnet_fast.set_conv_backend("auto")
    model = resnet_fast.resnet18(num_classes=3).train()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
