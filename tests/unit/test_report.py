"""Bench matrix (with a stand-in api) and reports: statuses, fidelity, ratios, slow-down notes, files, rebuild."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgekit import api
from edgekit.bench import MISMATCH, PASSED, bench, fidelity, slower_note
from edgekit.errors import ConfigError, ExportMismatchError
from edgekit.profile.report import markdown, pareto_mask, report, write_reports
from edgekit.targets import MeasureProtocol, load_target
from tests.unit._tiny_artifact import cached

TINY = MeasureProtocol(warmup=2, min_runs=10, min_seconds=0.2, max_cv=0.5, max_repeats=0, profile_runs=3)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return cached(tmp_path_factory.mktemp("r") / "base")


@pytest.fixture(scope="module")
def bench_doc(base, tmp_path_factory):
    """Bench with api.compress/export replaced: rtn = the same model (fidelity 1), magnitude fails validation."""
    out = tmp_path_factory.mktemp("bench")
    mp = pytest.MonkeyPatch()

    def compress(model_src, method, options, out, input_shape=None, overwrite=False):
        shutil.copytree(base, out, dirs_exist_ok=True)
        return Path(out)

    def export(src, target, out=None, input_shape=None, overwrite=False):
        if "magnitude" in str(src):
            raise ExportMismatchError("onnxruntime output differs from PyTorch (max |diff| 0.3 > 1e-4); "
                                      "lower the ratio")
        shutil.copytree(base, out)
        return Path(out)

    mp.setattr(api, "compress", compress)
    mp.setattr(api, "export", export)
    try:
        tgt = load_target("host-epyc-zen3").model_copy(update={"protocol": TINY})
        return out, bench("demo", [tgt], ["rtn", "magnitude"], out)
    finally:
        mp.undo()


def test_bench_rows_statuses_fidelity_and_ratios(bench_doc):
    out, doc = bench_doc
    rows = {r["variant"]: r for r in doc["rows"]}
    assert list(rows) == ["fp32", "rtn", "magnitude"] and doc["schema"] == "edgekit.bench/1"
    assert rows["fp32"]["status"] == PASSED and rows["fp32"]["speedup"] == 1.0
    assert rows["rtn"]["fidelity"]["metric"] == "top1_agreement" and rows["rtn"]["fidelity"]["value"] == 1.0
    assert rows["rtn"]["speedup"] == pytest.approx(rows["fp32"]["p50_ms"] / rows["rtn"]["p50_ms"])
    assert rows["rtn"]["size_mb"] == pytest.approx(rows["fp32"]["size_mb"]) and rows["rtn"]["peak_mb"] > 0
    m = rows["magnitude"]
    assert m["status"] == MISMATCH and "max |diff|" in m["reason"] and m["p50_ms"] is None
    for f in ("bench.json", "bench.md", "bench.html"):
        assert (out / f).stat().st_size > 100
    assert "exported but failed validation" in (out / "bench.md").read_text()


def test_report_rebuilds_from_json_alone(bench_doc):
    out, _ = bench_doc
    (out / "bench.md").unlink()
    (out / "bench.html").unlink()
    paths = report(out)
    assert {p.name for p in paths} == {"bench.md", "bench.html"}
    page = (out / "bench.html").read_text()
    assert page.count("data:image/png;base64,") >= 2          # Pareto scatter + latency distribution
    assert "Pareto" in page and "host-epyc-zen3" in page


def test_profile_report_marks_fallback_and_estimates(tmp_path):
    res = {"target": "npu", "runtime": "openvino", "status": "ok",
           "device": {"requested": "NPU", "used": "CPU", "fallback_used": True},
           "threads": {"requested": 4, "used": 2, "capped_to_host": True},
           "timing_ms": {"load": 5.0, "first_inference": 1.0,
                         "warm": {"p50": 1.0, "p90": 1.2, "p99": 2.0, "robust_cv": 0.02,
                                  "quantiles_ms": list(np.linspace(0.9, 2.0, 101))}},
           "stable": True, "memory_mb": {"load_peak": 90.0, "inference_peak": 95.0, "model_peak": 50.0},
           "memory_budget": {"budget_mb": 40.0, "exceeds": True},
           "ops": {"source": "openvino-perf-counters", "top": [{"op_type": "Convolution", "time_ms": 0.5, "share": 1}],
                   "fallback_ops": ["Convolution"], "note": "requested NPU is not present"},
           "estimate": {"target": {"roofline_ms": 0.01}, "calibrated_ms": 0.2}}
    doc = {"kind": "profile", "created": "now", "host": {"cpu": "x", "cores": 2},
           "results": [res, {"target": "bad", "runtime": "tflite", "status": "error", "error": "boom"}]}
    paths = write_reports(doc, tmp_path)
    md = markdown(doc)
    assert [p.name for p in paths] == ["profile.json", "profile.md", "profile.html"]
    assert "CPU (fallback from NPU)" in md and "EXCEEDS" in md and "2 of 4" in md and "error: boom" in md
    assert "ran off the requested device: Convolution" in md and "(est.)" in md
    assert json.loads(paths[0].read_text())["results"][0]["target"] == "npu"


def test_report_on_folder_without_json(tmp_path):
    with pytest.raises(ConfigError, match="no bench.json or profile.json"):
        report(tmp_path)


def test_pareto_mask():
    pts = [(1.0, 10.0, 0.9), (2.0, 5.0, 0.9), (2.0, 10.0, 0.8), (1.0, 10.0, 0.95)]
    assert pareto_mask(pts) == [False, True, False, True]


def test_fidelity_metrics():
    ref = [np.array([[0.1, 0.9]]), np.array([[0.8, 0.2]])]
    assert fidelity(ref, [np.array([[0.2, 0.7]]), np.array([[0.1, 0.9]])])["value"] == 0.5
    emb = [np.array([1.0, 0.0, 0.0])]
    f = fidelity(emb, [np.array([1.0, 1.0, 0.0])])
    assert f["metric"] == "cosine" and f["value"] == pytest.approx(1 / np.sqrt(2))


def test_slower_note_names_the_op_types_that_grew():
    ref = {"by_type": {"Conv": {"time_ms": 1.0}, "Gemm": {"time_ms": 0.5}}}
    var = {"by_type": {"Conv": {"time_ms": 0.8}, "Gemm": {"time_ms": 0.6}, "DequantizeLinear": {"time_ms": 0.7}}}
    n = slower_note(1.4, ref, var)
    assert [d["op_type"] for d in n["op_diff"]] == ["DequantizeLinear", "Gemm"]
    assert n["op_diff"][0]["delta_ms"] == pytest.approx(0.7) and "1.40x" in n["summary"]
    assert "DequantizeLinear +0.7 ms" in n["summary"]


def test_slower_note_without_timing_names_the_ops_the_variant_added():
    """LiteRT's Python API has no per-op timing: the note then names the op types the slower file added (counts),
    which is what makes a forced INT8 LiteRT file slower (QUANTIZE/DEQUANTIZE around ops left float)."""
    ref = {"by_type": {"CONV_2D": {"time_ms": None, "count": 4}, "FULLY_CONNECTED": {"time_ms": None, "count": 1}}}
    var = {"by_type": {"CONV_2D": {"time_ms": None, "count": 4}, "FULLY_CONNECTED": {"time_ms": None, "count": 1},
                       "QUANTIZE": {"time_ms": None, "count": 3}, "DEQUANTIZE": {"time_ms": None, "count": 2}}}
    n = slower_note(1.2, ref, var)
    assert n["op_count_diff"] == {"QUANTIZE": 3, "DEQUANTIZE": 2} and n["op_diff"] == []
    assert "ops added vs fp32: QUANTIZE x3, DEQUANTIZE x2" in n["summary"] and "1.20x" in n["summary"]
    same = slower_note(1.1, ref, ref)
    assert same["op_count_diff"] == {} and "ops added vs fp32: none" in same["summary"]


def test_bench_fidelity_runs_on_the_users_data_when_given(tmp_path):
    """With --data, bench compares variants with FP32 on the last samples of that data (a data-calibrated INT8 file
    judged on random-normal inputs read 0.44 top-1 agreement on ResNet-20, 1.0 on the data); without, on seeded random
    inputs; the row says which, and so does the matrix."""
    from edgekit.bench import N_FIDELITY, data_feeds
    from edgekit.data import DataSource
    from edgekit.models.digits_cnn import digits_split

    import torch

    x = digits_split()[0][:40]
    tgt = load_target("host-epyc-zen3").model_copy(update={"protocol": TINY})
    doc = bench("demo", [tgt], ["rtn"], tmp_path / "b", data=DataSource([x]))
    rtn = next(r for r in doc["rows"] if r["variant"] == "rtn")
    assert rtn["fidelity"]["inputs"] == f"the last {N_FIDELITY} samples of --data" and rtn["fidelity"]["value"] == 1.0
    assert "your data" in markdown(doc)
    doc2 = bench("demo", [tgt], ["rtn"], tmp_path / "c")
    assert next(r for r in doc2["rows"] if r["variant"] == "rtn")["fidelity"]["inputs"].endswith("random inputs")
    spec = [{"name": "input", "shape": [1, 1, 8, 8], "dtype": "float32"}]
    feeds = data_feeds(DataSource([x, torch.zeros(40)]), spec, None, 4)  # + one label per sample: inputs only
    assert len(feeds) == 4 and np.array_equal(feeds[-1]["input"], x[39:40].numpy())
    q = data_feeds(DataSource([x]), [{**spec[0], "dtype": "int8", "quantized": True}], None, 2)
    assert q[-1]["input"].dtype == np.float32 and np.array_equal(q[-1]["input"], x[39:40].numpy())  # real values:
    # a full-integer LiteRT input quantizes them itself (cast to int8 here, the ResNet-20 file read 0.06 agreement)
    assert data_feeds(DataSource([x]), spec, None, 41) is None  # too few samples: random inputs instead
    assert data_feeds(DataSource([x[:, :, :4]]), spec, None, 4) is None  # does not fit the input
