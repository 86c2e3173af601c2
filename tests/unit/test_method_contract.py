"""The method contract (edgekit/methods/__init__.py), held for every registered method: its module's attributes,
config validation with one-line errors, and on a tiny model of each family it claims (MODELS): `apply` keeps the
model runnable and finite, the report's fields are consistent, and the public `edgekit.compress` writes an artifact
whose exports pass validation on ONNX Runtime, OpenVINO and LiteRT. A new method is covered the moment it is
registered; a method that needs special inputs adds them to OPTIONS below, not a test of its own."""
from __future__ import annotations

import json
import math
import os
import typing
from pathlib import Path

import pytest
import torch
from edgekit.errors import ConfigError, EdgekitError
from edgekit.methods import METHODS, MethodReport, get_method, needs, parse_config
from edgekit.quant.precision import Precision
from tests.unit._contract_cnn import TinyCNN

FAMILIES = ("cnn", "encoder", "decoder")
# options that keep a method's run on a tiny model to a few seconds (the defaults are sized for real models)
OPTIONS: dict[str, dict] = {
    "optin": {"flops_keep": 0.7, "samples": 4, "max_len": 16, "progress": False},
    "llm_fp4": {"w_bits": 8, "a_bits": 8, "n_seqs": 2, "seq_len": 16, "search_tokens": 32, "n_candidates": 4,
                "rounds": 1, "progress": False},
    "structured_ffn": {"progress": False},
    "denseshift": {"train_steps": 0},
    "bipft": {"train_steps": 2},
    "deft": {"train_steps": 2},
}
TEXT = ("the cat sat on the mat . the dog ran fast on the road . a red car and a blue sky . "
        "the sun is big and the tree is small . a house by the road .\n") * 6


def _cnn(folder: Path) -> tuple[str, dict]:
    return f"{os.path.relpath(Path(__file__).with_name('_contract_cnn.py'))}:build", {"input_shape": "1x3x16x16"}


def _encoder(folder: Path) -> tuple[str, dict]:
    transformers = pytest.importorskip("transformers")
    words = sorted(set(TEXT.split()))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    torch.manual_seed(0)
    bert = folder / "bert"
    transformers.BertModel(transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                                                   num_attention_heads=4, intermediate_size=64,
                                                   max_position_embeddings=64)).eval().save_pretrained(bert)
    transformers.BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(bert)
    return str(bert), {"input_shape": "1x16:int64,1x16:int64"}


def _decoder(folder: Path) -> tuple[str, dict]:
    pytest.importorskip("transformers")
    from tests.unit._tiny_llm import tiny_llama_folder

    return str(tiny_llama_folder(folder / "llama")), {"input_shape": "1x16:int64"}


BUILD = {"cnn": _cnn, "encoder": _encoder, "decoder": _decoder}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_module_attributes_and_config(name: str) -> None:
    mod = get_method(name)
    assert isinstance(mod.SUMMARY, str) and 10 < len(mod.SUMMARY) < 140 and "\n" not in mod.SUMMARY
    assert mod.NEEDS in typing.get_args(typing.Literal["none", "calibration", "training"])
    assert mod.MODELS and set(mod.MODELS) <= set(FAMILIES), mod.MODELS
    assert callable(mod.apply)
    cfg = mod.Config()  # every field has a default ...
    assert needs(mod, cfg) in ("none", "calibration", "training")
    for field, info in mod.Config.model_fields.items():  # ... and a description `edgekit methods` can show
        assert info.description, f"{name}.{field} has no description"
    with pytest.raises(ConfigError) as e:  # extra="forbid", turned into one line naming the known options
        parse_config(mod, {"no_such_option": 1})
    msg = str(e.value)
    assert "no_such_option" in msg and "\n" not in msg and next(iter(mod.Config.model_fields)) in msg


def _cases() -> list:
    return [pytest.param(n, fam, id=f"{n}-{fam}") for n in sorted(METHODS) for fam in getattr(get_method(n), "MODELS", ())]


@pytest.mark.parametrize("name,family", _cases())
def test_apply_compress_and_export_on_every_runtime(name: str, family: str, tmp_path: Path) -> None:
    import edgekit

    mod = get_method(name)
    src, kw = BUILD[family](tmp_path)
    opts = OPTIONS.get(name, {})
    cfg = parse_config(mod, opts)
    data = None
    if needs(mod, cfg) != "none":
        text = TEXT
        if name == "deft" and family == "encoder":  # an encoder is fine-tuned as a classifier: label<TAB>text lines
            text = "".join(f"{i % 2}\t{line}\n" for i, line in enumerate(TEXT.replace(" . ", " .\n").splitlines()))
        (tmp_path / "data.txt").write_text(text if family != "cnn" else "")
        data = tmp_path / "data.txt"
        if family == "cnn":
            import numpy as np

            np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype("float32"))
            data = tmp_path / "x.npy"
    out = tmp_path / "art"
    from edgekit.data import open_data

    edgekit.compress(src, name, opts, out, data=open_data(data) if data else None,
                     runtimes=("onnxruntime", "openvino", "tflite"), **kw)
    man = json.loads((out / "manifest.json").read_text())
    rep = man["method"]["report"]
    # the report: what every method must fill in, consistent with itself
    assert rep["method"] == name
    # a method may add small side parameters (BiPFT's estimators and scales: +4% on the tiny BERT), never a copy
    assert rep["params_before"] > 0 and 0 < rep["params_after"] <= rep["params_before"] * 1.1
    assert 0 < rep["bits_per_weight"] <= 32 and math.isfinite(rep["bits_per_weight"])
    assert rep["export_precision"] in typing.get_args(Precision)
    assert rep["layers_touched"], "a method that touches nothing on a model of a family it claims is broken"
    assert rep["seconds"] >= 0
    # every export was validated against PyTorch (a mismatch would have raised and written nothing)
    for rt in ("onnxruntime", "openvino", "tflite"):
        ex = man["exports"][rt]
        assert ex.get("validation", {}).get("passed", True) is not False, (rt, ex)
        assert (out / ex["file"]).is_file(), (rt, ex)


def test_report_type_is_the_one_methods_return() -> None:
    assert set(MethodReport("x").to_dict()) >= {"method", "params_before", "params_after", "bits_per_weight",
                                                "layers_touched", "export_precision"}


@pytest.mark.parametrize("name", sorted(n for n in METHODS if "cnn" not in getattr(get_method(n), "MODELS", ("cnn",))))
def test_transformer_method_on_a_cnn_refuses_or_says_what_it_left(name: str, tmp_path: Path) -> None:
    """A method given a model family it does not claim either fails with a one-line edgekit error, or runs on what it
    can and names every layer it left untouched (never a silent partial result)."""
    import numpy as np

    from edgekit.data import open_data

    mod = get_method(name)
    cfg = parse_config(mod, OPTIONS.get(name, {}))
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype("float32"))
    try:
        _, rep = mod.apply(TinyCNN().eval(), cfg, open_data(tmp_path / "x.npy"))
    except EdgekitError as e:
        assert "\n" not in str(e)
        return
    assert {"c1", "c2"} <= set(rep.layers_skipped), rep.layers_skipped
