"""Structured FFN: exactness, optimality of the projections, shuffle permutations, export size, HF models, recovery."""
from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgekit.data import DataSource
from edgekit.errors import ConfigError
from edgekit.flops import count_params
from edgekit.methods import METHODS, parse_config
from edgekit.methods.structured_ffn import factor as S
from edgekit.methods.structured_ffn import train as T
from edgekit.methods import structured_ffn as sf

torch.set_num_threads(1)
KINDS = ["lowrank", "blockdense", "blockshuffle"]


def rand(m: int, n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(m, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def layer(kind: str, n: int, m: int, r: int = 0, k: int = 1) -> S._Structured:
    cls = {"lowrank": lambda: S.LowRank(n, m, r), "blockdense": lambda: S.BlockDense(n, m, k, r),
           "blockshuffle": lambda: S.BlockShuffle(n, m, k)}[kind]
    return cls().double()


def matrix(lay: S._Structured) -> torch.Tensor:
    """Differentiable S(I)ᵀ (dense_weight is no-grad)."""
    return lay.structured(torch.eye(lay.in_features, dtype=torch.float64)).T


# ---------------------------------------------------------------- exactness
@pytest.mark.parametrize("kind,n,m,r,k", [("lowrank", 12, 20, 12, 1), ("blockdense", 12, 20, 12, 2),
                                          ("blockdense", 12, 20, 12, 3), ("blockshuffle", 12, 20, 0, 1),
                                          ("blockshuffle", 20, 12, 0, 1)])
def test_full_rank_is_exact(kind, n, m, r, k):
    w = rand(m, n)
    lay = layer(kind, n, m, r, k)
    lay.project(w)
    assert torch.linalg.norm(lay.dense_weight() - w) / torch.linalg.norm(w) < 1e-10
    lin = nn.Linear(n, m).double()
    s = S.make_layer(kind, lin, r, k)
    x = torch.randn(3, 5, n, dtype=torch.float64)
    torch.testing.assert_close(s(x), lin(x), rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- optimality
def descend(lay: S._Structured, w: torch.Tensor, steps: int = 1000, seed: int = 0) -> float:
    """Adam on the factors from a random start: an independent estimate of min ‖S - W‖_F."""
    g = torch.Generator().manual_seed(seed)
    for p in lay.parameters():
        p.data = torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5
    opt = torch.optim.Adam(lay.parameters(), lr=0.02)
    for i in range(steps):
        if i == steps // 2:
            opt.param_groups[0]["lr"] = 0.003
        loss = ((matrix(lay) - w) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(((matrix(lay) - w) ** 2).sum().sqrt().detach())


@pytest.mark.parametrize("kind,n,m,r,k", [("lowrank", 6, 8, 2, 1), ("blockdense", 6, 8, 2, 2),
                                          ("blockdense", 6, 9, 3, 3), ("blockshuffle", 6, 8, 0, 2),
                                          ("blockshuffle", 8, 4, 0, 2), ("blockshuffle", 6, 9, 0, 3)])
def test_projection_beats_random_points_and_gradient_descent(kind, n, m, r, k):
    torch.manual_seed(0)
    for seed in range(2):
        w = rand(m, n, seed)
        lay = layer(kind, n, m, r, k)
        lay.project(w)
        err = float(torch.linalg.norm(lay.dense_weight() - w))
        # random feasible points (around the projection and from scratch) are never better
        best = lay.state_dict()
        for t in range(100):
            probe = layer(kind, n, m, r, k)
            scale = 0.05 if t % 2 else 1.0
            probe.load_state_dict({kk: v + scale * torch.randn_like(v) if t % 2 else torch.randn_like(v)
                                   for kk, v in best.items()})
            assert float(torch.linalg.norm(probe.dense_weight() - w)) >= err - 1e-9
        gd = descend(layer(kind, n, m, r, k), w, seed=seed)
        assert err <= gd + 1e-6, (err, gd)
        assert gd <= err * 1.05 + 1e-6  # descent reaches the same optimum: the projection is the minimum


def test_projection_error_equals_discarded_singular_values():
    w = rand(10, 12)
    lr = layer("lowrank", 12, 10, 4)
    lr.project(w)
    s = torch.linalg.svdvals(w)
    assert abs(float(torch.linalg.norm(lr.dense_weight() - w)) - float(s[4:].norm())) < 1e-10
    bd = layer("blockdense", 12, 10, 6, 3)  # 3 column blocks of 4, rank 2 each
    bd.project(w)
    want = sum(float((torch.linalg.svdvals(w[:, 4 * i:4 * i + 4])[2:] ** 2).sum()) for i in range(3)) ** 0.5
    assert abs(float(torch.linalg.norm(bd.dense_weight() - w)) - want) < 1e-10


# ---------------------------------------------------------------- shuffle permutations
def naive_block_shuffle(lay: S.BlockShuffle, x: torch.Tensor) -> torch.Tensor:
    """Loop implementation from the spec's index rules."""
    k, q, p = lay.w1.shape
    s = lay.w2.shape[1]
    z = torch.cat([lay.w1[i] @ x[i * p:(i + 1) * p] for i in range(k)])  # flat index i = k·q + j
    zp = torch.zeros(k, q, dtype=x.dtype)
    for i in range(k * q):
        zp[i % k, i // k] = z[i]
    y = torch.zeros(s * k, dtype=x.dtype)
    for ell in range(k):
        u = lay.w2[ell] @ zp[ell]
        for sig in range(s):
            y[sig * k + ell] = u[sig]
    return y + lay.bias


@pytest.mark.parametrize("n,m,k", [(8, 12, 2), (12, 8, 4), (12, 12, 3), (6, 9, 3)])
def test_block_shuffle_matrix_is_pout_bd_pmid_bd(n, m, k):
    lay = layer("blockshuffle", n, m, 0, k)
    for p in lay.parameters():
        nn.init.normal_(p)
    q, s = min(n, m) // k, m // k
    p_mid = torch.zeros(k * q, k * q, dtype=torch.float64)
    for i in range(k * q):
        p_mid[(i % k) * q + i // k, i] = 1
    p_out = torch.zeros(m, m, dtype=torch.float64)
    for ell in range(k):
        for sig in range(s):
            p_out[sig * k + ell, ell * s + sig] = 1
    want = p_out @ torch.block_diag(*lay.w2) @ p_mid @ torch.block_diag(*lay.w1)
    torch.testing.assert_close(lay.dense_weight(), want.detach(), rtol=0, atol=1e-12)
    x = torch.randn(n, dtype=torch.float64)
    torch.testing.assert_close(lay(x[None])[0], naive_block_shuffle(lay, x), rtol=0, atol=1e-12)
    po, pm = S.permutations(n, m, k)
    torch.testing.assert_close(po.double(), p_out)
    torch.testing.assert_close(pm.double(), p_mid)


# ---------------------------------------------------------------- sizing
def test_ratio_mapping_matches_paper_table():
    shapes = [(768, 3072), (3072, 768)]
    for ratio, want in [(0.625, {"lowrank": 384, "blockdense": 512, "blockshuffle": 2}),
                        (0.3125, {"lowrank": 192, "blockdense": 256, "blockshuffle": 4})]:
        for kind in KINDS:
            sizes = sf.choose_sizes(kind, shapes, sf.Config(kind=kind, param_ratio=ratio))
            got = sizes[0][1] if kind == "blockshuffle" else sizes[0][0]
            assert got == want[kind]
            params = sum(S.structured_params(kind, n, m, r, kk) for (n, m), (r, kk) in zip(shapes, sizes))
            assert params / (2 * 768 * 3072) == ratio


# ---------------------------------------------------------------- HF models
def tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=256, hidden_dropout_prob=0.0)).eval()


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=192, num_hidden_layers=3,
                                        num_attention_heads=4, num_key_value_heads=2)).eval()


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_bert_and_llama_compress_first_block_dense(kind):
    for model, first, n_layers in [(tiny_bert(), "encoder.layer.0.", 2), (tiny_llama(), "model.layers.0.", 3)]:
        ref = copy.deepcopy(model)
        ids = torch.randint(0, 100, (2, 12))
        out, rep = sf.apply(model, parse_config(sf, {"kind": kind, "param_ratio": 0.63}), None)
        ffn = sf.find_ffn(ref, sf.DEFAULT_PATTERNS)
        per_block = len(ffn) // n_layers
        assert per_block in (2, 3) and len(rep.layers_touched) == len(ffn) - per_block
        assert all(n.startswith(first) for n in rep.layers_skipped) and len(rep.layers_skipped) == per_block
        assert all(isinstance(out.get_submodule(n), nn.Linear) for n in rep.layers_skipped)
        assert all(isinstance(out.get_submodule(n), S.STRUCTURED) for n in rep.layers_touched)
        assert "attention.output.dense" not in " ".join(rep.layers_touched)
        assert rep.params_after < rep.params_before
        assert rep.params_before - rep.params_after == rep.extra["ffn_params_dense"] - rep.extra["ffn_params_after"]
        with torch.no_grad():
            a, b = T.call(ref, (ids,)), T.call(out, (ids,))
        assert a.shape == b.shape and torch.isfinite(b).all()
        assert 0.45 < rep.extra["ratio_replaced"] < 0.75


@pytest.mark.parametrize("kind", [*KINDS, "neurons"])
def test_exported_parameters_match_the_report(tmp_path, monkeypatch, kind):
    from edgekit import api
    from edgekit.artifact import read_manifest
    from edgekit.export.onnx import to_onnx
    from edgekit.hf import LogitsOnly
    from edgekit.model_io import parse_input_shape

    monkeypatch.setitem(METHODS, "structured_ffn", "edgekit.methods.structured_ffn")

    def bert():  # distinct biases: the export dedups equal constants (BERT's zero-initialised biases)
        m, g = tiny_bert(), torch.Generator().manual_seed(3)
        for mod in m.modules():
            if isinstance(mod, nn.Linear):
                mod.bias.data = 0.02 * torch.randn(mod.bias.shape, generator=g)
        return m

    bert().save_pretrained(tmp_path / "src")
    specs = parse_input_shape("1x16:int64,1x16:int64")
    specs[0].name, specs[1].name, specs[0].high = "input_ids", "attention_mask", 100

    def floats(path) -> int:
        return sum(int(np.prod(i.dims)) for i in onnx.load(str(path)).graph.initializer if i.data_type == 1)

    to_onnx(LogitsOnly(bert()), tuple(s.example(torch.Generator()) for s in specs), specs, tmp_path / "d.onnx")
    dense = floats(tmp_path / "d.onnx")
    art = api.compress(tmp_path / "src", "structured_ffn", {"kind": kind, "param_ratio": 0.32},
                       tmp_path / kind, input_shape="1x16:int64,1x16:int64")
    man = read_manifest(art)
    rep = man["method"]["report"]
    graph = onnx.load(str(art / "model.onnx")).graph
    saved = rep["params_before"] - rep["params_after"]  # the dense export folds unused embeddings: compare deltas
    assert saved > 0 and dense - floats(art / "model.onnx") == saved
    assert sum(n.op_type in ("Gather", "GatherND", "GatherElements") for n in graph.node) <= 2  # embeddings/mask
    assert man["validation"]["onnx"]["outputs"]  # validated against torch by api.compress


@pytest.mark.parametrize("kind,r,k", [("lowrank", 8, 1), ("blockdense", 16, 4), ("blockshuffle", 0, 4)])
def test_structured_layer_exports_as_matmuls(tmp_path, kind, r, k):
    from edgekit.export.onnx import to_onnx
    from edgekit.export.validate import validate
    from edgekit.model_io import InputSpec

    torch.manual_seed(0)
    model = nn.Sequential(S.make_layer(kind, nn.Linear(32, 48), r, k), nn.GELU(), S.make_layer(kind, nn.Linear(48, 32), r, k))
    spec = [InputSpec("input", [2, 7, 32])]
    to_onnx(model, (torch.randn(2, 7, 32),), spec, tmp_path / "m.onnx")
    proto = onnx.load(str(tmp_path / "m.onnx"))
    init = sum(int(np.prod(i.dims)) for i in proto.graph.initializer if i.data_type == 1)
    assert init == count_params(model)
    assert {n.op_type for n in proto.graph.node} <= {"MatMul", "Reshape", "Transpose", "Add", "Gelu", "Gemm"}
    assert validate(model, spec, tmp_path / "m.onnx", "onnxruntime")["outputs"]


def test_neuron_pruning_keeps_the_strongest_neurons_and_is_exact():
    """kind=neurons: the pruned model equals the original with the dropped neurons' down columns zeroed (the same
    neurons leave up, gate and down), the kept ones outrank the dropped by the weight-norm score, and the ratio is
    kept / d_ff exactly; the dense first block stays; SGT is refused, distillation runs."""
    for model, d_ff in [(tiny_bert(), 256), (tiny_llama(), 192)]:
        ref = copy.deepcopy(model)
        out, rep = sf.apply(model, sf.Config(kind="neurons", param_ratio=0.5, progress=False), None)
        assert rep.extra["ratio_replaced"] == 0.5 and rep.layers_skipped
        groups: dict[int, list] = {}
        for n, lin, b in sf.find_ffn(ref, sf.DEFAULT_PATTERNS):
            groups.setdefault(b, []).append((n, lin))
        for b in sorted(groups)[1:]:
            *ins, (dn, down) = groups[b]
            kept = out.get_submodule(dn).in_features
            assert kept == d_ff // 2 and all(out.get_submodule(n).out_features == kept for n, _ in ins)
            score = down.weight.norm(dim=0)
            for _, lin in ins:
                score = score * lin.weight.norm(dim=1)
            new_down = out.get_submodule(dn).weight
            # which original columns survived: match each kept column to the original down weight
            idx = [int((down.weight - new_down[:, [j]]).abs().sum(0).argmin()) for j in range(kept)]
            assert idx == sorted(idx) and len(set(idx)) == kept
            dropped = sorted(set(range(d_ff)) - set(idx))
            assert score[idx].min() >= score[dropped].max()
            with torch.no_grad():
                down.weight[:, dropped] = 0
        ids = torch.randint(0, 100, (2, 12))
        with torch.no_grad():
            torch.testing.assert_close(T.call(out, (ids,)), T.call(ref, (ids,)), rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="train_mode=distill"):
        sf.apply(tiny_llama(), sf.Config(kind="neurons", train_steps=2, train_mode="sgt"), None)
    data = torch.randint(0, 100, (64, 16), generator=torch.Generator().manual_seed(1))
    _, rep = sf.apply(tiny_bert(), sf.Config(kind="neurons", param_ratio=0.25, train_steps=20, lr=3e-3, batch=8,
                                             progress=False), DataSource([data]))
    tr = rep.extra["training"]
    assert tr["fixed_batch_loss_after"] < tr["fixed_batch_loss_before"]


# ---------------------------------------------------------------- recovery training
def test_training_needs_data_and_lowers_distillation_loss():
    from edgekit.methods import needs

    assert needs(sf, sf.Config()) == "none" and needs(sf, sf.Config(train_steps=5)) == "training" == sf.NEEDS
    with pytest.raises(ConfigError, match="needs training data"):
        sf.apply(tiny_bert(), sf.Config(train_steps=5), None)
    ids = torch.randint(0, 100, (64, 16), generator=torch.Generator().manual_seed(1))
    cfg = sf.Config(kind="lowrank", param_ratio=0.2, train_steps=25, lr=3e-3, batch=8, progress=False)
    _, rep = sf.apply(tiny_bert(), cfg, DataSource([ids]))
    tr = rep.extra["training"]
    assert tr["loss"] == "mse" and tr["fixed_batch_loss_after"] < 0.7 * tr["fixed_batch_loss_before"]
    model, rep = sf.apply(tiny_llama(), sf.Config(kind="blockshuffle", param_ratio=0.32, train_steps=12, lr=3e-3,
                                                  train_mode="sgt", progress=False), DataSource([ids]))
    tr = rep.extra["training"]
    assert tr["loss"] == "kl" and tr["train_loss_first"] < 1e-9  # α_0 = 1: guide = original W = teacher
    assert tr["fixed_batch_loss_after"] < tr["fixed_batch_loss_before"]
    assert all(m.guide is None for m in model.modules() if isinstance(m, S.STRUCTURED))
    assert rep.params_after < rep.params_before


def test_sgt_schedule_and_guide_mixing():
    assert T.alpha(0, 10, "cosine") == 1.0 and abs(T.alpha(5, 10, "cosine") - 0.5) < 1e-12
    assert T.alpha(10, 10, "cosine") == 0.0 and T.alpha(3, 10, "linear") == pytest.approx(0.7)
    lay = S.make_layer("lowrank", nn.Linear(8, 6).double(), 2)
    g = torch.randn(6, 8, dtype=torch.float64)
    lay.set_guide(g)
    x = torch.randn(4, 8, dtype=torch.float64)
    torch.testing.assert_close(lay(x), x @ g.T + lay.bias)  # α = 1: output == guide
    lay.alpha = 0.0
    y = lay(x)
    y.sum().backward()
    assert lay.guide.grad is None or float(lay.guide.grad.abs().sum()) == 0.0
    lay.alpha, lay.sample_guide = 0.3, True
    used = sum(not torch.allclose(lay(x), y) for _ in range(2000)) / 2000
    assert abs(used - 0.3) < 0.05


def test_recovery_device_option():
    ids = torch.randint(0, 100, (16, 16), generator=torch.Generator().manual_seed(2))
    cfg = sf.Config(kind="lowrank", param_ratio=0.3, train_steps=2, batch=4, progress=False, device="auto")
    model, rep = sf.apply(tiny_bert(), cfg, DataSource([ids]))
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert rep.extra["training"]["device"].startswith(want)
    assert all(p.device.type == "cpu" for p in model.parameters())  # back on the CPU for export
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            sf.apply(tiny_bert(), cfg.model_copy(update={"device": "cuda"}), DataSource([ids]))


def test_magnitude_ffn_scope_is_the_unstructured_baseline_at_structured_ffns_count():
    """`magnitude --set scope=ffn`: exactly the FFN linears structured_ffn replaces (first block dense), each keeping
    round(ratio·numel) of its largest |w|; every other weight untouched; a model without FFN patterns is refused."""
    from edgekit.methods import magnitude

    for model in (tiny_bert(), tiny_llama()):
        ref = copy.deepcopy(model)
        out, rep = magnitude.apply(model, parse_config(magnitude, {"sparsity": 0.375, "scope": "ffn"}))
        ffn = {n: b for n, _, b in sf.find_ffn(ref, sf.DEFAULT_PATTERNS)}
        assert sorted(rep.layers_touched) == sorted(n for n, b in ffn.items() if b > 0)
        for name, p0 in ref.named_parameters():
            p1 = out.get_parameter(name)
            mod = name.rsplit(".", 1)[0]
            if ffn.get(mod, 0) == 0 or not name.endswith("weight"):
                assert torch.equal(p0, p1), name
                continue
            kept = p1 != 0
            assert int(kept.sum()) == round(0.625 * p0.numel()), name
            assert torch.equal(p1[kept], p0[kept])
            assert p0[kept].abs().min() >= p0[~kept].abs().max()
        assert abs(rep.extra["sparsity_achieved"] - 0.375) < 1e-3 and rep.extra["scope"] == "ffn"
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    with pytest.raises(ConfigError, match="scope=ffn found no FFN linears"):
        magnitude.apply(cnn, parse_config(magnitude, {"scope": "ffn"}))
