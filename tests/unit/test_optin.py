"""OPTIN: budget, mask == physical removal, scorer == masked HF forward, score sanity, GQA groups, ONNX export."""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from edgekit.data import DataSource
from edgekit.methods.optin import heads as H
from edgekit.methods import optin
from edgekit.methods.optin.score import ScoreOptions, Scorer, head_score_masks


def _bert(cls=transformers.BertModel, layers: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
                                  intermediate_size=128, max_position_embeddings=128)
    return _strong(cls(cfg).eval())


def _llama() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=96, max_position_embeddings=64,
                                   tie_word_embeddings=False)
    return _strong(transformers.LlamaForCausalLM(cfg).eval())


def _strong(m: torch.nn.Module) -> torch.nn.Module:
    """Random init leaves every unit's effect tiny (std 0.02); larger weights make each unit matter."""
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15, generator=torch.Generator().manual_seed(p.numel()))
    return m


def _data(n: int = 6, t: int = 12, pad: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 100, (n, t), generator=g)
    mask = torch.ones_like(ids)
    if pad:
        mask[0, 8:] = 0
        mask[1, 5:] = 0
    return ids, mask


def _out(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        o = model(input_ids=ids, attention_mask=mask)
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


def _cfg(**kw) -> optin.Config:
    return optin.Config(cache=False, progress=False, samples=6, **kw)


@pytest.mark.parametrize("make", [_bert, _llama])
def test_masking_equals_physical_removal(make):
    model = make()
    arch = H.find_arch(model)
    ids, mask = _data(pad=arch.family == "bert")
    g = torch.Generator().manual_seed(3)
    hk = [torch.rand(arch.units(l), generator=g) > 0.4 for l in range(2)]
    nk = [torch.rand(arch.neurons(l), generator=g) > 0.5 for l in range(2)]
    hk[1][:] = False   # an emptied attention block
    nk[0][:] = False   # an emptied FFN
    with H.masked(arch, hk, nk):
        ref = _out(model, ids, mask)
    H.slim(arch, hk, nk)
    got = _out(model, ids, mask)
    v = mask.bool()
    assert torch.allclose(got[v], ref[v], atol=1e-5)
    assert [arch.units(l) for l in range(2)] == [int(k.sum()) for k in hk]
    assert [arch.neurons(l) for l in range(2)] == [int(k.sum()) for k in nk]


@pytest.mark.parametrize("make", [_bert, _llama])
def test_scorer_equals_masked_hf_forward(make):
    """The batched, replayed-from-layer-l scorer gives the KD of a real masked forward of the HF model (float64:
    a weak unit's effect is below float32 rounding of the full forward)."""
    model = make().double()
    arch = H.find_arch(model)
    ids, mask = _data(pad=arch.family == "bert")
    with torch.no_grad():
        sc = Scorer(arch, ids, mask, ScoreOptions(unit_batch=3))
    ref = _out(model, ids, mask)
    got = sc.h_final if arch.family == "bert" else arch.lm_head(arch.backbone.norm(sc.h_final))
    assert torch.allclose(got, ref.reshape(-1, ref.shape[-1])[mask.reshape(-1).bool()], atol=1e-5)
    with torch.no_grad():
        md_h, kd_h = sc.heads(0, torch.tensor([1, 0]))
        md_n, kd_n = sc.neurons(0, torch.tensor([5, 7, 9]))
    for unit, kd, is_head in ((1, kd_h[0], True), (0, kd_h[1], True), (7, kd_n[1], False)):
        hk = [torch.ones(arch.units(l), dtype=torch.bool) for l in range(2)]
        nk = [torch.ones(arch.neurons(l), dtype=torch.bool) for l in range(2)]
        (hk if is_head else nk)[0][unit] = False
        with H.masked(arch, hk, nk), torch.no_grad():
            student = torch.log_softmax(sc.fw.head(sc.fw.to_compact(model_hidden(model, arch, ids, mask))), -1)[0]
        want = (sc.teacher.exp() * (sc.teacher - student)).sum(-1)
        want = (want * sc.fw.weight if arch.family == "llama" else want).sum() * 16
        assert float(kd) == pytest.approx(float(want), rel=1e-6)
    assert (md_h > 0).all() and (md_n > 0).all()


def model_hidden(model, arch, ids, mask):
    """Final hidden state of the backbone (pre-norm for Llama)."""
    out = arch.backbone(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    return out.last_hidden_state if arch.family == "bert" else out.hidden_states[-1]


@pytest.mark.parametrize("keep", [0.9, 0.6, 0.5, 0.3])
def test_budget_met_within_one_percent(keep):
    model = _bert()
    ids, mask = _data()
    arch = H.find_arch(model)
    s = float(mask.sum(1).float().mean())
    base = H.macs(arch, s)
    _, rep = optin.apply(model, _cfg(flops_keep=keep, importance="magnitude"), DataSource(tensors=[ids, mask]))
    kept = H.macs(arch, s)  # recomputed from the physical shapes
    assert kept <= keep * base + 1e-6
    assert kept >= (keep - 0.01) * base
    assert rep.extra["flops_keep_achieved"] == pytest.approx(kept / base)


def test_search_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    hs, ns = torch.rand(6, generator=g), torch.rand(10, generator=g) * 0.3
    mh, mn, cap = 7.0, 2.0, 30.0
    kh, kn = H.search(hs, ns, mh, mn, cap)
    best = -1.0
    for h in range(1, 7):
        for n in range(11):
            if h * mh + n * mn <= cap:
                top = hs.sort(descending=True).values[:h].sum() + ns.sort(descending=True).values[:n].sum()
                best = max(best, float(top))
    assert float(hs[kh].sum() + ns[kn].sum()) == pytest.approx(best)
    assert int(kh.sum()) * mh + int(kn.sum()) * mn <= cap


def test_scores_nonnegative_deterministic_and_dead_units_zero():
    model = _bert()
    arch = H.find_arch(model)
    with torch.no_grad():
        arch.o(0).weight[:, 16:32] = 0          # head 1 of layer 0 writes nothing
        arch.down(1).weight[:, 3] = 0           # neuron 3 of layer 1 writes nothing
    ids, mask = _data()
    cfg = _cfg()
    a = optin.raw_scores(model, arch, ids, mask, cfg)[0]
    b = optin.raw_scores(model, arch, ids, mask, cfg)[0]
    for k in a:
        for x, y in zip(a[k], b[k]):
            assert torch.equal(x, y)
            assert (x >= 0).all()
    hs, ns = optin.importance(a, cfg)
    assert hs[0][1] == 0 and ns[1][3] == 0
    assert (hs[0][[0, 2, 3]] > 0).all() and (torch.cat(ns) >= 0).all()
    assert (a["head_kd"][0] > 0).sum() >= 3


def test_keep_all_is_identity_and_cache_is_used(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path))
    model = _bert()
    ids, mask = _data()
    ref = _out(model, ids, mask)
    cfg = optin.Config(flops_keep=1.0, samples=6, progress=False)
    model, rep = optin.apply(model, cfg, DataSource(tensors=[ids, mask]))
    assert torch.equal(_out(model, ids, mask), ref) and not rep.extra["cache_hit"]
    assert list((tmp_path / "optin").glob("*.npz"))
    _, rep2 = optin.apply(_bert(), cfg.model_copy(update={"flops_keep": 0.5}), DataSource(tensors=[ids, mask]))
    assert rep2.extra["cache_hit"]


def test_gqa_groups_are_pruned_whole():
    model = _llama()
    arch = H.find_arch(model)
    assert arch.q_per_unit == 2 and arch.units(0) == 2
    ids, mask = _data(pad=False)
    model, rep = optin.apply(model, _cfg(flops_keep=0.6), DataSource(tensors=[ids, mask]))
    assert rep.extra["attention_unit"] == "kv group"
    for l in range(2):
        if arch.units(l):
            k, _ = arch.kv(l)
            assert arch.q(l).out_features == 2 * k.out_features == arch.units(l) * 2 * arch.head_dim
            assert arch.o(l).in_features == arch.q(l).out_features
    assert _out(model, ids, mask).shape == (6, 12, 100)


def test_slimmed_model_exports_to_onnx(tmp_path, monkeypatch):
    from edgekit import api
    from edgekit.methods import METHODS

    monkeypatch.setitem(METHODS, "optin", "edgekit.methods.optin")
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "bert"
    _bert().save_pretrained(src)
    ids, mask = _data()
    art = api.compress(src, "optin", {"flops_keep": 0.5, "samples": 6, "progress": False}, tmp_path / "art",
                       data=DataSource(tensors=[ids, mask]))
    import json

    man = json.loads((art / "manifest.json").read_text())
    assert man["validation"]["onnx"]
    rep = man["method"]["report"]
    assert rep["macs_after"] < 0.75 * rep["macs_before"]
    assert rep["extra"]["flops_keep_achieved"] <= 0.5


def test_packed_calibration_scores_equal_padded():
    """Packing texts into shared rows (block-diagonal attention) changes the cost, not the scores."""
    from edgekit.methods.optin.score import pack

    model = _bert().double()
    arch = H.find_arch(model)
    ids, mask = _data(n=5, t=10)
    mask[2, 3:] = 0
    opts = ScoreOptions(md_tokens=1000)  # all valid tokens: MD is then order-free
    with torch.no_grad():
        a = Scorer(arch, ids, mask, opts)
        pid, pmask, seg, pos = pack(ids, mask, 16)
        assert pid.shape[0] < ids.shape[0]
        b = Scorer(arch, pid, pmask, opts, seg, pos)
        for fn in ("heads", "neurons"):
            ma, ka = getattr(a, fn)(1, torch.tensor([0, 2]))
            mb, kb = getattr(b, fn)(1, torch.tensor([0, 2]))
            assert torch.allclose(ma, mb, rtol=1e-6) and torch.allclose(ka, kb, rtol=1e-6)


def _oracle(model, arch, ids, mask, sc, hk, nk, l):
    """Raw (MD, KD) of one unit of layer l from a plain masked HF forward (hooks), the spec's definition."""
    L = len(arch.layers)

    def feats(head_keep, neuron_keep):
        out = {}
        hooks = [arch.down(z).register_forward_hook(lambda _m, _i, o, z=z: out.__setitem__(z, o)) for z in range(L)]
        try:
            with H.masked(arch, head_keep, neuron_keep), torch.no_grad():
                h = model_hidden(model, arch, ids, mask)
        finally:
            for k in hooks:
                k.remove()
        return out, h

    def gram(f):
        t = torch.nn.functional.normalize(f.reshape(-1, f.shape[-1])[sc.idx], dim=-1)
        return t @ t.t()

    ones = ([torch.ones(arch.units(z), dtype=torch.bool) for z in range(L)],
            [torch.ones(arch.neurons(z), dtype=torch.bool) for z in range(L)])
    ref, _ = feats(*ones)
    got, h = feats(hk, nk)
    md = sum(float(((gram(got[z]) - gram(ref[z])) ** 2).sum()) for z in range(L) if z > l or z == l == L - 1)
    with torch.no_grad():
        student = torch.log_softmax(sc.fw.head(sc.fw.to_compact(h)), -1)[0]
    kl = (sc.teacher.exp() * (sc.teacher - student)).sum(-1)
    kd = max(0.0, float((kl * sc.fw.weight if arch.family == "llama" else kl).sum()) * 16)
    return md, kd


@pytest.mark.parametrize("bug", [False, True])
@pytest.mark.parametrize("make", [lambda: _bert(layers=3), _llama])
def test_all_scores_equal_plain_masked_forward(make, bug):
    """Every raw score of the optimised scorer (compact tokens, fused q/k/v, SDPA, replay from layer l, batched
    units) equals MD and KD computed from a plain masked HF forward, float64; with reproduce_code_bug the reference
    forward also masks the last head of every earlier layer."""
    model = make().double()
    arch = H.find_arch(model)
    L = len(arch.layers)
    ids, mask = _data(pad=arch.family == "bert")
    with torch.no_grad():
        sc = Scorer(arch, ids, mask, ScoreOptions(unit_batch=5, reproduce_code_bug=bug))
        raw = sc.run()
    rel = 1e-9 if arch.family == "bert" else 2e-5  # HF's Llama RMSNorm computes in float32 even for float64 models
    rng = torch.Generator().manual_seed(0)
    for l in range(L):
        units = [("head", u) for u in range(arch.units(l))]
        units += [("neuron", int(n)) for n in torch.randperm(arch.neurons(l), generator=rng)[:6]]
        for kind, u in units:
            hk = [torch.ones(arch.units(z), dtype=torch.bool) for z in range(L)]
            nk = [torch.ones(arch.neurons(z), dtype=torch.bool) for z in range(L)]
            (hk if kind == "head" else nk)[l][u] = False
            if bug and kind == "head":
                for z in range(l):
                    hk[z][-1] = False
            md, kd = _oracle(model, arch, ids, mask, sc, hk, nk, l)
            assert float(raw[f"{kind}_md"][l][u]) == pytest.approx(md, rel=rel, abs=1e-12), (kind, l, u)
            assert float(raw[f"{kind}_kd"][l][u]) == pytest.approx(kd, rel=max(rel, 1e-7), abs=1e-9), (kind, l, u)


def test_head_score_masks_reproduce_code_bug():
    """The masks behind each head's score: only the scored head, or (bug) also head H-1 of every earlier layer."""
    units, scored = [4, 4, 4], torch.tensor([0, 3, 1])
    for bug in (False, True):
        for l in range(3):
            keep = head_score_masks(units, l, scored, bug)
            assert [tuple(k.shape) for k in keep] == [(3, 4)] * 3
            want = [torch.ones(3, 4, dtype=torch.bool) for _ in range(3)]
            want[l][torch.arange(3), scored] = False
            if bug:
                for z in range(l):
                    want[z][:, 3] = False
            for k, w in zip(keep, want):
                assert torch.equal(k, w)
    # the extra masked heads are exactly (z, H-1) for z < l, in every row
    keep = head_score_masks(units, 2, scored, True)
    removed = {(z, int(h)) for z in range(2) for h in torch.nonzero(~keep[z][0]).flatten()}
    assert removed == {(0, 3), (1, 3)}


def test_reproduce_code_bug_changes_later_layers_only(tmp_path, monkeypatch):
    """Tiny 3-layer BERT: with the flag, layer-0 head scores and all neuron scores are unchanged, head scores of
    layers 1 and 2 change; the flag is part of the cache key."""
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path))
    model = _bert(layers=3).double()
    arch = H.find_arch(model)
    ids, mask = _data()
    a = optin.raw_scores(model, arch, ids, mask, _cfg())[0]
    b = optin.raw_scores(model, arch, ids, mask, _cfg(reproduce_code_bug=True))[0]
    for k in ("head_md", "head_kd"):
        assert torch.equal(a[k][0], b[k][0])
        for l in (1, 2):
            assert ((a[k][l] - b[k][l]).abs() > 1e-6 * a[k][l].abs()).all(), (k, l)
    for k in ("neuron_md", "neuron_kd"):
        assert all(torch.equal(x, y) for x, y in zip(a[k], b[k]))
    assert optin.cache_key(model, ids, mask, _cfg()) != optin.cache_key(model, ids, mask, _cfg(reproduce_code_bug=True))
    with torch.no_grad():  # a head that writes nothing still scores > 0 in a later layer (its forward masks others)
        arch.o(1).weight[:, 16:32] = 0
    c = optin.raw_scores(model, arch, ids, mask, _cfg(reproduce_code_bug=True))[0]
    d = optin.raw_scores(model, arch, ids, mask, _cfg())[0]
    assert c["head_md"][1][1] > 0 and d["head_md"][1][1] == 0
