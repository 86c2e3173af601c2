"""Interleaved A/B timing (edgekit.profile.interleaved), its ratio statistics, host load and provenance.

Timing assertions are coarse on purpose (a 3x-work file must be > 1.5x, an identical copy within 0.5-2x): the
box is shared and loaded, and only the ratio of one interleaved run is claimed to hold up under load.
"""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from edgekit.errors import ConfigError
from edgekit.profile import host_load, interleaved, provenance, ratio_spread
from edgekit.profile.runinfo import load_during
from tests.unit._matmul_chain import D, ROWS, matmul_chain


@pytest.fixture(scope="module")
def chains(tmp_path_factory):
    d = tmp_path_factory.mktemp("chains")
    light = matmul_chain(d / "light.onnx", 2)
    heavy = matmul_chain(d / "heavy.onnx", 6)   # 3x the MatMul work of light
    twin = shutil.copy(light, d / "light_copy.onnx")
    return light, heavy, twin


def test_heavy_file_is_slower_with_its_spread(chains):
    light, heavy, twin = chains
    x = np.random.default_rng(0).standard_normal((ROWS, D)).astype(np.float32)
    res = interleaved([(light, "onnxruntime", "CPU", 1), (heavy, "onnxruntime", "CPU", 1),
                       {"path": twin, "runtime": "onnxruntime", "threads": 1, "label": "twin"}],
                      rounds=40, warmup=3, feeds={"x": x})
    assert res["status"] == "ok", res.get("error")
    first, hv, tw = res["files"]
    assert first["ratio"] is None and res["reference"] == "light.onnx" and tw["label"] == "twin"
    assert res["rounds"] >= 40 and all(f["timing_ms"]["runs"] == res["rounds"] for f in res["files"])
    r = hv["ratio"]
    assert 1.5 < r["p50"] < 6, r
    assert r["ci95"][0] <= r["p50"] <= r["ci95"][1] and r["per_round"]["p10"] <= r["per_round"]["p90"]
    assert len(r["blocks"]) == 5 and r["block_range"][0] <= r["block_range"][1]
    assert 0.5 < tw["ratio"]["p50"] < 2, tw["ratio"]            # the same work on both sides: about 1
    assert res["load"]["loadavg_before"] and res["load"]["cores"] >= 1 and "high" in res["load"]
    assert res["provenance"]["argv"] and res["versions"]["onnxruntime"]["onnxruntime"]


def test_random_feeds_from_input_hints_and_runtime_from_suffix(chains):
    light, heavy, _ = chains
    res = interleaved([{"path": light}, {"path": heavy}], rounds=5, warmup=0,
                      input_hints=[[{"name": "x", "shape": [ROWS, D]}]] * 2, with_provenance=False)
    assert res["status"] == "ok" and res["files"][0]["runtime"] == "onnxruntime" and "provenance" not in res


def test_ratio_spread_is_paired_so_drift_cancels():
    ref = np.linspace(1.0, 3.0, 60)          # the host slows down 3x during the run ...
    other = 2.0 * ref                         # ... and hits both files alike
    s = ratio_spread(ref, other, blocks=4, n_boot=500)
    assert s["p50"] == pytest.approx(2.0) and s["per_round"]["p10"] == pytest.approx(2.0)
    assert s["per_round"]["p90"] == pytest.approx(2.0) and s["blocks"] == pytest.approx([2.0] * 4)
    noisy = other * np.random.default_rng(0).uniform(0.8, 1.25, 60)
    s = ratio_spread(ref, noisy, n_boot=500)
    assert s["ci95"][0] < s["p50"] < s["ci95"][1] and s["per_round"]["p10"] < 2.0 < s["per_round"]["p90"]


def test_bad_input_is_one_line(chains, tmp_path):
    light = chains[0]
    cases = [([], {}), ([(tmp_path / "nope.onnx", "onnxruntime", "CPU", 1)], {}),
             ([(light, "tensorrt", "CPU", 1)], {}), ([(light, "onnxruntime", "CPU", 1)], {"rounds": 1})]
    for files, kw in cases:
        with pytest.raises(ConfigError) as e:
            interleaved(files, **kw)
        assert "\n" not in str(e.value)


def test_a_broken_file_fails_the_whole_comparison_naming_it(chains, tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not an onnx file")
    res = interleaved([(chains[0], "onnxruntime", "CPU", 1), (bad, "onnxruntime", "CPU", 1)], rounds=3,
                      with_provenance=False)
    assert res["status"] == "error" and "broken.onnx" in res["error"] and "\n" not in res["error"]


def test_load_is_high_above_three_quarters_of_the_cores():
    assert host_load(cores=2, loadavg=[1.4, 1.0, 1.0])["high"] is False
    hl = host_load(cores=2, loadavg=[1.6, 1.0, 1.0])
    assert hl["high"] and "1.60 on 2 cores" in hl["warning"]
    quiet = host_load(cores=2, loadavg=[0.1, 0.1, 0.1])
    # after a long run our own 2 threads explain the load: not others' work
    assert not load_during(quiet, host_load(cores=2, loadavg=[2.0, 1, 1]), threads=2, seconds=600)["high"]
    during = load_during(quiet, host_load(cores=2, loadavg=[2.0, 1, 1]), threads=2, seconds=1)
    assert during["high"] and "during the run" in during["warning"] and during["others_after_est"] > 1.5


def test_provenance_records_command_commit_versions_and_host():
    p = provenance(["edgekit", "profile", "a b", "--target", "host"], threads=2)
    assert p["argv"][2] == "a b" and p["command"] == "edgekit profile 'a b' --target host" and p["threads"] == 2
    assert "numpy" in p["versions"] and p["cores"] >= 1 and isinstance(p["isa"], list) and "T" in p["timestamp"]
    assert p["load"]["cores"] == p["cores"]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=str(__import__("pathlib").Path(__file__).parent)).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        head = None
    if head:
        assert p["git"]["commit"] == head and isinstance(p["git"]["dirty"], bool)
    else:
        assert p["git"] is None


def test_onnxruntime_sessions_stop_spinning_in_the_interleaved_loop(chains, monkeypatch):
    """Several ORT sessions in one process: each session's threads must stop spinning when its run ends, or they
    take the cores from the next file's run (EfficientNet-Lite0 FP32 measured 2.4x slower interleaved here)."""
    import edgekit.runtimes as rt
    from edgekit.profile.interleave import run_interleaved

    light, heavy, _ = chains
    seen = []
    real = rt.open_session

    def spy(*a, **k):
        s = real(*a, **k)
        seen.append(s.info["session"].get_session_options().get_session_config_entry("session.force_spinning_stop"))
        return s

    monkeypatch.setattr(rt, "open_session", spy)
    spec = {"files": [{"path": str(p), "runtime": "onnxruntime", "threads": 1, "device": "CPU", "fallback": None,
                       "ov_dynamic_quant": False, "input_hint": [{"name": "x", "shape": [ROWS, D]}], "label": p.name}
                      for p in (light, heavy)], "rounds": 2, "warmup": 0, "min_seconds": 0.0, "max_rounds": 2,
            "seed": 0}
    assert run_interleaved(spec)["status"] == "ok"
    assert seen == ["1", "1"]
    plain = real(light, "onnxruntime", threads=1)   # a single session (profile, eval, an app) keeps ORT's default
    assert "session.force_spinning_stop" not in plain.info["config"]
