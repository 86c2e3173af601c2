"""LLM-FP4: the ExMy quantizer's algebra, the search's guarantees, the FPQ shifts, exact codes and the ONNX export."""
from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

from edgekit.data import DataSource
from edgekit.errors import ConfigError
from edgekit.methods.llm_fp4 import search as S
from edgekit.methods import llm_fp4
from edgekit.quant import act_records, get_codes
from edgekit.quant import fp as F

transformers = pytest.importorskip("transformers")

FMT4 = F.formats_for(4)


@pytest.fixture(autouse=True)
def _one_thread():
    """Small ops on a busy 2-core machine run far faster single-threaded."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tiny_llama(outliers: bool = False) -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   tie_word_embeddings=False)
    m = transformers.LlamaForCausalLM(cfg).eval()
    if outliers:  # a few huge RMSNorm gains: per-tensor activation ranges blow up (spec §7.6)
        with torch.no_grad():
            for layer in m.model.layers:
                for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                    norm.weight[[3, 17, 40]] *= 50
    return m


def _data(n: int = 8, seed: int = 1) -> DataSource:
    g = torch.Generator().manual_seed(seed)
    return DataSource(tensors=[torch.randint(0, 256, (n, 32), generator=g)])


def _kl(ref: nn.Module, q: nn.Module, ids: torch.Tensor) -> float:
    with torch.no_grad():
        a, b = ref(ids).logits.log_softmax(-1), q(ids).logits.log_softmax(-1)
    return float(nn.functional.kl_div(b, a, log_target=True, reduction="batchmean"))


def _quantize(model, **kw):
    kw.setdefault("n_candidates", 10)
    return llm_fp4.apply(copy.deepcopy(model), llm_fp4.Config(progress=False, **kw), _data())


# ---------------------------------------------------------------- quantizer algebra (spec §7.1-7.3)
@pytest.mark.parametrize("fmt", FMT4 + F.formats_for(8))
def test_grid_has_2_pow_n_minus_1_values_and_max_is_xmax(fmt):
    E, M = fmt
    b = torch.tensor(float(torch.empty(()).uniform_(-3, 3, generator=torch.Generator().manual_seed(E))), dtype=torch.float64)
    g = F.grid_values(E, M, float(b))
    x = torch.cat([g, (g[1:] + g[:-1]) / 2, g * 1.37, torch.linspace(-2, 2, 5001, dtype=torch.float64) * g.max()])
    q = F.fp_quant(x, E, M, b)
    n_bits = 1 + E + M
    assert q.unique().numel() == 2 ** n_bits - 1
    assert torch.equal(q.unique(), g) and 0 in q
    assert torch.isclose(q.abs().max(), torch.as_tensor(F.xmax(E, M, float(b)), dtype=torch.float64), rtol=1e-12)
    mx = torch.tensor([0.37, 5.0, 1234.0], dtype=torch.float64)
    assert torch.allclose(F.xmax(E, M, F.bias_from_max(mx, E, M)), mx, rtol=1e-12)


def test_named_grids_at_standard_bias():
    pos = {(3, 0): [0.125, 0.25, 0.5, 1, 2, 4, 8], (2, 1): [0.25, 0.5, 0.75, 1, 1.5, 2, 3],
           (1, 2): [0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75]}
    for (E, M), want in pos.items():
        g = F.grid_values(E, M, 2.0 ** (E - 1))
        assert g[g > 0].tolist() == want
    # integer codes of the three 4-bit grids (spec §9): max code 64 / 12 / 7
    assert [F.max_code(*f) for f in FMT4] == [64, 12, 7]


@pytest.mark.parametrize("fmt", FMT4)
def test_idempotent_odd_monotone(fmt):
    x = torch.randn(20000, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    b = torch.tensor(0.731, dtype=torch.float64)
    q = F.fp_quant(x, *fmt, b)
    assert torch.equal(F.fp_quant(q, *fmt, b), q)
    assert torch.equal(F.fp_quant(-x, *fmt, b), -q)
    xs = x.sort().values
    assert bool((F.fp_quant(xs, *fmt, b).diff() >= 0).all())


@pytest.mark.parametrize("fmt", FMT4)
def test_scale_equivariance(fmt):
    x = torch.randn(5000, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    b = torch.tensor(1.328125, dtype=torch.float64)  # b + k stays exact in float64
    for k in (-2, 1, 3):  # integer shifts: bit-exact
        assert torch.equal(F.fp_quant(x, *fmt, b + k), 2.0 ** -k * F.fp_quant(2.0 ** k * x, *fmt, b))
    k = 0.4142  # real shifts: exact up to rounding of 2^k
    assert torch.allclose(F.fp_quant(x, *fmt, b + k), 2 ** -k * F.fp_quant(2 ** k * x, *fmt, b), rtol=1e-12, atol=0)


def test_e1m2_is_symmetric_int4_without_minus_8():
    b = torch.tensor(0.25, dtype=torch.float64)
    u = 2.0 ** (1 - 2 - 0.25)
    x = torch.linspace(-10, 10, 4001, dtype=torch.float64) * u
    assert torch.allclose(F.fp_quant(x, 1, 2, b), torch.clamp(torch.round(x / u), -7, 7) * u, rtol=0, atol=1e-15)


def test_preshift_reparameterization_is_exact_in_float64():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 16, dtype=torch.float64, generator=g) * torch.logspace(-2, 1, 16, dtype=torch.float64)
    w = F.fp_quant(torch.randn(8, 16, dtype=torch.float64, generator=g), 2, 1, torch.tensor(2.3, dtype=torch.float64))
    E, M = 2, 1
    bt = F.bias_from_max(x.abs().amax(0), E, M)
    rho = bt.min() - 0.2
    k = torch.clamp(torch.round(bt) - torch.round(rho), 0, 2 ** E - 1)
    assert (k > 0).any()
    per_channel = F.fp_quant(x, E, M, rho + k) @ w.T
    pre_shifted = F.fp_quant(x * 2.0 ** k, E, M, rho) @ (w * 2.0 ** -k).T
    assert torch.equal(per_channel, pre_shifted)


# ---------------------------------------------------------------- search + model (spec §7.5-7.8)
def test_search_never_worse_than_minmax_and_fpq_ordering():
    m = _tiny_llama()
    ids = _data(2, seed=9).tensors[0]
    kl = {}
    for v in ("minmax", "fpq_baseline", "fpq"):
        q, rep = _quantize(m, variant=v)
        layers = {n: i for n, i in rep.extra["layers"].items() if "mse_minmax" in i}
        assert len(layers) == 14
        assert all(i["mse"] <= i["mse_minmax"] * (1 + 1e-6) for i in layers.values())
        if v != "minmax":
            assert sum(i["mse"] < 0.9 * i["mse_minmax"] for i in layers.values()) >= 10
        kl[v] = _kl(m, q, ids)
    assert kl["fpq"] < kl["minmax"] and kl["fpq_baseline"] < kl["minmax"]
    assert rep.export_precision == "act_quant"


def test_outlier_channels_fpq_shifts_recover():
    m = _tiny_llama(outliers=True)
    ids = _data(2, seed=9).tensors[0]
    k = {v: _kl(m, _quantize(m, variant=v)[0], ids) for v in ("minmax", "fpq_baseline")}
    k["w_only"] = _kl(m, _quantize(m, a_bits=None)[0], ids)
    qf, rep = _quantize(m, variant="fpq")
    k["fpq"] = _kl(m, qf, ids)
    assert k["minmax"] > 3 * k["w_only"]  # per-tensor activations degrade sharply ...
    assert k["fpq"] < 0.9 * k["fpq_baseline"]  # ... the shifts beat the searched per-tensor quantizer ...
    assert k["minmax"] - k["fpq"] > 0.6 * (k["minmax"] - k["w_only"])  # ... and recover most of the loss
    info = rep.extra["layers"]["model.layers.0.self_attn.q_proj"]
    assert info["a_shift_max"] > 0 and info["a_shifted_frac"] > 0.5  # non-outlier channels are shifted


def test_deterministic_and_codes_dequantize_exactly():
    m = _tiny_llama()
    q1, r1 = _quantize(m)
    q2, r2 = _quantize(m)
    assert r1.extra["layers"] == r2.extra["layers"]
    c1, c2 = get_codes(q1), get_codes(q2)
    assert c1.keys() == c2.keys() and len(c1) == 15  # 14 linears + the embedding (lm_head skipped)
    sd = q1.state_dict()
    for n, c in c1.items():
        assert torch.equal(c.codes, c2[n].codes) and torch.equal(c.scale, c2[n].scale)
        assert torch.equal(sd[n], c.dequantize()), n
        assert c.scale.shape == (sd[n].shape[0],)  # per output channel / per row
    for (n, a), (_, b) in zip(q1.named_buffers(), q2.named_buffers()):
        assert torch.equal(a, b), n
    e2m1 = [c for n, c in c1.items() if r1.extra["layers"][n[: -len(".weight")]]["w_format"] == "E2M1"]
    assert e2m1 and all(set(c.codes.abs().unique().tolist()) <= {0, 1, 2, 3, 4, 6, 8, 12} for c in e2m1)


def test_weight_format_follows_distribution():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(256, 64, generator=g)
    opts = S.SearchOpts(a_bits=None)
    wu, _ = S.search_layer(torch.rand(32, 64, generator=g) * 2 - 1, x, x.abs().amax(0), opts)
    wt, _ = S.search_layer(torch.distributions.StudentT(2.0).sample((32, 64)), x, x.abs().amax(0), opts)
    assert wu.fmt == (1, 2) and wt.fmt in ((2, 1), (3, 0))


@pytest.mark.parametrize("a_bits", [None, 4])
def test_tiny_llama_exports_to_onnx_matching_torch(tmp_path, a_bits):
    from edgekit.export.onnx import to_onnx
    from edgekit.export.validate import validate
    from edgekit.hf import LogitsOnly
    from edgekit.model_io import InputSpec

    q, rep = _quantize(_tiny_llama(), a_bits=a_bits, w_formats=["E1M2"] if a_bits is None else None)
    wrapped = LogitsOnly(q).eval()
    specs = [InputSpec("input_ids", [1, 32], "int64", high=256)]
    ids = _data(1).tensors[0]
    qdq = to_onnx(wrapped, (ids,), specs, tmp_path / "m.onnx", get_codes(q), int_matmul=False)
    assert qdq["integer_weights"] == 15 and qdq["unmatched"] == []
    # E1M2-only weights store as int4; E2M1/E3M0 codes exceed int4 but take <= 16 values: uint4 table indices.
    # Either way a 4-bit request stores 4 bits per weight (8x smaller than fp32; it was 4x before the tables)
    ratio = qdq["weight_bytes_float"] / qdq["weight_bytes_stored"]
    assert ratio == pytest.approx(8.0)
    if a_bits is not None:
        assert qdq["storage"].get("lut4", 0) > 0
    val = validate(wrapped, specs, tmp_path / "m.onnx", "onnxruntime", rep.export_precision)
    assert val["outputs"]["linear_14"]["rel_l2"] < 1e-5
    if a_bits is None:
        return
    # exact integer W4A4: every fake-quant linear becomes Cast(int8) + MatMulInteger (pre-shifted int8 weights)
    import onnx

    from edgekit.export.fp4_matmul import rewrite

    proto, info = rewrite(onnx.load(str(tmp_path / "m.onnx")), get_codes(q), act_records(q))
    assert info["int_matmul_layers"] == 14 and len(info["rewritten"]) == 14 and info["kept_fake_quant"] == {}
    assert sum(n.op_type == "MatMulInteger" for n in proto.graph.node) == 14
    onnx.save(proto, str(tmp_path / "int.onnx"))
    for rt in ("onnxruntime", "openvino"):
        val = validate(wrapped, specs, tmp_path / "int.onnx", rt, "int")
        assert val["outputs"]["linear_14"]["rel_l2"] < 1e-5  # int32 accumulation is exact


# ---------------------------------------------------------------- exact integer W4A4 export (spec §9.3)
def _tiny_bert():
    torch.manual_seed(0)
    return transformers.BertModel(transformers.BertConfig(
        vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        hidden_dropout_prob=0.0)).eval()


def _bert_data() -> DataSource:
    return DataSource(tensors=[torch.randint(0, 100, (8, 16), generator=torch.Generator().manual_seed(1))])


BERT_ENCODER_LINEARS = [f"model.encoder.layer.{i}.{n}" for i in range(2) for n in (
    "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
    "intermediate.dense", "output.dense")]
POOLER_DEAD = {"model.pooler.dense": "its fake-quant is not in the exported graph (the layer does not reach an output)"}


def test_tiny_bert_compress_w4a4_exports_matmulinteger(tmp_path):
    """api.compress of a W4A4 BERT: every encoder linear runs as int8 MatMulInteger, matching torch on ORT and OV."""
    import onnx

    from edgekit import api
    from edgekit.artifact import read_manifest

    _tiny_bert().save_pretrained(tmp_path / "src")
    art = api.compress(tmp_path / "src", "llm_fp4", {"n_candidates": 6, "seq_len": 16, "progress": False},
                       tmp_path / "art", input_shape="1x16:int64,1x16:int64", data=_bert_data(),
                       runtimes=["onnxruntime", "openvino"])
    man = read_manifest(art)
    info = man["integer_weights"]["int_matmul"]
    # the pooler is computed by BertModel but not returned: exported away, listed as such
    assert info["rewritten"] == BERT_ENCODER_LINEARS and info["kept_fake_quant"] == POOLER_DEAD
    assert man["method"]["report"]["extra"]["int_matmul"]["rewritten"] == BERT_ENCODER_LINEARS
    assert info["check"]["ok"] and info["check"]["max_layer_rel_err_vs_exact"] < 1e-6
    g = onnx.load(str(art / "model.onnx")).graph
    ops, weights = [n.op_type for n in g.node], {i.name for i in g.initializer}
    # slim's Reshape(B*T, K) -> Gemm is seen through; q/k/v share one Cast(int8) of their common fake-quant
    assert ops.count("MatMulInteger") == 12 and ops.count("Gemm") == 0
    assert not [n for n in g.node if n.op_type == "MatMul" and set(n.input) & weights]  # only Q·K^T and P·V left
    assert not [i for i in g.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2
                and i.dims[0] * i.dims[1] >= 64 * 64]  # no float weight matrix is left
    # codes enter as uint8 + zero point (ORT's fast u8s8 GEMM), one cast per distinct fake-quant (q/k/v share)
    casts = [n for n in g.node if n.op_type == "Cast" and n.name.endswith("__int_CastA")]
    assert all(n.attribute[0].i == onnx.TensorProto.UINT8 for n in casts) and len(casts) < 12
    assert sum(info["activation_encoding"].values()) == 12 and all(e.startswith("uint8-") for e in
                                                                   info["activation_encoding"])
    for val in [man["validation"]["onnx"]] + [e["validation"] for e in man["exports"].values()]:
        assert all(o["rel_l2"] < 1e-5 for o in val["outputs"].values())  # vs the torch fake-quant model


def _export_pair(tmp_path, **kw):
    """The same quantized tiny BERT exported as fake-quant and as int graph; (model, specs, int report)."""
    from edgekit.export.onnx import to_onnx
    from edgekit.hf import LogitsOnly
    from edgekit.model_io import InputSpec, example_inputs

    q, _ = llm_fp4.apply(LogitsOnly(_tiny_bert()), llm_fp4.Config(progress=False, n_candidates=6, seq_len=16, **kw),
                         _bert_data())
    specs = [InputSpec("input_ids", [1, 16], "int64", high=100), InputSpec("attention_mask", [1, 16], "int64")]
    x = example_inputs(specs)
    assert to_onnx(q, x, specs, tmp_path / "fq.onnx", get_codes(q), int_matmul=False).get("int_matmul") is None
    info = to_onnx(q, x, specs, tmp_path / "int.onnx", get_codes(q))["int_matmul"]  # default: as the method asked
    return q, specs, info


def test_int_graph_reproduces_fake_quant_graph_exactly(tmp_path):
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from edgekit.export.fp4_matmul import check, rewrite
    from edgekit.model_io import example_inputs
    from edgekit.runtimes import open_session

    q, specs, info = _export_pair(tmp_path)
    assert info["rewritten"] == BERT_ENCODER_LINEARS
    fq, it = (open_session(tmp_path / f, "onnxruntime", threads=1) for f in ("fq.onnx", "int.onnx"))
    for seed in range(4):
        feeds = {s.name: t.numpy() for s, t in zip(specs, example_inputs(specs, seed=seed))}
        a, b = fq.run(feeds)[0].astype(np.float64), it.run(feeds)[0].astype(np.float64)
        # the int path is exact up to the rescale; the fake-quant MatMul's float32 sums differ by a few ulp
        assert np.linalg.norm(a - b) / np.linalg.norm(a) < 1e-6
    # per layer, teacher-forced on the graph's own codes: within float32 rounding of exact integer arithmetic
    assert info["check"]["ok"] and info["check"]["max_layer_rel_err_vs_exact"] < 3e-7
    # ... and the check has teeth: one wrong channel scale (x2) in one layer is caught
    details: list = []
    ref = onnx.load(str(tmp_path / "fq.onnx"))
    proto, _ = rewrite(onnx.load(str(tmp_path / "fq.onnx")), get_codes(q), act_records(q), details)
    s = next(i for i in proto.graph.initializer if i.name.endswith("layer.1.output.dense__int_s"))
    v = numpy_helper.to_array(s).copy()
    v[3] *= 2
    s.CopyFrom(numpy_helper.from_array(v, s.name))
    bad = check(ref, proto, details, {s_.name: t.numpy() for s_, t in zip(specs, example_inputs(specs))})
    assert not bad["ok"] and bad["worst_layer"] == "model.encoder.layer.1.output.dense"
    # the int8 encoding of the codes (used when uint8 + zero point could saturate AVX2's int16 pair sums) is exact too
    details = []
    proto, info8 = rewrite(onnx.load(str(tmp_path / "fq.onnx")), get_codes(q), act_records(q), details,
                           uint8=False)
    assert info8["activation_encoding"] == {"int8": 12}
    for seed in range(2):
        res = check(ref, proto, details, {s_.name: t.numpy() for s_, t in zip(specs, example_inputs(specs, seed=seed))})
        assert res["ok"] and res["end_to_end_rel_l2_vs_fake_quant_graph"] < 1e-6


def test_layers_that_do_not_fit_int8_keep_fake_quant_and_are_listed(tmp_path):
    from edgekit.export.validate import validate

    # E3M0 weights (codes up to 64) with shifted E3M0 activations: 64·2^K > 127 as soon as K >= 1
    q, specs, info = _export_pair(tmp_path, a_formats=["E3M0"], w_formats=["E3M0"])
    kept = {n: r for n, r in info["kept_fake_quant"].items() if n not in POOLER_DEAD}
    assert kept and info["rewritten"] and sorted(info["rewritten"] + list(kept)) == sorted(BERT_ENCODER_LINEARS)
    assert all(r.startswith("codes exceed int8") for r in kept.values())
    assert all(int(re.search(r"weights up to (\d+)", r).group(1)) > 127 for r in kept.values())
    assert all(int(act_records(q)[n].shift.max()) == 0 for n in info["rewritten"])  # 64·2^0 fits
    # the mixed graph (some int8, some fake-quant) still matches torch
    val = validate(q, specs, tmp_path / "int.onnx", "onnxruntime", "int")
    assert all(o["rel_l2"] < 1e-5 for o in val["outputs"].values())


def test_plain_linear_model_with_tensor_data_and_minmax_int():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    data = DataSource(tensors=[torch.randn(64, 16)])
    q, rep = llm_fp4.apply(copy.deepcopy(m), llm_fp4.Config(variant="minmax_int", progress=False), data)
    assert isinstance(q[0], llm_fp4.FPQLinear) and rep.extra["formats"] == {"w:INT4": 2, "a:INT4": 2}
    assert rep.bits_per_weight < 8  # INT4 codes store as int4
    x = data.tensors[0]  # (64 calibration rows are too few to bound the ranges of fresh samples)
    err = {}
    for v in ("minmax", "fpq"):
        q, rep = llm_fp4.apply(copy.deepcopy(m), llm_fp4.Config(w_bits=8, a_bits=8, variant=v, progress=False), data)
        with torch.no_grad():
            err[v] = float((q(x) - m(x)).norm() / m(x).norm())
    assert err["fpq"] < 0.02 and err["fpq"] < 0.5 * err["minmax"]  # W8A8: close to float, search pays


def test_text_data_without_tokenizer_is_a_config_error():
    with pytest.raises(ConfigError, match="tokenizer"):
        llm_fp4.apply(nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8)), llm_fp4.Config(progress=False),
                      DataSource(texts=["hello world"]))
    with pytest.raises(ConfigError, match="calibration data"):
        llm_fp4.apply(nn.Linear(4, 4), llm_fp4.Config(progress=False), None)


def test_rare_outlier_tokens_are_in_the_search_subset_and_not_clipped():
    """A few tokens with a massive activation (an LLM's first-position tokens) set the range; a random MSE subset
    misses them and the search, seeing no cost, clips them (the SmolLM2 W8A8 loss). They must stay unclipped."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 64))
    x = torch.randn(2048, 64)
    x[[5, 1500], 3] = 200.0  # 2 of 2048 tokens
    data = DataSource(tensors=[x])
    sub, wts = S.search_subset(x, 128, torch.Generator().manual_seed(0))
    assert sub.shape == (128, 64) and abs(float(wts.sum()) - 1) < 1e-6 and float(sub[:, 3].abs().max()) == 200.0
    err = {}
    for v, keep in (("minmax", True), ("fpq", True), ("fpq_random_subset", False)):
        cfg = llm_fp4.Config(w_bits=8, a_bits=8, variant=v.split("_")[0], search_tokens=128, n_candidates=8,
                             rounds=1, keep_outlier_tokens=keep, progress=False)
        q, _ = llm_fp4.apply(copy.deepcopy(m), cfg, data)
        with torch.no_grad():
            err[v] = float(((q(x) - m(x)) ** 2).mean())
        if keep and v == "fpq":
            layer = q[0]
            xmax = layer.a_unit * F.max_code(layer.a_E, layer.a_M)
            assert float(xmax.expand(64)[3]) >= 0.9 * 200  # the outlier channel keeps its range
    assert err["fpq"] <= err["minmax"]  # the search pays on all the data, not just on its subset


def test_headroom_lowers_shifts_and_keeps_unseen_spikes():
    """a_headroom=h: every FPQ shift drops by h binades (floored at 0), so a channel holds 2^h x its calibration max;
    a later input 4x above a channel's calibrated max is clipped with h=0 and passes with h=3."""
    torch.manual_seed(0)
    lin = nn.Linear(32, 16)
    x = torch.randn(512, 32)
    x[:, 0] *= 40.0  # one big channel sets the tensor range; the others are shifted up
    data = DataSource(tensors=[x])
    q = {}
    for h in (0, 3):
        cfg = llm_fp4.Config(w_bits=8, a_bits=8, a_formats=["E4M3"], shift_round="floor", n_candidates=4, rounds=1,
                             a_headroom=h, progress=False)
        q[h] = llm_fp4.apply(nn.Sequential(copy.deepcopy(lin)), cfg, data)[0][0]
    k0 = torch.log2(q[0].a_unit.max() / q[0].a_unit).round()
    k3 = torch.log2(q[3].a_unit.max() / q[3].a_unit).round()
    assert float(k0.max()) >= 3 and torch.equal(k3, (k0 - 3).clamp_min(0))
    spike = torch.zeros(1, 32)
    c = int(k0[1:].argmax()) + 1
    spike[0, c] = 4 * float(x[:, c].abs().max())
    lim = {h: float((q[h].a_unit * F.max_code(4, 3)).expand(32)[c]) for h in q}
    assert lim[0] < spike[0, c] <= lim[3]


def test_act_quant_headroom_formula():
    bt = torch.tensor([0.0, 2.5, 5.2, 9.9], dtype=torch.float64)
    rho = torch.tensor(0.0, dtype=torch.float64)
    for h in range(4):
        a = S.act_quant((2, 1), rho, bt, "floor", headroom=h)
        assert a.shift.tolist() == [max(0, min(3, k - h)) for k in (0, 2, 5, 9)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_calibration_matches_cpu():
    """device=cuda computes the same search (formats equal, codes almost all equal) and returns a CPU model."""
    m = _tiny_llama(outliers=True)
    qc, rc = _quantize(m)
    qg, rg = _quantize(m, device="cuda")
    assert next(qg.parameters()).device.type == "cpu"
    fc = {n: (i["w_format"], i.get("a_format")) for n, i in rc.extra["layers"].items()}
    fg = {n: (i["w_format"], i.get("a_format")) for n, i in rg.extra["layers"].items()}
    assert fc == fg
    cc, cg = get_codes(qc), get_codes(qg)
    same = sum(int((cc[n].codes == cg[n].codes).sum()) for n in cc) / sum(cc[n].codes.numel() for n in cc)
    assert same > 0.99
    ids = _data(2, seed=9).tensors[0]
    assert abs(_kl(m, qc, ids) - _kl(m, qg, ids)) < 0.2 * _kl(m, qc, ids) + 1e-4


def test_cuda_without_gpu_is_a_config_error():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ConfigError, match="no CUDA device"):
        _quantize(_tiny_llama(), device="cuda")


@pytest.mark.parametrize("fmt", FMT4 + F.formats_for(8))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_veltkamp_rounding_equals_log2_definition(fmt, dtype):
    """fp_codes (Veltkamp split, no log2/exp2) = the log2 definition on random values, every grid point, every exact
    midpoint between neighbours (ties to even) and powers of two far below the grid."""
    E, M = fmt
    g = F.grid_values(E, M, 1 - M).to(dtype)  # unit 1: the integer codes themselves
    y = torch.cat([torch.randn(20000, dtype=dtype, generator=torch.Generator().manual_seed(0)) * F.max_code(E, M) / 3,
                   g, (g[1:] + g[:-1]) / 2, torch.exp2(torch.arange(-30, 9, dtype=dtype)), torch.tensor([1e9], dtype=dtype)])
    y = torch.cat([y, -y])
    assert torch.equal(F.fp_codes(y, E, M), F.fp_codes_log2(y, E, M))
