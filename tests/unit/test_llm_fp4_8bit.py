"""LLM-FP4 at 8 bits: FP8 weight codes (up to 7·2^30 in units) must reach ONNX exactly, one byte per weight.

Regression of the broken 8-bit path (issues 13 and 21): the codes of E2M5/E3M4 grids (up to 252 / 1984) were cast
to int8 and wrapped around, those of E4M3/E5M2 (245760 / 7·2^30) overflowed int16, so `compress ... --set w_bits=8`
failed validation (MiniLM rel L2 ~8) weight-only and W8A8 alike.
"""
from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgekit.data import DataSource
from edgekit.methods.llm_fp4 import search as S
from edgekit.methods import llm_fp4
from edgekit.model_io import InputSpec
from edgekit.quant import fp as F
from edgekit.quant.codes import WeightCode, attach_codes, get_codes

transformers = pytest.importorskip("transformers")

FMT8 = F.formats_for(8)  # E5M2, E4M3, E3M4, E2M5, E1M6


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("fmt", FMT8)
def test_fp8_weight_codes_keep_their_values(fmt):
    """The recorded codes dequantize to the quantized weight bit for bit, the largest code included."""
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(0))
    wq = S.quant_weight_fp(w, fmt, F.bias_from_max(w.abs().amax(1), *fmt))
    code = llm_fp4._code(wq, 8)
    assert float(code.codes.abs().max()) == F.max_code(*fmt)  # every row's max sits on the top code
    assert torch.equal(code.dequantize(), wq.weight())


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 48), nn.GELU(), nn.Linear(48, 8)).eval()


@pytest.mark.parametrize("fmt", FMT8)
def test_every_fp8_format_exports_exactly_at_one_byte_per_weight(tmp_path, fmt):
    from edgekit.export.onnx import to_onnx
    from edgekit.export.validate import validate

    data = DataSource(tensors=[torch.randn(64, 16, generator=torch.Generator().manual_seed(1))])
    q, rep = llm_fp4.apply(_mlp(), llm_fp4.Config(w_bits=8, a_bits=None, w_formats=[F.fmt_name(fmt)], seq_len=16,
                                                  n_seqs=4, n_candidates=4, progress=False), data)
    assert {i["w_format"] for i in rep.extra["layers"].values()} == {F.fmt_name(fmt)}
    specs = [InputSpec("input", [4, 16])]
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(2))
    info = to_onnx(q, (x,), specs, tmp_path / "m.onnx", get_codes(q))
    val = validate(q, specs, tmp_path / "m.onnx", "onnxruntime", rep.export_precision)  # raises when off
    assert all(o["rel_l2"] < 1e-6 and o["cosine"] > 0.999999 for o in val["outputs"].values())
    assert info["integer_weights"] == 2 and info["unmatched"] == [] and "kept_float" not in info
    assert info["weight_bytes_float"] == 4 * info["weight_bytes_stored"]  # 8 bits per weight, not float
    g = onnx.load(str(tmp_path / "m.onnx")).graph
    assert not [i for i in g.initializer if i.data_type == onnx.TensorProto.FLOAT and np.prod(i.dims) >= 256]
    if fmt == (1, 6):  # codes within +-127: plain int8 + DequantizeLinear
        assert info["storage"] == {"int8": 2}
    else:  # wider code ranges: uint8 table indices
        assert info["storage"] == {"lut8": 2}


def test_codes_beyond_int8_and_256_values_stay_float_and_are_listed(tmp_path):
    """Never wrap: a tensor whose codes fit neither int8 nor a 256-entry table is left float, with the reason."""
    from edgekit.export.onnx import to_onnx

    m = nn.Sequential(nn.Linear(30, 20)).eval()
    codes = (torch.arange(600).reshape(20, 30) - 300).to(torch.int16)  # 600 distinct values in [-300, 299]
    code = WeightCode(codes, torch.full((20,), 1e-3), 0, 8)
    with torch.no_grad():
        m[0].weight.copy_(code.dequantize())
    attach_codes(m, "0.weight", code)
    info = to_onnx(m, (torch.randn(2, 30),), [InputSpec("input", [2, 30])], tmp_path / "m.onnx", get_codes(m))
    assert info["integer_weights"] == 0 and list(info["kept_float"]) == ["0.weight"]
    assert "exceed int8" in info["kept_float"]["0.weight"]
    import onnxruntime as ort

    x = torch.randn(2, 30, generator=torch.Generator().manual_seed(3))
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, m(x).numpy(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- the CLI's path, on a BERT (the reported failure)
def _tiny_bert():
    torch.manual_seed(0)
    return transformers.BertModel(transformers.BertConfig(
        vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        hidden_dropout_prob=0.0)).eval()


@pytest.mark.parametrize("a_bits", [None, 8])
def test_tiny_bert_compress_w8_validates_and_matches_torch(tmp_path, a_bits):
    """api.compress with w_bits=8 (weight-only and W8A8) writes a validated artifact whose ONNX matches torch."""
    from edgekit import api
    from edgekit.artifact import read_manifest
    from edgekit.export.validate import compare
    from edgekit.hf import LogitsOnly
    from edgekit.runtimes import open_session

    _tiny_bert().save_pretrained(tmp_path / "src")
    data = DataSource(tensors=[torch.randint(0, 100, (8, 16), generator=torch.Generator().manual_seed(1))])
    cfg = {"w_bits": 8, "a_bits": a_bits, "n_candidates": 6, "seq_len": 16, "progress": False}
    art = api.compress(tmp_path / "src", "llm_fp4", cfg, tmp_path / "art", input_shape="1x16:int64,1x16:int64",
                       data=data, runtimes=[])
    man = read_manifest(art)
    qdq = man["integer_weights"]
    layers = man["method"]["report"]["extra"]["layers"]
    wide = [n for n, i in layers.items() if F.max_code(*F.parse_format(i["w_format"])) > 127]
    assert wide  # the search picked formats whose codes exceed int8 (what used to wrap around) ...
    assert qdq["storage"].get("lut8", 0) >= len([n for n in wide if f"{n}.weight" not in qdq["unmatched"]]) > 0
    assert "kept_float" not in qdq
    assert all(o["rel_l2"] < 1e-5 for o in man["validation"]["onnx"]["outputs"].values())
    if a_bits:  # ... and the int8 MatMul rewrite sees through the table-decoded weights: it keeps them for range
        kept = qdq["int_matmul"]["kept_fake_quant"]
        assert all(r.startswith("codes exceed int8") or "not in the exported graph" in r for r in kept.values())
    # an independent check on fresh inputs: the same quantized model in torch vs the written ONNX
    q, _ = llm_fp4.apply(LogitsOnly(copy.deepcopy(_tiny_bert())), llm_fp4.Config(**cfg), data)
    sess = open_session(art / "model.onnx", "onnxruntime", threads=1)
    for seed in range(3):
        ids = torch.randint(0, 100, (1, 16), generator=torch.Generator().manual_seed(10 + seed))
        mask = torch.ones_like(ids)
        with torch.no_grad():
            ref = q(ids, mask)
        ref = (ref if torch.is_tensor(ref) else ref[0]).double().numpy()
        got = sess.run({"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        f = compare(ref, np.asarray(got))
        assert f["rel_l2"] < 1e-5 and f["cosine"] > 0.99999, f
