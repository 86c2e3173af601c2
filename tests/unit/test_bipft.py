"""BiPFT (edgekit/methods/bipft): the spec's verification list (shared/methods/bipft.md §8) on tiny models built in
code, and one `edgekit compress` CLI run on a tiny BERT folder."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from edgekit.data import DataSource  # noqa: E402
from edgekit.methods import bipft  # noqa: E402
from edgekit.methods.bipft.attention import BiPFTSelfAttention, Estimators  # noqa: E402
from edgekit.methods.bipft.binarize import BinaryLinear, SignedBinarizer, UnsignedBinarizer, bwn  # noqa: E402
from edgekit.methods.bipft.train import kd_loss, load_binary, save_binary  # noqa: E402

TEXT = ("the cat sat on the mat . the dog ran fast on the road . a red car and a blue sky . "
        "the sun is big and the tree is small . a house by the road .")


def _bert(heads: int = 4, d: int = 32, layers: int = 2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=60, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
                                  intermediate_size=2 * d, max_position_embeddings=64)
    return transformers.BertModel(cfg).eval()


class Wrap(nn.Module):
    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=ids, attention_mask=mask).last_hidden_state


def _ids(n: int = 16, seq: int = 12, seed: int = 0) -> DataSource:
    g = torch.Generator().manual_seed(seed)
    return DataSource(tensors=[torch.randint(5, 60, (n, seq), generator=g)])


# 1. BWN
def test_bwn_two_values_mean_abs_and_identity_ste() -> None:
    w = torch.randn(24, 16, dtype=torch.float64, requires_grad=True)
    wb = bwn(w)
    m = float(w.detach().abs().mean())
    vals = torch.unique(wb.detach())
    assert vals.numel() == 2 and torch.allclose(vals, torch.tensor([-m, m], dtype=torch.float64))
    # sign of W - mean(W), not of W
    assert torch.equal(wb.detach() > 0, (w.detach() - w.detach().mean()) >= 0)
    g = torch.randn_like(w)
    wb.backward(g)
    assert torch.equal(w.grad, g)  # pure straight-through, no clipping


# 2. signed / unsigned binarizers
def test_signed_binarizer_forward_backward_and_lazy_init() -> None:
    act = SignedBinarizer().double()
    x = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    y = act(x)
    alpha = float(act.alpha)
    assert alpha == pytest.approx(2 * float(x.detach().abs().mean()), rel=1e-12)
    assert set(torch.unique(y.detach()).tolist()) <= {-alpha, alpha}
    g = torch.randn_like(y)
    y.backward(g)
    assert torch.allclose(x.grad, g * (x.detach().abs() <= alpha))
    want = float((g * torch.where(x.detach() >= 0, 1.0, -1.0)).sum() / math.sqrt(x.numel()))
    assert float(act.alpha.grad) == pytest.approx(want, rel=1e-10)
    act(x * 10)  # a second call does not re-initialise
    assert float(act.alpha) == alpha and bool(act.initialized)


def test_unsigned_binarizer_forward_backward() -> None:
    act = UnsignedBinarizer().double()
    p = torch.softmax(torch.randn(2, 3, 6, 6, dtype=torch.float64) * 3, -1).requires_grad_(True)
    y = act(p)
    a = float(act.alpha)
    assert a == pytest.approx(4 * float(p.detach().mean()), rel=1e-12)
    assert set(torch.unique(y.detach()).tolist()) <= {0.0, a}
    assert torch.equal(y.detach() > 0, p.detach() > a / 2)
    g = torch.randn_like(y)
    y.backward(g)
    q = p.detach() / a
    inside = (q >= 0) & (q <= 1)
    assert torch.allclose(p.grad, g * inside)
    r = (q > 0.5).double()
    want = float((g * ((q > 1).double() + inside * (r - q))).sum() / math.sqrt(p.numel()))
    assert float(act.alpha.grad) == pytest.approx(want, rel=1e-10)


def test_scale_learning_fits_alpha() -> None:
    """Gradient descent on α alone moves it toward the least-squares scale of sgn(x) (mean|x| for ±1 codes)."""
    torch.manual_seed(0)
    act = SignedBinarizer()
    x = torch.randn(4096) * 3
    act(x)  # init 2·mean|x|: twice the optimum
    opt = torch.optim.Adam([act.alpha], lr=0.05)
    for _ in range(300):
        loss = ((act(x) - x) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    # the clipped-gradient LSQ rule has its fixed point where Σ_{|x|>α} sgn(x)(α−x)... i.e. near the L2 optimum
    assert abs(float(act.alpha) - float(x.abs().mean())) < 0.15 * float(x.abs().mean())


# 3. residual identity
def test_residual_polynomial_identity() -> None:
    torch.manual_seed(1)
    q, k = torch.randn(10, 8, dtype=torch.float64), torch.randn(12, 8, dtype=torch.float64)
    for aq, ak in ((0.3, 1.7), (1.0, 0.01)):
        qh, kh = aq * torch.sign(q), ak * torch.sign(k)
        rq, rk = q - qh, k - kh
        full = qh @ kh.T + qh @ rk.T + rq @ kh.T + rq @ rk.T
        assert torch.allclose(q @ k.T, full, atol=1e-10, rtol=0)


def _attn(rank: int, per_head: bool = False, heads: int = 4, d: int = 32) -> BiPFTSelfAttention:
    bert = _bert(heads, d)
    return BiPFTSelfAttention(bert.encoder.layer[0].attention.self, heads, rank, per_head).double().eval()


# estimator shapes / rank; 4. zeroed estimators == plain binary attention
@pytest.mark.parametrize("rank,per_head", [(1, False), (3, False), (2, True)])
def test_estimator_shapes_rank_and_zeroed_equals_plain(rank: int, per_head: bool) -> None:
    heads, d, L = 4, 32, 9
    est = Estimators(d, rank, heads if per_head else 1).double()
    x = torch.randn(2, L, d, dtype=torch.float64)
    s = est.scores(x)
    assert s.shape == (2, heads if per_head else 1, L, L)
    assert int(torch.linalg.matrix_rank(s[0, 0])) <= 3 * rank  # a bᵀ + e fᵀ + e bᵀ has rank <= 3r
    assert est.value(x).shape == (2, heads if per_head else 1, L, 1)
    nparams = sum(p.numel() for p in est.parameters())
    g = heads if per_head else 1
    assert nparams == 4 * (d + 1) * rank * g + (d + 1) * g  # spec §3: 4(d+1)r + (d+1) when shared
    a, plain = _attn(rank, per_head), _attn(0)
    plain.load_state_dict({k: v for k, v in a.state_dict().items() if not k.startswith("est.")})
    with torch.no_grad():
        for p in a.est.parameters():
            p.zero_()
        mask = torch.zeros(2, 1, 1, L, dtype=torch.float64)
        mask[1, ..., -3:] = torch.finfo(torch.float64).min
        # same α: run plain first (lazy init), copy the α's into a; α_P below the uniform probability 1/L so that
        # P̂ is not all zero (a random tiny BERT attends nearly uniformly)
        plain(x, mask)
        plain.act_p.alpha.fill_(1.0 / L)
        ref = plain(x, mask)[0]
        assert ref.abs().sum() > 0
        a.load_state_dict({**a.state_dict(), **{k: v for k, v in plain.state_dict().items()}}, strict=False)
        for m_a, m_p in zip(a.modules(), plain.modules()):
            if hasattr(m_p, "_ready"):
                m_a._ready = m_p._ready
        assert torch.allclose(a(x, mask)[0], ref, atol=1e-12)
        with torch.no_grad():
            a.est.vp.bias.fill_(0.5)
        assert not torch.allclose(a(x, mask)[0], ref)


# 5. estimator fitting: below the r = 0 error, larger r lower error
def test_estimator_fit_reduces_residual_and_rank_helps() -> None:
    torch.manual_seed(0)
    d, L, heads = 32, 16, 4
    x = torch.randn(8, L, d)
    # a teacher whose residual QKᵀ − Q̂K̂ᵀ has low-rank structure the estimators can learn from X
    errs = {}
    for r in (0, 1, 4):
        torch.manual_seed(0)
        a = BiPFTSelfAttention(_bert(heads, d).encoder.layer[0].attention.self, heads, max(r, 1), False)
        with torch.no_grad():
            raw = [lin(x) for lin in (a.query, a.key, a.value)]
            q, k = (a._heads(t) for t in raw[:2])
            qb, kb = (a._heads(act(t)) for act, t in zip((a.act_q, a.act_k), raw[:2]))
            target = (q @ k.transpose(-1, -2) - qb @ kb.transpose(-1, -2)) * a.scaling
        if r == 0:
            errs[0] = float((target ** 2).mean())
            continue
        opt = torch.optim.Adam(a.est.parameters(), lr=1e-2)
        for _ in range(200):
            loss = ((target - a.est.scores(x)) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        errs[r] = float(((target - a.est.scores(x)) ** 2).mean())
    assert errs[1] < errs[0] and errs[4] < errs[1], errs


# distillation loss = hand computation
def test_kd_loss_equals_hand_computation() -> None:
    torch.manual_seed(0)
    B, L, d, H = 2, 3, 2, 1
    hs = [torch.randn(B, L, d) for _ in range(2)]
    ht = [torch.randn(B, L, d) for _ in range(2)]
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    ss, st = [torch.randn(B, H, L, L)], [torch.randn(B, H, L, L)]
    st[0][1, :, :, 2] = torch.finfo(torch.float32).min  # padded key
    ss[0][1, :, :, 2] = torch.finfo(torch.float32).min
    tot, parts = kd_loss(hs, ht, ss, st, mask, 1.0, 0.5)
    hid = 0.0
    for a, b in zip(hs, ht):
        s = 0.0
        for i in range(B):
            for t in range(L):
                if mask[i, t]:
                    s += sum((float(a[i, t, j]) - float(b[i, t, j])) ** 2 for j in range(d)) / d
        hid += s / 5
    hid /= 2
    kl = 0.0
    for i in range(B):
        for t in range(L):
            if not mask[i, t]:
                continue
            pt = [math.exp(float(v)) for v in st[0][i, 0, t]]
            ps = [math.exp(float(v)) for v in ss[0][i, 0, t]]
            zt, zs = sum(pt), sum(ps)
            kl += sum(p / zt * math.log((p / zt) / (q / zs)) for p, q in zip(pt, ps) if p > 0)
    kl /= 5
    assert parts["kd_hid"] == pytest.approx(hid, rel=1e-5)
    assert parts["kd_attn"] == pytest.approx(kl, rel=1e-5)
    assert float(tot) == pytest.approx(hid + 0.5 * kl, rel=1e-5)


# 6. tiny end-to-end KD (+ 7. reload restores α, 8. packed round trip)
def test_tiny_distillation_decreases_loss_and_reload_is_exact(tmp_path: Path) -> None:
    model = Wrap(_bert(heads=2, d=32))  # head count != 12
    cfg = bipft.Config(train_steps=60, fit_steps=0, batch_size=8, lr=2e-3, progress=False, seq_len=12,
                       save_binary=str(tmp_path / "s.safetensors"), checkpoint=str(tmp_path / "ck.pt"),
                       checkpoint_every=30)
    m, rep = bipft.apply(model, cfg, _ids())
    d = rep.extra["distillation"]
    assert math.isfinite(d["loss_last"]) and d["loss_last"] < 0.8 * d["loss_first"], d
    alphas = {n: float(p) for n, p in m.named_parameters() if n.endswith("alpha")}
    assert alphas and min(alphas.values()) >= 1e-5
    ids = _ids(4, 12, seed=5).tensors[0]
    mask = torch.ones_like(ids)
    with torch.no_grad():
        ref = m(ids, mask)
    assert torch.isfinite(ref).all()
    # a fresh student loaded from the compact file: α restored (not re-initialised), weights decode exactly
    fresh, rep2 = bipft.apply(Wrap(_bert(heads=2, d=32)), bipft.Config(load_binary=cfg.save_binary,
                                                                       progress=False), None)
    assert {n: float(p) for n, p in fresh.named_parameters() if n.endswith("alpha")} == alphas
    with torch.no_grad():
        assert torch.equal(fresh(ids, mask), ref)
    lin = fresh.bert.encoder.layer[0].intermediate.dense
    s, scale = lin.codes()
    assert torch.equal(lin.weight, s.float() * scale) and set(torch.unique(s).tolist()) == {-1, 1}
    assert rep2.extra["bits_per_encoder_linear_weight"] < 1.1
    assert (tmp_path / "ck.pt").is_file()


def test_packed_bits_decode_exactly(tmp_path: Path) -> None:
    lin = BinaryLinear(nn.Linear(37, 11))  # 407 weights: not a multiple of 8
    with torch.no_grad():
        lin.weight[0, :3] = lin.weight.mean()  # exact W == e maps to +1
    want = torch.where(lin.weight - lin.weight.mean() >= 0, 1, -1).to(torch.int8)
    s, m = lin.codes()
    assert torch.equal(s, want) and float(m) == pytest.approx(float(lin.weight.abs().mean()))
    wrap = nn.Sequential(lin)
    save_binary(wrap, set(), tmp_path / "b.safetensors")
    other = nn.Sequential(BinaryLinear(nn.Linear(37, 11)))
    load_binary(other, set(), tmp_path / "b.safetensors")
    assert torch.equal(other[0].codes()[0], want) and torch.equal(other[0].bias, lin.bias)


def test_bad_inputs_are_one_line_errors(tmp_path: Path) -> None:
    from edgekit.errors import ConfigError, UnsupportedModelError

    with pytest.raises(UnsupportedModelError):
        bipft.apply(nn.Sequential(nn.Linear(4, 4)), bipft.Config(), _ids())
    with pytest.raises(ConfigError, match="needs"):
        bipft.apply(Wrap(_bert()), bipft.Config(), None)
    (tmp_path / "x.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ConfigError, match="not a safetensors"):
        bipft.apply(Wrap(_bert()), bipft.Config(load_binary=str(tmp_path / "x.safetensors")), None)


def test_cli_compress_tiny_bert_exports_one_bit_weights(tmp_path: Path) -> None:
    words = sorted(set(TEXT.split()))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig(
        vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=64)).eval().save_pretrained(tmp_path / "bert")
    transformers.BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(tmp_path / "bert")
    (tmp_path / "c.txt").write_text((TEXT + "\n\n") * 20)
    out = tmp_path / "art"
    r = subprocess.run([sys.executable, "-m", "edgekit.cli", "compress", str(tmp_path / "bert"), "--method", "bipft",
                        "--data", str(tmp_path / "c.txt"), "--set", "train_steps=3", "--set", "fit_steps=3", "--set", "seq_len=16",
                        "--set", "progress=false", "--input-shape", "1x16:int64,1x16:int64", "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    man = json.loads((out / "manifest.json").read_text())
    iw = man["integer_weights"]
    assert iw["storage"].get("bitplane") == 12 and not iw["unmatched"], iw  # 6 binary linears x 2 layers
    ex = man["method"]["report"]["extra"]
    n_bin = ex["binary_weights"]
    assert n_bin == 2 * (4 * 64 * 64 + 2 * 64 * 128)
    assert ex["bits_per_encoder_linear_weight"] < 1.1
    # the file's stored weight bytes: 1 bit per binary weight + int8 embeddings
    emb = len(vocab) * 64
    assert iw["weight_bytes_stored"] == pytest.approx(n_bin / 8 + emb, abs=2)
    assert man["validation"]["onnx"]["precision"] == "act_quant"
    # the ONNX file decodes to the torch weights: ±1 codes times one scale (checked by value in export/qdq)
    import onnx

    proto = onnx.load(str(out / "model.onnx"))
    assert sum(1 for i in proto.graph.initializer if i.data_type == onnx.TensorProto.FLOAT
               and int(np.prod(i.dims)) >= 64 * 64) == 0  # no float copy of a binary matrix is left
    # and no activation-shaped constant (ones_like/neg of a [1, 16, d] activation folded by the exporter)
    # (the folded position / token-type embedding lookups are the only [1, 16, 64] constants a BERT export has)
    assert len([i.name for i in proto.graph.initializer if list(i.dims[:2]) == [1, 16]]) <= 2
    bad = subprocess.run([sys.executable, "-m", "edgekit.cli", "compress", str(tmp_path / "bert"), "--method",
                          "bipft", "--set", "rank=-1", "-o", str(tmp_path / "bad")], capture_output=True, text=True)
    assert bad.returncode == 2 and "rank" in bad.stderr and "Traceback" not in bad.stderr


def test_hardware_estimate_is_labelled_and_reaches_the_profile_report() -> None:
    """The 1-bit-hardware gain is an estimate in the method report and is printed as one by the profile report."""
    from edgekit.methods.bipft import binary_hardware_estimate
    from edgekit.profile import hardware_estimates
    from edgekit.profile.report import notes

    cfg = transformers.BertConfig(hidden_size=384, num_hidden_layers=6, intermediate_size=1536)
    e = binary_hardware_estimate(cfg, 128, 1)
    assert e["label"].startswith("estimate (not measured)") and 40 < e["speedup"] < 64  # MiniLM: < the 64x bound
    assert binary_hardware_estimate(cfg, 128, 8)["speedup"] < e["speedup"]  # wider FP estimators cost more
    man = {"methods": [{"name": "bipft", "report": {"extra": {"hardware_estimate": e}}}]}
    doc = {"results": [], "hardware_estimates": hardware_estimates(man)}
    assert any(n.startswith("bipft: ESTIMATE, not measured") and f"~{e['speedup']:.0f}x" in n for n in notes(doc))
    assert hardware_estimates({"methods": [{"name": "rtn", "report": {"extra": {}}}]}) == []
