"""Every bad input seen in the field gives one red line and exit 2 (never a traceback), and documented sources work.

Each case below crashed with a traceback (or SIGABRT, or hung) before the "Safe by construction" work.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
import yaml
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from edgekit.cli import app
from tests.conftest import tiny_net

runner = CliRunner()


def _run(argv, code=2):
    res = runner.invoke(app, [str(a) for a in argv])
    text = (res.stderr or "") + (res.stdout or "")
    assert res.exit_code == code, (argv, res.exit_code, text[-2000:])
    assert "Traceback" not in text
    if code == 2:
        lines = [ln for ln in (res.stderr or "").strip().splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), lines
    return text


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    out = tmp_path_factory.mktemp("a") / "art"
    _run(["export", "demo", "--target", "onnxruntime", "-o", out], code=0)
    return out


def test_broken_hf_config(tmp_path):
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text("{not json")
    assert "config.json" in _run(["compress", d, "--method", "rtn", "-o", tmp_path / "o"])


@pytest.mark.parametrize("raw", [b"", b"\x00garbage\xff" * 20])
def test_garbage_or_empty_onnx(tmp_path, raw):
    f = tmp_path / "m.onnx"
    f.write_bytes(raw)
    _run(["export", f, "--target", "openvino", "-o", tmp_path / "o"])


def test_onnx_with_external_data_works(tmp_path):
    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32), "W")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    src = tmp_path / "src"
    src.mkdir()
    onnx.save_model(m, str(src / "ext.onnx"), save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    _run(["export", src / "ext.onnx", "--target", "openvino", "-o", tmp_path / "o"], code=0)
    (src / "ext.onnx.data").unlink()  # the artifact is self-contained
    _run(["verify", tmp_path / "o"], code=0)


@pytest.mark.parametrize("shape", ["1x3x100000x100000", "0x3", "1x-3", "axb", "1x1x8x8:complex"])
def test_absurd_input_shapes(tmp_path, shape):
    _run(["compress", "demo", "--method", "rtn", "--input-shape", shape, "-o", tmp_path / "o"])


def test_input_shape_dtype_the_model_cannot_take(tmp_path):
    assert "input-shape" in _run(["compress", "demo", "--method", "rtn", "--input-shape", "1x1x8x8:bool",
                                  "-o", tmp_path / "o"])


def test_bad_set_value(tmp_path):
    _run(["compress", "demo", "--method", "rtn", "--set", "skip=[a", "-o", tmp_path / "o"])


def test_non_utf8_output(tmp_path):
    _run(["compress", "demo", "--method", "rtn", "-o", str(tmp_path) + "/bad\udcff"])


def test_arch_that_is_not_a_factory(tmp_path):
    f = tmp_path / "w.pt"
    torch.save(tiny_net().state_dict(), f)
    for arch in ("os:system", "json:loads", "tests.conftest:TinyNet.forward"):
        _run(["compress", f, "--arch", arch, "--method", "rtn", "-o", tmp_path / "o"])


def test_binary_recipe(tmp_path):
    r = tmp_path / "r.yaml"
    r.write_bytes(b"\x00\x01\xffbinary")
    _run(["run", r])


def test_gates_samples_zero_fails_before_writing(tmp_path):
    r = tmp_path / "r.yaml"
    out = tmp_path / "o"
    r.write_text(yaml.safe_dump({"model": "demo", "steps": [{"method": "rtn"}], "gates": {"samples": 0},
                                 "out": str(out)}))
    _run(["run", r])
    assert not out.exists()


def test_manifest_without_inputs(tmp_path, art):
    import shutil

    a = tmp_path / "a"
    shutil.copytree(art, a)
    man = json.loads((a / "manifest.json").read_text())
    del man["inputs"]
    (a / "manifest.json").write_text(json.dumps(man))
    assert "inputs" in _run(["export", a, "--target", "openvino"])
    _run(["verify", a])


@pytest.mark.parametrize("field,value", [("warmup", 10**9), ("min_seconds", float("inf")), ("max_cv", float("nan"))])
def test_absurd_target_protocol(tmp_path, art, field, value):
    from edgekit.targets import load_target

    t = load_target("x86-avx2-ort").model_dump()
    t["name"] = "quick"
    t["protocol"][field] = value
    y = tmp_path / "t.yaml"
    y.write_text(yaml.safe_dump(t))
    assert field in _run(["profile", art, "--target", y, "-o", tmp_path / "p"])


def test_compress_from_pt2_and_artifact(tmp_path, art):
    """Documented sources: a .pt2 program loads (checked) and gives a clear line when a method finds no layers."""
    p = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(tiny_net(), (torch.randn(1, 3, 8, 8),)), str(p))
    for src in (p, art):
        assert "torch.export program" in _run(["compress", src, "--method", "rtn", "-o", tmp_path / "o"])
    _run(["export", p, "--target", "onnxruntime", "-o", tmp_path / "e"], code=0)


def test_verify_command(art):
    out = _run(["verify", art], code=0)
    assert "verified" in out and "checksums match" in out
