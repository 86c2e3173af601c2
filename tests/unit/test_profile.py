"""Profiling: noise gate, statistics, per-phase peak RSS, and the JSON schema for ONNX Runtime and OpenVINO."""
from __future__ import annotations

import importlib.util
import itertools

import numpy as np
import pytest

from tests.unit._tiny_artifact import cached
from edgekit.errors import ConfigError, MissingDependencyError
from edgekit.profile import profile_artifact
from edgekit.profile.measure import summarize, time_protocol
from edgekit.targets import MeasureProtocol, load_target

TINY = MeasureProtocol(warmup=2, min_runs=10, min_seconds=0.2, max_cv=0.5, max_repeats=1, profile_runs=5)


class FakeRunner:
    """Advances a fake clock by the next duration on each call: deterministic 'latencies' without sleeping."""

    def __init__(self, durations_s):
        self.t, self.calls, self._d = 0.0, 0, itertools.cycle(durations_s)

    def clock(self) -> float:
        return self.t

    def __call__(self) -> None:
        self.calls += 1
        self.t += next(self._d)


def test_noise_gate_fires_on_a_noisy_runner():
    rng = np.random.default_rng(0)
    fake = FakeRunner(list(rng.uniform(0.5e-3, 3e-3, size=997)))         # +-70 % spread
    proto = MeasureProtocol(warmup=3, min_runs=40, min_seconds=0.01, max_cv=0.05, max_repeats=2)
    res = time_protocol(fake, proto, clock=fake.clock)
    assert len(res["attempts"]) == 3 and res["stable"] is False          # repeated, bounded, then marked
    assert all(a["robust_cv"] > 0.05 for a in res["attempts"])
    assert fake.calls == 3 + sum(a["runs"] for a in res["attempts"])


def test_quiet_runner_passes_first_time_and_honours_min_runs_and_seconds():
    fake = FakeRunner([1e-3, 1.01e-3, 0.99e-3])
    proto = MeasureProtocol(warmup=5, min_runs=20, min_seconds=0.5, max_cv=0.05, max_repeats=2)
    res = time_protocol(fake, proto, clock=fake.clock)
    assert len(res["attempts"]) == 1 and res["stable"] is True
    w = res["warm"]
    assert w["runs"] >= 500 and w["seconds"] >= 0.5 - 1e-9                # min_seconds dominates min_runs
    assert w["p50"] == pytest.approx(1.0, rel=0.02) and w["min"] == pytest.approx(0.99)


def test_rare_spike_does_not_trip_the_gate_but_shows_in_p99():
    fake = FakeRunner([1e-3] * 99 + [50e-3])
    res = time_protocol(fake, MeasureProtocol(warmup=0, min_runs=100, min_seconds=0, max_cv=0.05), clock=fake.clock)
    assert res["stable"] and res["warm"]["cv"] > 1 and res["warm"]["p99"] > 1.4


def test_summarize_statistics():
    s = summarize(list(range(1, 101)))
    assert s["min"] == 1 and s["p50"] == 50.5 and s["p90"] == pytest.approx(90.1) and s["runs"] == 100
    assert s["std"] == pytest.approx(np.std(np.arange(1, 101), ddof=1)) and len(s["quantiles_ms"]) == 101
    assert s["quantiles_ms"][0] == 1 and s["quantiles_ms"][-1] == 100


def test_peak_rss_separates_phases():
    """In a fresh process, with pages that are certainly new (an anonymous mmap written page by page): inside a big
    test process a numpy buffer may reuse memory that is already resident, leaving the high-water mark unchanged."""
    import subprocess
    import sys

    code = ("import mmap\nfrom edgekit.profile.measure import PeakRSS\nmem = PeakRSS()\nmem.reset()\n"
            "m = mmap.mmap(-1, 60 * 2**20)\nfor i in range(0, len(m), 4096):\n    m[i] = 1\nm.close()\n"
            "a = mem.peak_mb()\nmem.reset()\nprint(a - mem.peak_mb())\nmem.close()")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-1500:]
    assert float(res.stdout.strip().splitlines()[-1]) > 40  # the reset forgot the earlier phase's 60 MB peak


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return cached(tmp_path_factory.mktemp("p") / "art")


def test_schema_for_onnxruntime_and_openvino(art, tmp_path):
    ort_t = load_target("host-epyc-zen3").model_copy(update={"protocol": TINY, "memory_budget_mb": 0.001})
    npu_t = load_target("intel-npu-openvino").model_copy(update={"protocol": TINY})
    doc = profile_artifact(art, [ort_t, npu_t], out_json=tmp_path / "p.json")
    assert (tmp_path / "p.json").is_file() and doc["schema"] == "edgekit.profile/1"
    assert doc["cost"]["macs"] == 4 * 36 * 9 + 144 * 10
    for r in doc["results"]:
        assert r["status"] == "ok", r.get("error")
        assert {"target", "runtime", "file", "file_bytes", "device", "threads", "timing_ms", "stable", "attempts",
                "throughput_per_s", "memory_mb", "memory_budget", "ops", "estimate", "versions", "subprocess"} <= set(r)
        w = r["timing_ms"]["warm"]
        assert w["min"] <= w["p50"] <= w["p90"] <= w["p99"] and w["runs"] >= 10
        assert r["timing_ms"]["load"] > 0 and r["timing_ms"]["first_inference"] > 0
        m = r["memory_mb"]
        assert m["load_peak"] > m["baseline"] > 0 and m["inference_peak"] > 0
        assert r["estimate"]["label"] == "estimate" and r["estimate"]["calibrated_ms"] > 0
        assert r["ops"]["top"] and sum(o["share"] for o in r["ops"]["by_type"].values()) == pytest.approx(1.0)
        assert r["file_bytes"] > 1000 and r["subprocess"]["overhead_s"] > 0
    ort_r, ov_r = doc["results"]
    assert ort_r["ops"]["source"] == "onnxruntime-profiler" and "Conv" in str(ort_r["ops"]["by_type"])
    assert ort_r["memory_budget"]["exceeds"] is True                     # 0.001 MB budget
    assert ort_r["device"] == {"requested": "CPU", "used": "CPU", "fallback_used": False,
                               "execution_devices": ["CPU"]}
    assert ov_r["ops"]["source"] == "openvino-perf-counters" and ov_r["memory_budget"]["exceeds"] is False
    if "NPU" not in ov_r["device"]["execution_devices"]:                 # no NPU on this host: fallback reported
        assert ov_r["device"]["fallback_used"] and ov_r["device"]["used"] == "CPU"
        assert ov_r["ops"]["fallback_ops"] and "NPU" in ov_r["ops"]["note"]
    assert ov_r["threads"]["used"] <= ov_r["threads"]["requested"] == 4


def test_missing_runtime_names_the_extra(art, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "ai_edge_litert" else real(n, *a))
    with pytest.raises(MissingDependencyError, match=r"edgekit\[tflite\]"):
        profile_artifact(art, ["rpi5-litert"])


def test_missing_export_fails_before_measuring(art):
    with pytest.raises(ConfigError, match="no tflite export"):
        profile_artifact(art, ["host-epyc-zen3", "rpi5-litert"])


def test_ort_op_profile_gives_depthwise_convs_their_own_row(tmp_path):
    """A depthwise conv ([C, 1, k, k] weight on C channels) is its own row in ONNX Runtime's per-op summary, in float
    and in INT8 (QLinearConv); a conv on a 1-channel input with a [C, 1, k, k] weight is not depthwise."""
    import onnx
    import torch
    from torch import nn

    from edgekit.profile.ops import _depthwise, op_profile

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(1, 8, 3, padding=1)              # weight [8, 1, 3, 3] on 1 channel: not depthwise
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)      # depthwise
            self.pw = nn.Conv2d(8, 16, 1)

        def forward(self, x):
            return self.pw(torch.relu(self.dw(torch.relu(self.stem(x)))))

    path = tmp_path / "m.onnx"
    torch.onnx.export(Net().eval(), (torch.randn(1, 1, 16, 16),), str(path), input_names=["x"], dynamo=False)
    onnx.checker.check_model(str(path))
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 1, 16, 16)).astype(np.float32)}
    res = op_profile(path, "onnxruntime", 1, "CPU", None, feeds, 5)
    kinds = {k for k in res["by_type"] if "Conv" in k}
    assert any(k.endswith("(depthwise)") for k in kinds), kinds
    assert any(not k.endswith("(depthwise)") for k in kinds), kinds
    dw = [v["count"] for k, v in res["by_type"].items() if k.endswith("(depthwise)")]
    assert sum(dw) == 1, res["by_type"]                          # the stem is not counted as depthwise
    # the INT8 file: ORT runs QLinearConv NHWC with a prepacked weight its events do not list; the optimized
    # graph's group attribute tells the depthwise one
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([feeds] * 4)

        def get_next(self):
            return next(self.it, None)

    q = tmp_path / "q.onnx"
    quantize_static(str(path), str(q), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    res = op_profile(q, "onnxruntime", 1, "CPU", None, feeds, 5)
    qdw = {k: v["count"] for k, v in res["by_type"].items() if k.endswith("(depthwise)")}
    assert qdw == {"QLinearConv (depthwise)": 1}, res["by_type"]
    assert _depthwise("QLinearConv", [{"uint8": [1, 14, 14, 32]}, {}, {}, {"int8": [32, 1, 3, 3]}])  # NHWC int8
    assert not _depthwise("QLinearConv", [{"uint8": [1, 32, 14, 14]}, {}, {}, {"int8": [64, 32, 1, 1]}])
    assert not _depthwise("Conv", [{"float": [1, 1, 28, 28]}, {"float": [16, 1, 3, 3]}])
    assert not _depthwise("Relu", [{"float": [1, 8, 4, 4]}]) and not _depthwise("Conv", None)
