"""CLI for targets/profile/bench/report: tables on success, one line and exit code 2 on user errors."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from edgekit.cli import app

runner = CliRunner()


def _text(res) -> str:
    return (res.stderr or "") + (res.stdout or "")


def test_targets_list_and_show():
    res = runner.invoke(app, ["targets", "list"])
    assert res.exit_code == 0 and "rpi5-litert" in res.stdout and "intel-npu-openvino" in res.stdout
    res = runner.invoke(app, ["targets", "show", "intel-npu-openvino"])
    assert res.exit_code == 0 and "fallback: CPU" in res.stdout and "static_shapes: true" in res.stdout


def test_unknown_target_exits_2_with_suggestion(tmp_path):
    res = runner.invoke(app, ["targets", "show", "rpi5"])
    assert res.exit_code == 2 and "did you mean 'rpi5-litert'" in _text(res).lower()
    res = runner.invoke(app, ["profile", str(tmp_path), "--target", "pixel8-litrt"])
    assert res.exit_code == 2 and "pixel8-litert" in _text(res) and "Traceback" not in _text(res)
    res = runner.invoke(app, ["bench", "demo", "--targets", "nope", "-o", str(tmp_path / "b")])
    assert res.exit_code == 2 and "unknown target 'nope'" in _text(res)


def test_profile_on_a_folder_that_is_no_artifact_exits_2(tmp_path):
    res = runner.invoke(app, ["profile", str(tmp_path), "--target", "host-epyc-zen3"])
    assert res.exit_code == 2 and "neither an artifact" in _text(res) and "Traceback" not in _text(res)


def test_report_rebuilds_and_missing_json_exits_2(tmp_path):
    res = runner.invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 2 and "no bench.json or profile.json" in _text(res)
    doc = {"kind": "profile", "created": "t", "host": {"cpu": "c", "cores": 2},
           "results": [{"target": "x", "runtime": "onnxruntime", "status": "error", "error": "boom"}]}
    (tmp_path / "profile.json").write_text(json.dumps(doc))
    res = runner.invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 0 and (tmp_path / "profile.html").is_file()
    assert "error: boom" in (tmp_path / "profile.md").read_text()
