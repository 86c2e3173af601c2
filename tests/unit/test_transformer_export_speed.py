"""Two export/runtime settings for transformer encoders, each measured faster on this host (edgekit.export.onnx
eager_attention; edgekit.runtimes' SkipLayerNormFusion setting). The tests check the properties that make them
work: the exported graph has no SDPA NaN guard and still matches torch; the model keeps its own attention setting
after export; ORT's session runs the graph without SkipLayerNormalization and records the setting for apps."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgekit.export.onnx import eager_attention, torch_to_onnx_proto
from edgekit.model_io import InputSpec
from edgekit.runtimes import open_session

from .test_deploy_int8 import TinyEncoder

SPECS = [InputSpec("input_ids", [1, 16], "int64", high=100), InputSpec("attention_mask", [1, 16], "int64")]


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 100, (1, 16), generator=g)
    mask = torch.ones(1, 16, dtype=torch.long)
    mask[0, 12:] = 0  # padded tail: the mask must still be applied in the eager form
    return ids, mask


def test_export_uses_eager_attention_and_restores_the_models_setting(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    model = TinyEncoder().eval()
    model.bert.config._attn_implementation = "sdpa"
    with eager_attention(model) as switched:
        assert switched == ["sdpa"] and model.bert.config._attn_implementation == "eager"
    assert model.bert.config._attn_implementation == "sdpa"  # restored

    ids, mask = _inputs()
    proto = torch_to_onnx_proto(model, (ids, mask), SPECS)
    ops = {n.op_type for n in proto.graph.node}
    assert "IsNaN" not in ops, sorted(ops)  # SDPA's decomposition guards the softmax with IsNaN + Where
    assert model.bert.config._attn_implementation == "sdpa"
    path = tmp_path / "m.onnx"
    onnx.save(proto, str(path))
    got = open_session(path, "onnxruntime").run({"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    with torch.no_grad():
        ref = model(ids, mask).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)


def test_ort_sessions_skip_the_slow_skiplayernorm_fusion_and_record_it(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    import edgekit

    out = tmp_path / "art"
    edgekit.export_model(f"{Path(__file__).with_name('test_deploy_int8.py')}:TinyEncoder", "onnxruntime", out,
                         input_shape="1x16:int64,1x16:int64")
    man = json.loads((out / "manifest.json").read_text())
    e = man["exports"]["onnxruntime"]
    assert e["validation"]["runtime_config"]["optimization.disable_specified_optimizers"] == "SkipLayerNormFusion"
    opt = tmp_path / "opt.onnx"
    s = open_session(out / e["file"], "onnxruntime", optimized_path=opt)
    ops = {n.op_type for n in onnx.load(str(opt)).graph.node}
    assert "LayerNormalization" in ops and "SkipLayerNormalization" not in ops, sorted(ops)
    assert "optimization.disable_specified_optimizers" in s.info["config"]
    # a graph without LayerNormalization is opened with ORT's defaults
    plain = edgekit.export_model("demo", "onnxruntime", tmp_path / "demo")
    cfg = json.loads((plain / "manifest.json").read_text())["exports"]["onnxruntime"]["validation"]["runtime_config"]
    assert "optimization.disable_specified_optimizers" not in cfg
