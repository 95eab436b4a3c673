"""Bad command lines and inputs of resnet-fast-train: exit status 2 and one line, never a traceback."""
from __future__ import annotations

import pytest

from _train_cli import assert_usage_error, run_module

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("args, fragments", [
    (["--arch", "resnet_nonesuch"], ["--arch", "resnet_nonesuch"]),
    (["--arch", "resnet81"], ["did you mean", "resnet18"]),
    (["--data", "/nonexistent/imagefolder"], ["--data", "no such directory"]),
    (["--amp", "fp8"], ["--amp", "invalid choice"]),
    (["--epochs", "0"], ["--epochs", "must be positive"]),
    (["--label-smoothing", "1.5"], ["--label-smoothing"]),
    (["--resume", "/nonexistent/last.pt"], ["--resume", "no such file"]),
], ids=["unknown-arch", "misspelt-arch", "missing-data", "bad-amp", "zero-epochs", "smoothing", "missing-resume"])
def test_bad_arguments(args, fragments):
    assert_usage_error(run_module("resnet_fast.train", *args), *fragments)


def test_imagefolder_without_val(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    assert_usage_error(run_module("resnet_fast.train", "--data", str(tmp_path)), "no val/ subdirectory")


def test_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    result = run_module("resnet_fast.train", "--data", "digits", "--image-size", "16", "--resume", str(bad))
    assert_usage_error(result, str(bad), "not a readable checkpoint")


def test_list_archs():
    result = run_module("resnet_fast.train", "--list-archs")
    assert result.returncode == 0, result.stderr
    assert "resnet18" in result.stdout.split()
