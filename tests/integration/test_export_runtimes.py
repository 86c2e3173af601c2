"""Export of the bundled demo model to each runtime: validated, recorded, atomic, fail-closed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import torch
import pytest

from edgekit import api
from edgekit.artifact import read_manifest, sha256_file
from edgekit.errors import ConfigError, ExportMismatchError


@pytest.fixture(scope="module")
def demo_artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("art") / "demo"
    api.export("demo", "onnxruntime", out)
    return out


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino", "tflite"])
def test_export_each_runtime_validates_within_1e4(demo_artifact, runtime):
    art = api.export(demo_artifact, runtime)
    man = read_manifest(art)
    ex = man["exports"][runtime]
    outs = ex["validation"]["outputs"]
    assert ex["precision"] == "fp32"
    assert all(o["max_abs"] <= 1e-4 and o["top1_agreement"] == 1.0 for o in outs.values())
    assert ex["validation"]["tolerance"]["max_abs"] == 1e-4
    f = art / ex["file"]
    assert man["files"][ex["file"]]["sha256"] == sha256_file(f)
    assert man["inputs"][0]["shape"] == [1, 1, 8, 8] and man["versions"]["torch"] == torch.__version__


def test_mismatch_fails_closed_and_leaves_nothing(tmp_path, monkeypatch):
    from edgekit import runtimes as runners

    real = runners.open_session

    def corrupt(*a, **k):
        s = real(*a, **k)
        run = s.run
        s.run = lambda feeds: [o + 0.5 for o in run(feeds)]
        return s

    monkeypatch.setattr(runners, "open_session", corrupt)
    out = tmp_path / "bad"
    with pytest.raises(ExportMismatchError, match="differs from PyTorch"):
        api.export("demo", "onnxruntime", out)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_existing_output_is_not_overwritten_without_flag(tmp_path):
    out = tmp_path / "a"
    out.mkdir()
    with pytest.raises(ConfigError, match="--overwrite"):
        api.export("demo", "onnxruntime", out)


def test_killed_export_leaves_no_artifact(tmp_path):
    out = tmp_path / "killed"
    code = ("import time, edgekit.export.validate as v\n"
            "orig = v.validate\n"
            "def slow(*a, **k):\n    open(r'%s', 'w').close(); time.sleep(60)\n"
            "v.validate = slow\n"
            "import edgekit.api as api; api.validate = slow\n"
            "api.export('demo', 'onnxruntime', r'%s')\n") % (tmp_path / "started", out)
    p = subprocess.Popen([sys.executable, "-c", code])
    for _ in range(600):
        if (tmp_path / "started").exists():
            break
        time.sleep(0.1)
    assert (tmp_path / "started").exists()
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not out.exists()
    # a later run cleans the dead process's staging folder and succeeds
    api.export("demo", "onnxruntime", out)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert json.loads((out / "manifest.json").read_text())["exports"]["onnxruntime"]


def test_compress_artifact_reexports_without_source(tmp_path):
    art = api.compress("demo", "rtn", {"bits": 8}, tmp_path / "c", keep_program=True)
    man = read_manifest(art)
    assert man["integer_weights"]["integer_weights"] == 4
    assert (art / "model.onnx").stat().st_size < 0.4 * 59_000
    api.export(art, "tflite")
    man = read_manifest(art)
    assert man["exports"]["tflite"]["validation"]["outputs"]
    assert man["exports"]["tflite"]["weight_storage"]["weights"].startswith("int8")
    assert man["files"]["exports/tflite/model.tflite"]["bytes"] < 0.45 * 60_000
    assert np.isclose(man["method"]["report"]["bits_per_weight"], 8, atol=0.5)


def test_lean_artifact_ships_no_float_program_and_still_reexports(tmp_path):
    """compress keeps only what the runtimes run: no model.pt2 (a float program as large as FP32); OpenVINO is
    added later from model.onnx and validated against ONNX Runtime on it; LiteRT (which needs the program) is one
    line naming --keep-program; every file has a role in the manifest."""
    from edgekit.errors import ConfigError, ModelLoadError

    art = api.compress("demo", "rtn", {"bits": 8}, tmp_path / "c")
    man = read_manifest(art)
    assert man["torch_program"] is None and not (art / "model.pt2").exists()
    assert set(man["file_roles"]) == set(man["files"]), (man["file_roles"], man["files"])
    kept = api.compress("demo", "rtn", {"bits": 8}, tmp_path / "k", keep_program=True)
    lean_bytes = sum(f["bytes"] for f in man["files"].values())
    assert lean_bytes < 0.5 * sum(f["bytes"] for f in read_manifest(kept)["files"].values())
    api.export(art, "openvino")
    man = read_manifest(art)
    ov = man["exports"]["openvino"]
    assert ov["validation"]["reference"] == "onnxruntime" and ov["built_from"].startswith("model.onnx")
    assert man["file_roles"][ov["file"]].startswith("what openvino runs")
    with pytest.raises(ConfigError, match="--keep-program"):
        api.export(art, "tflite")
    with pytest.raises(ModelLoadError, match="--keep-program"):
        api.compress(art, "rtn", {"bits": 8}, tmp_path / "again")


def test_cli_export_takes_several_targets_into_one_artifact(tmp_path, monkeypatch):
    """`--target` is repeatable on export: every runtime lands in the one artifact, each validated; a failing later
    target removes the folder this call created (nothing half-requested is left), and a misspelt target fails
    before any export runs."""
    from typer.testing import CliRunner

    from edgekit import runtimes as runners
    from edgekit.cli import app

    out = tmp_path / "multi"
    r = CliRunner().invoke(app, ["export", "demo", "--target", "onnxruntime", "--target", "openvino", "-o", str(out)])
    assert r.exit_code == 0, r.output
    ex = read_manifest(out)["exports"]
    assert set(ex) == {"onnxruntime", "openvino"}
    assert all(max(o["max_abs"] for o in e["validation"]["outputs"].values()) <= 1e-4 for e in ex.values())

    r = CliRunner().invoke(app, ["export", "demo", "-t", "onnxruntime", "-t", "nosuch", "-o", str(tmp_path / "typo")])
    assert r.exit_code == 2 and "unknown target 'nosuch'" in r.output
    assert not (tmp_path / "typo").exists()

    real = runners.open_session

    def corrupt_ov(path, runtime, *a, **k):
        s = real(path, runtime, *a, **k)
        if runtime == "openvino":
            run = s.run
            s.run = lambda feeds: [o + 0.5 for o in run(feeds)]
        return s

    monkeypatch.setattr(runners, "open_session", corrupt_ov)
    bad = tmp_path / "bad"
    r = CliRunner().invoke(app, ["export", "demo", "-t", "onnxruntime", "-t", "openvino", "-o", str(bad)])
    assert r.exit_code == 2 and "differs from PyTorch" in r.output
    assert not bad.exists()
