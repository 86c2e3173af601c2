"""OpenVINO's own dynamic activation quantization as a deploy form: a candidate of `--deploy auto` on integer-weight
exports, validated with the same floors, timed in the same loop, and recorded so every reader opens it that way."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from edgekit.runtimes import OV_DQ_GROUP, open_session, ov_dynamic_quant

FACTORY = f"{os.path.relpath(Path(__file__).with_name('test_deploy_int8.py'))}:TinyEncoder"


def test_recorded_config_decides_how_readers_open_the_file(tmp_path: Path) -> None:
    assert not ov_dynamic_quant(None) and not ov_dynamic_quant({"validation": {}})
    assert not ov_dynamic_quant({"validation": {"runtime_config": {"DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}}})
    assert ov_dynamic_quant({"validation": {"runtime_config": {"DYNAMIC_QUANTIZATION_GROUP_SIZE": "32"}}})
    from edgekit import api

    art = api.export("demo", "openvino", tmp_path / "a")
    xml = art / "exports/openvino/model.xml"
    on, off = open_session(xml, "openvino", ov_dynamic_quant=True), open_session(xml, "openvino")
    assert on.info["config"]["DYNAMIC_QUANTIZATION_GROUP_SIZE"] == str(OV_DQ_GROUP)
    assert off.info["config"]["DYNAMIC_QUANTIZATION_GROUP_SIZE"] == "0"


def test_deploy_auto_times_and_validates_openvino_dynamic_quantization(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    import edgekit

    out = tmp_path / "art"
    edgekit.compress(FACTORY, "rtn", {"bits": 8}, out, input_shape="1x16:int64,1x16:int64",
                     runtimes=["openvino"], deploy="auto")
    man = json.loads((out / "manifest.json").read_text())
    e = man["exports"]["openvino"]
    d = e["deploy"]
    assert {"fp32", "int8", "default", "ov-dynamic-quant"} <= set(d["speed"]["median_ms"]), d["speed"]
    if d["form"] == "openvino-dynamic-quantization":  # kept: its validation (with the setting) is the entry's
        assert ov_dynamic_quant(e) and e["validation"]["passed"]
        assert d["default_validation"]["runtime_config"]["DYNAMIC_QUANTIZATION_GROUP_SIZE"] == "0"
    else:  # not kept: its verdict is still on record, and the entry is opened without it
        v = d["ov_dynamic_quant_validation"]
        assert v["runtime_config"]["DYNAMIC_QUANTIZATION_GROUP_SIZE"] == str(OV_DQ_GROUP)
        assert "passed" in v and not ov_dynamic_quant(e)


def test_deploy_auto_with_data_times_and_validates_nncf_int8_on_openvino(tmp_path: Path) -> None:
    """With calibration arrays, NNCF's static INT8 IR of the compressed model is one more OpenVINO candidate of
    `auto`: built (FakeQuantize in the IR), judged by the same floors on the held-out samples, timed in the same loop;
    auto keeps the fastest form that passed, and a floor NNCF's file cannot meet rejects it with the reason."""
    pytest.importorskip("transformers")
    import numpy as np
    import openvino as ov

    import edgekit

    g = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", input_ids=g.integers(0, 100, (40, 16)), attention_mask=np.ones((40, 16), int))
    kw = dict(input_shape="1x16:int64,1x16:int64", runtimes=["openvino"], deploy="auto",
              data=str(tmp_path / "calib.npz"))
    out = tmp_path / "art"
    edgekit.compress(FACTORY, "rtn", {"bits": 8}, out, **kw)
    e = json.loads((out / "manifest.json").read_text())["exports"]["openvino"]
    d = e["deploy"]
    med, n = d["speed"]["median_ms"], d["nncf_ptq"]
    assert {"fp32", "int8", "default", "ov-dynamic-quant", "nncf-ptq"} <= set(med), d["speed"]
    assert n["fake_quantize_ops"] > 0 and n["calibration"]["samples"] == 24, n  # 40 - 16 held out
    assert n["options"]["model_type"] == "transformer" and n["validation"]["inputs"] == "held-out data"
    passed = {"fp32": True, "default": True, "int8": d["int8_validation"]["passed"],
              "ov-dynamic-quant": d.get("ov_dynamic_quant_validation", e["validation"])["passed"],
              "nncf-ptq": n["validation"]["passed"]}
    if "ov-bf16" in med:  # a host with native bf16 (AMX / AVX-512 BF16): the bf16 form is a candidate too
        passed["ov-bf16"] = d.get("ov_bf16_validation", e["validation"])["passed"]
    best = min((k for k in med if passed[k]), key=med.get)
    form = {"nncf-ptq": "int8-nncf-ptq", "int8": "int8-dynamic", "ov-dynamic-quant": "openvino-dynamic-quantization",
            "ov-bf16": "openvino-bf16"}
    assert d["form"] == form.get(best, best), d
    if d["form"] == "int8-nncf-ptq":  # installed: the artifact's IR is NNCF's, and its validation is the entry's
        ops = ov.Core().read_model(str(out / e["file"])).get_ops()
        assert any(op.get_type_name() == "FakeQuantize" for op in ops) and e["precision"] == "int8"
        assert e["validation"] == n["validation"]
    out2 = tmp_path / "art2"
    edgekit.compress(FACTORY, "rtn", {"bits": 8}, out2, deploy_floors={"mean_cosine": 1.0}, **kw)
    d2 = json.loads((out2 / "manifest.json").read_text())["exports"]["openvino"]["deploy"]
    assert not d2["nncf_ptq"]["validation"]["passed"] and "NNCF INT8 rejected: " in d2["why"], d2["why"]
    assert d2["form"] in ("fp32", "default"), d2["form"]


def test_bf16_form_carries_its_precision_in_the_ir_and_is_a_judged_candidate(tmp_path: Path) -> None:
    """OpenVINO's bf16 compute (its own default on AMX / AVX-512 BF16 hosts, which edgekit otherwise pins to f32):
    the form is the same IR with the precision in its rt_info, so every reader opens it that way; `auto` times and
    validates it beside the other forms, keeps it only when fastest and passing, and an unmeetable floor rejects it."""
    import openvino as ov

    import edgekit
    from edgekit.deploy.select import _bf16_form
    from edgekit.runtimes import ov_bf16_capable

    art = edgekit.export_model("demo", "openvino", tmp_path / "a")
    xml = art / "exports/openvino/model.xml"
    assert open_session(xml, "openvino").info["config"]["INFERENCE_PRECISION_HINT"] == "f32"  # pinned by default
    if not ov_bf16_capable():
        assert _bf16_form(xml, tmp_path / "bf") is None  # emulated bf16 would not be faster: no candidate
        pytest.skip("no native bf16 in OpenVINO's CPU plugin on this host")
    bf = _bf16_form(xml, tmp_path / "bf")
    s = open_session(bf, "openvino")
    assert s.info["config"]["INFERENCE_PRECISION_HINT"] == "bf16"
    assert ov.Core().compile_model(str(bf), "CPU").get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16
    out = tmp_path / "art"
    edgekit.compress("demo", "rtn", {"bits": 8}, out, runtimes=["openvino"], deploy="auto")
    e = json.loads((out / "manifest.json").read_text())["exports"]["openvino"]
    d = e["deploy"]
    assert "ov-bf16" in d["speed"]["median_ms"], d["speed"]
    v = d.get("ov_bf16_validation", e["validation"])
    if d["form"] == "openvino-bf16":  # installed: the artifact's IR carries bf16, and its validation is the entry's
        assert e["precision"] == "bf16" and e["validation"]["runtime_config"]["INFERENCE_PRECISION_HINT"] == "bf16"
    assert "passed" in v
    out2 = tmp_path / "art2"
    edgekit.compress("demo", "rtn", {"bits": 8}, out2, runtimes=["openvino"], deploy="auto",
                     deploy_floors={"mean_cosine": 1.0})
    d2 = json.loads((out2 / "manifest.json").read_text())["exports"]["openvino"]["deploy"]
    assert d2["form"] != "openvino-bf16" and "OpenVINO bf16 rejected: " in d2["why"], d2["why"]
