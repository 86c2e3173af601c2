"""Recipes: a chain runs and records gates; bad YAML names file, line and field; failed gates exit 1."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from edgekit.cli import app

runner = CliRunner()


def _write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_recipe_chain_and_gates(tmp_path):
    r = _write(tmp_path, f"""model: demo
steps:
  - method: magnitude
    options: {{sparsity: 0.2}}
  - method: rtn
    options: {{bits: 8}}
targets: [openvino]
gates: {{min_cosine: 0.99, samples: 8}}
out: {tmp_path / 'art'}
""")
    res = runner.invoke(app, ["run", str(r)])
    assert res.exit_code == 0, res.stdout + res.stderr
    man = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert [m["name"] for m in man["methods"]] == ["magnitude", "rtn"]
    assert man["recipe"]["gates"]["cosine"] > 0.99 and man["recipe"]["gates"]["failed"] == []
    assert man["methods"][0]["report"]["extra"]["sparsity_achieved"] > 0.19


def test_failed_gate_exits_1_and_keeps_artifact(tmp_path):
    r = _write(tmp_path, f"""model: demo
steps: [{{method: rtn, options: {{bits: 2}}}}]
gates: {{min_top1_agreement: 0.999, samples: 8}}
out: {tmp_path / 'art'}
""")
    res = runner.invoke(app, ["run", str(r)])
    assert res.exit_code == 1 and "gates failed" in res.stdout
    assert (tmp_path / "art" / "manifest.json").exists()


def test_bad_recipe_names_line_and_field(tmp_path):
    r = _write(tmp_path, "model: demo\nsteps:\n  - method: rtn\n    optoins: {bits: 8}\n")
    res = runner.invoke(app, ["run", str(r)])
    assert res.exit_code == 2
    text = res.stderr + res.stdout
    assert "r.yaml:4" in text and "optoins" in text and "options" in text
    r = _write(tmp_path, "model: demo\nsteps: [\n")
    res = runner.invoke(app, ["run", str(r)])
    assert res.exit_code == 2 and "malformed YAML" in res.stderr + res.stdout
