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
