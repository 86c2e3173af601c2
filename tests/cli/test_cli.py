"""CLI: happy paths, and every bad input exits 2 with one line naming the problem and the fix."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from edgekit.cli import app
from tests.conftest import tiny_net

runner = CliRunner()


def _err_line(res) -> str:
    text = (res.stderr or "") + (res.stdout or "")
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return " ".join(lines)


def test_version_and_methods():
    assert runner.invoke(app, ["--version"]).stdout.startswith("edgekit ")
    res = runner.invoke(app, ["methods"])
    assert res.exit_code == 0 and "rtn" in res.stdout and "magnitude" in res.stdout


def test_compress_and_inspect(tmp_path):
    out = tmp_path / "c"
    res = runner.invoke(app, ["compress", "demo", "--method", "rtn", "--set", "bits=4", "-o", str(out),
                              "--target", "openvino"])
    assert res.exit_code == 0, res.stdout + res.stderr
    man = json.loads((out / "manifest.json").read_text())
    assert man["method"]["config"]["bits"] == 4 and "openvino" in man["exports"]
    res = runner.invoke(app, ["inspect", str(out / "model.onnx"), "--json"])
    info = json.loads(res.stdout)
    assert info["ops"]["DequantizeLinear"] == 4 and info["format"] == "onnx"


@pytest.mark.parametrize("args,needle", [
    (["compress", "nope.pt", "--method", "rtn", "-o", "X"], "does not exist"),
    (["compress", "demo", "--method", "rtm", "-o", "X"], "Did you mean 'rtn'"),
    (["compress", "demo", "--method", "rtn", "--set", "bits=99", "-o", "X"], "bits"),
    (["compress", "demo", "--method", "rtn", "--set", "bogus=1", "-o", "X"], "bogus"),
    (["compress", "demo", "--method", "rtn", "--set", "novalue", "-o", "X"], "key=value"),
    (["export", "demo", "--target", "onnxruntime", "--input-shape", "1xax8", "-o", "X"], "input-shape"),
    (["export", "demo", "--target", "coreml", "-o", "X"], "coreml"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.stdout + res.stderr
    line = _err_line(res)
    assert needle in line and "Traceback" not in line
    assert line.startswith("error:")
    assert not (tmp_path / "X").exists()


def test_unsafe_pickle_and_bad_state_dict_exit_2(tmp_path):
    from tests.unit.test_model_io import Payload

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"x": Payload(str(marker))}, evil)
    res = runner.invoke(app, ["export", str(evil), "--target", "onnxruntime", "-o", str(tmp_path / "o")])
    # refused outright (pathlib reaches the file system): no option is suggested for it
    assert res.exit_code == 2 and "no option allows" in _err_line(res) and not marker.exists()
    sd = tiny_net().state_dict()
    sd.pop("fc.bias")
    f = tmp_path / "w.safetensors"
    save_file(sd, str(f))
    res = runner.invoke(app, ["export", str(f), "--arch", "tests.conftest:tiny_net", "--input-shape", "1x3x8x8",
                              "--target", "onnxruntime", "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "fc.bias" in _err_line(res)
    res = runner.invoke(app, ["export", str(tmp_path / "trunc.pt"), "--target", "onnxruntime", "-o", "o"])
    assert res.exit_code == 2


def test_state_dict_export_happy_path(tmp_path):
    f = tmp_path / "w.safetensors"
    save_file(tiny_net().state_dict(), str(f))
    out = tmp_path / "o"
    res = runner.invoke(app, ["export", str(f), "--arch", "tests.conftest:tiny_net", "--input-shape", "1x3x8x8",
                              "--target", "openvino", "-o", str(out)])
    assert res.exit_code == 0, res.stdout + res.stderr
    man = json.loads((out / "manifest.json").read_text())
    assert man["inputs"][0]["shape"] == [1, 3, 8, 8] and man["exports"]["openvino"]["file"].endswith(".xml")
