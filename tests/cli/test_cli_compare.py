"""`edgekit profile A B --target T`: interleaved comparison with ratios to the first; one artifact keeps its protocol
and now carries the host load; provenance in profile.json. Quick protocol, coarse ratio assertions."""
from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from edgekit.cli import app
from edgekit.targets import load_target
from tests.unit._matmul_chain import chain_artifact

runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("cmp")
    light, heavy = chain_artifact(d / "light", 2), chain_artifact(d / "heavy", 6)   # heavy: 3x the MatMuls
    quick = load_target("x86-avx2-ort").model_dump()
    quick.update(name="quick-ort", threads=1, protocol={"warmup": 2, "min_runs": 30, "min_seconds": 0.0,
                                                         "max_cv": 5.0, "max_repeats": 0, "profile_runs": 0})
    tgt = d / "quick.yaml"
    tgt.write_text("# quick protocol for tests; source: x86-avx2-ort\n" + yaml.safe_dump(quick))
    return d, light, heavy, tgt


def _text(res) -> str:
    return (res.stderr or "") + (res.stdout or "")


def test_profile_two_artifacts_writes_ratios(setup):
    d, light, heavy, tgt = setup
    out = d / "prof"
    res = runner.invoke(app, ["profile", str(light), str(heavy), "--target", str(tgt), "-o", str(out)])
    assert res.exit_code == 0, _text(res)
    doc = json.loads((out / "profile.json").read_text())
    assert doc["kind"] == "compare" and doc["reference"] == str(light) and doc["provenance"]["argv"]
    r = doc["results"][0]
    assert r["status"] == "ok" and r["target"] == "quick-ort" and r["rounds"] >= 30
    ref, other = r["files"]
    assert ref["ratio"] is None and ref["artifact"] == str(light) and other["file"] == "model.onnx"
    assert other["ratio"]["p50"] > 1.5 and other["ratio"]["ci95"][0] <= other["ratio"]["p50"]
    assert r["load"]["loadavg_before"] and set(other["ratio"]["per_round"]) == {"p10", "p25", "p50", "p75", "p90"}
    md = (out / "profile.md").read_text()
    assert "ratio vs first (p50)" in md and "1 (reference)" in md and "Command:" in md
    assert (out / "profile.html").stat().st_size > 1000 and "ratios to the first artifact" in _text(res)


def test_profile_one_artifact_carries_host_load(setup):
    d, light, _, tgt = setup
    res = runner.invoke(app, ["profile", str(light), "--target", str(tgt), "-o", str(d / "one")])
    assert res.exit_code == 0, _text(res)
    doc = json.loads((d / "one" / "profile.json").read_text())
    hl = doc["results"][0]["host_load"]
    assert doc["kind"] == "profile" and hl["loadavg_before"] and hl["cores"] >= 1 and isinstance(hl["high"], bool)
    assert (hl["warning"] is not None) == hl["high"] and doc["provenance"]["git"] is not None
    assert "host load 1m before/after" in (d / "one" / "profile.md").read_text()


def test_bad_compare_input_exits_2_with_one_line(setup):
    d, light, heavy, tgt = setup
    for args, needle in ((["profile", str(light), "--target", str(tgt), "--rounds", "5"], "--rounds applies"),
                         (["profile", str(light), str(heavy), "--target", str(tgt), "--rounds", "1"], "--rounds 1"),
                         (["profile", str(light), str(d), "--target", str(tgt)], "neither an artifact")):
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and needle in _text(res) and "Traceback" not in _text(res), _text(res)
