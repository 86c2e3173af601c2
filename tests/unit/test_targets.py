"""Target profiles: every bundled YAML validates; bad names/files give one-line errors with file, line and field."""
from __future__ import annotations

from pathlib import Path

import pytest

from edgekit.errors import ConfigError
from edgekit.targets import TargetProfile, host_target, list_targets, load_target, target_names

RPI = Path(__file__).resolve().parents[2] / "edgekit" / "targets" / "rpi5-litert.yaml"


def test_bundled_profiles_cover_the_required_targets():
    ts = {t.name: t for t in list_targets()}
    assert set(ts) == set(target_names())
    runtimes = {(t.runtime, t.device) for t in ts.values()}
    assert {("onnxruntime", "CPU"), ("openvino", "CPU"), ("openvino", "NPU"), ("tflite", "CPU")} <= runtimes
    npu = ts["intel-npu-openvino"]
    assert npu.static_shapes and npu.fallback == "CPU"
    assert ts["rpi5-litert"].hardware.cores == 4 and "A76" in ts["rpi5-litert"].hardware.name
    for t in ts.values():
        assert t.hardware.peak_gflops and t.hardware.mem_bandwidth_gbs > 0 and t.round_to >= 1
        assert t.protocol.min_runs >= 3 and t.memory_budget_mb > 0
        if t.name == "host":  # detected at load, no YAML (tests/unit/test_host_target.py)
            continue
        text = (RPI.parent / f"{t.name}.yaml").read_text()
        assert text.lstrip().startswith("#") and "ource" in text  # the public source is in a comment


def test_zen3_profile_keeps_anchor_figures_and_host_is_detected(monkeypatch):
    z = load_target("host-epyc-zen3")
    assert z.hardware.peak_gflops["fp32"] == 153.0 and z.hardware.mem_bandwidth_gbs == 19.8 and z.threads == 2
    monkeypatch.delenv("EDGEKIT_HOST_TARGET", raising=False)
    assert host_target().name == "host" and "detected" in host_target().hardware.source


def test_unknown_name_suggests_and_lists():
    with pytest.raises(ConfigError) as e:
        load_target("rpi5-litrt")
    msg = str(e.value)
    assert "did you mean 'rpi5-litert'" in msg.lower() and "x86-avx2-ort" in msg and "\n" not in msg


def test_missing_yaml_path(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_target(tmp_path / "nope.yaml")


def _variant(tmp_path: Path, old: str, new: str) -> Path:
    p = tmp_path / "t.yaml"
    text = RPI.read_text()
    assert old in text
    p.write_text(text.replace(old, new, 1))
    return p


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if needle in ln)


def test_unknown_nested_field_names_file_line_and_field(tmp_path):
    p = _variant(tmp_path, "  min_runs: 50", "  min_runz: 50")
    with pytest.raises(ConfigError) as e:
        load_target(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:{_line_of(p, 'min_runz')}:") and "protocol.min_runz" in msg and "min_runs" in msg


def test_unknown_top_field(tmp_path):
    p = _variant(tmp_path, "threads: 4", "threadz: 4")
    with pytest.raises(ConfigError, match=rf":{_line_of(p, 'threadz')}: unknown field 'threadz'"):
        load_target(p)


def test_malformed_yaml_names_line(tmp_path):
    p = _variant(tmp_path, "threads: 4", "threads: [4")
    with pytest.raises(ConfigError, match=r"t\.yaml:\d+: malformed YAML"):
        load_target(p)


def test_bad_value_names_field_and_line(tmp_path):
    p = _variant(tmp_path, "runtime: tflite", "runtime: tensorrt")
    with pytest.raises(ConfigError, match=rf":{_line_of(p, 'tensorrt')}: field 'runtime'"):
        load_target(p)


def test_npu_device_only_for_openvino(tmp_path):
    p = _variant(tmp_path, "device: CPU", "device: NPU")
    with pytest.raises(ConfigError, match="CPU only"):
        load_target(p)


def test_user_yaml_loads_and_object_passes_through(tmp_path):
    p = _variant(tmp_path, "name: rpi5-litert", "name: my-board")
    t = load_target(p)
    assert isinstance(t, TargetProfile) and t.name == "my-board" and load_target(t) is t
