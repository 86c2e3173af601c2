"""benchmarks/baselines.py on the demo digits CNN: cells build, score, time and tabulate; weight swap is exact."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
B = pytest.importorskip("_baselines_build")
bl = pytest.importorskip("baselines")


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))


def test_demo_cells_rtn_and_ort_dynamic(tmp_path: Path) -> None:
    spec = B.model_specs()["demo"]
    ctx = B.Context(spec, tmp_path / "work")
    bl.build(spec, ctx, "fp32", ctx.work / "fp32")
    fp32 = bl.run_cell(spec, ctx, "fp32", budget_s=0.05)
    rtn = bl.run_cell(spec, ctx, "rtn8", budget_s=0.05)
    dyn = bl.run_cell(spec, ctx, "ort_dynamic", budget_s=0.05)
    assert fp32["metrics"]["agreement"] == 1.0 and fp32["metrics"]["accuracy"] == fp32["reference"]["accuracy"]
    assert rtn["metrics"]["agreement"] >= 0.98  # int8 per-channel on a small CNN barely moves predictions
    assert rtn["info"]["validation"]["onnxruntime"]["passed"]
    assert rtn["info"]["command"].startswith("edgekit compress demo --method rtn --set bits=8")  # the public API
    assert rtn["size_mb"]["onnxruntime"] < fp32["size_mb"]["onnxruntime"]  # real int8 initializers
    assert set(rtn["latency"]) == {"onnxruntime", "openvino", "tflite"}
    assert rtn["info"]["tflite"]["weights"] == "int8 (ai-edge-quantizer weight-only)"
    for x in rtn["latency"].values():  # the row's ratio is the one its own interval was computed for
        assert x["p50_ms"] > 0 and x["fp32_p50_ms"] > 0 and abs(x["speedup"] * x["latency_vs_fp32"] - 1) < 0.01
        lo, hi = x["latency_vs_fp32_ci95"]
        assert lo <= hi and lo - 0.01 <= x["latency_vs_fp32"] <= hi + 0.01, x
    assert dyn["runtimes"] == ["onnxruntime"] and "skipped" in dyn["info"]["validation"]
    assert dyn["metrics"]["agreement"] > 0.9
    # LiteRT static INT8 has int8 inputs/outputs: the runner must quantize the float feed and dequantize the logits
    st = bl.run_cell(spec, ctx, "litert_static8", budget_s=0.05)
    from edgekit.runtimes import open_session

    interp = open_session(ctx.work / "litert_static8" / "exports" / "tflite" / "model.tflite", "tflite").info[
        "interpreter"]
    assert interp.get_input_details()[0]["dtype"] == np.int8
    assert st["runtimes"] == ["tflite"] and st["metrics"]["agreement"] >= 0.95
    from _baselines_table import model_table

    md = "\n".join(model_table("demo", {"subset": {"task": "digits", "options": {}, "limit": None,
                                                   "latency_input": "1x1x8x8"},
                                        "cells": {"fp32": fp32, "rtn8": rtn, "nncf_ptq": {"skipped": "why"}}}))
    assert "edgekit RTN W8" in md and "why" in md and md.count("\n|") == 5


