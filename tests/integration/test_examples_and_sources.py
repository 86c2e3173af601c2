"""Examples run; HF folders, dynamic batch, target-profile exports and inspect of every format work."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch

from edgekit import api
from edgekit.artifact import read_manifest
from edgekit.inspect import inspect_path

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo_all(tmp_path_factory):
    art = tmp_path_factory.mktemp("ex") / "demo"
    api.compress("demo", "rtn", {"bits": 8}, art, runtimes=["onnxruntime", "openvino", "tflite"], keep_program=True)
    return art


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino", "tflite"])
def test_embed_app_example(demo_all, runtime):
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "embed_app.py"), str(demo_all), "--runtime", runtime],
                         capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["predicted"] == res["label"] == 0


def test_embed_app_refuses_tampered_artifact(demo_all, tmp_path):
    import shutil

    art = tmp_path / "t"
    shutil.copytree(demo_all, art)
    with open(art / "model.onnx", "ab") as f:
        f.write(b"x")
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "embed_app.py"), str(art)], capture_output=True,
                         text=True)
    assert out.returncode != 0 and "checksum mismatch" in out.stderr


@pytest.mark.parametrize("fmt", ["onnx", "xml", "tflite", "pt2"])
def test_inspect_every_format(demo_all, fmt):
    path = {"onnx": demo_all / "model.onnx", "xml": demo_all / "exports/openvino/model.xml",
            "tflite": demo_all / "exports/tflite/model.tflite", "pt2": demo_all / "model.pt2"}[fmt]
    info = inspect_path(path, input_shape="1x1x8x8" if fmt == "pt2" else None)
    assert info["inputs"] and (info.get("ops") or info.get("modules"))
    if fmt == "onnx":
        assert info["ops"]["DequantizeLinear"] == 4
    if fmt == "pt2":
        assert info["macs"] > 0


def test_dynamic_batch_and_target_profile(tmp_path):
    art = api.export("demo", "x86-avx2-ort", tmp_path / "d", dynamic=["batch"])
    m = onnx.load(str(art / "model.onnx"))
    dim0 = m.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value
    man = read_manifest(art)
    assert man["inputs"][0]["dynamic"] == {"0": "batch"} and man["exports"]["onnxruntime"]["target"] == "x86-avx2-ort"
    from edgekit.runtimes import open_session

    s = open_session(art / "model.onnx")
    assert s.run({"input": torch.randn(5, 1, 8, 8).numpy()})[0].shape == (5, 10)


def test_static_target_refuses_dynamic(tmp_path):
    from edgekit.errors import ConfigError

    with pytest.raises(ConfigError, match="static"):
        api.export("demo", "intel-npu-openvino", tmp_path / "n", dynamic=["batch"])


def test_hf_folder_local_only(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32)
    torch.manual_seed(0)
    transformers.BertModel(cfg).save_pretrained(tmp_path / "bert")
    art = api.export(tmp_path / "bert", "onnxruntime", tmp_path / "a", input_shape="1x16:int64,1x16:int64")
    man = read_manifest(art)
    assert [i["name"] for i in man["inputs"]] == ["input_ids", "attention_mask"]
    assert man["exports"]["onnxruntime"]["validation"]["outputs"]
    cfgj = json.loads((tmp_path / "bert" / "config.json").read_text())
    cfgj["auto_map"] = {"AutoModel": "evil.Model"}
    (tmp_path / "bert" / "config.json").write_text(json.dumps(cfgj))
    from edgekit.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="remote code"):
        api.export(tmp_path / "bert", "onnxruntime", tmp_path / "b")
