"""DEFT: surrogate values/gradient, density metric vs a manual count, hook plumbing, density loss lowers density,
lambda=0 reproducibility, frozen base, LoRA merge equivalence, save/load, block skipping removes MLP MatMuls from
the ONNX graph, and `edgekit compress --method deft` on tiny models built in code."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

from edgekit.data import DataSource  # noqa: E402
from edgekit.errors import ConfigError  # noqa: E402
from edgekit.hf import LogitsOnly  # noqa: E402
from edgekit.methods import get_method, parse_config  # noqa: E402
from edgekit.methods.deft.density import Capture, DensityMeter, l0_penalty, phi  # noqa: E402
from edgekit.methods.deft.model import find_blocks  # noqa: E402

DEFT = get_method("deft")
V, D, FF = 40, 32, 72  # FF differs from every other dimension: MLP weights are recognisable in the ONNX graph


def tiny_bert(seed: int = 0, act: str = "gelu"):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=V, hidden_size=D, num_hidden_layers=3, num_attention_heads=2, intermediate_size=FF,
                     max_position_embeddings=64, hidden_act=act)
    return LogitsOnly(BertModel(cfg)).eval()


def task_data(n: int = 160, t: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (n, t), generator=g)
    mask = torch.ones(n, t, dtype=torch.long)
    mask[: n // 2, t - 4:] = 0
    y = ((ids == 7).sum(1) > (ids == 9).sum(1)).long()  # spec §9.5's toy task
    return ids, mask, y


def run(model, data=None, example_inputs=None, **opts):
    cfg = parse_config(DEFT, {"progress": False, "train_steps": 10, "batch_size": 16, **opts})
    data = data if data is not None else DataSource(list(task_data()))
    return DEFT.apply(model, cfg, data, example_inputs=example_inputs)


# ------------------------------------------------------------------ surrogate and metric
def test_surrogate_values_and_gradient():
    eps = 1e-7
    a = torch.tensor([0.0, 1e-5, -1e-4, 3e-4, -1.0, 50.0], dtype=torch.float64, requires_grad=True)
    p = phi(a, eps)
    assert p[0] == 0 and bool(((p >= 0) & (p < 1)).all())
    assert float(p[-1].detach()) == pytest.approx(1.0, abs=1e-9) and float(p[1].detach()) < 1e-3
    p.sum().backward()
    want = 2 * a.detach() * eps / (a.detach() ** 2 + eps) ** 2
    assert torch.allclose(a.grad, want, rtol=1e-9, atol=1e-12)  # quotient rule: cancellation at large |a|
    g = torch.Generator().manual_seed(0)  # 70% exact zeros, eps tiny: mean phi is the density 0.30
    x = torch.randn(200, 500, generator=g, dtype=torch.float64)
    x[torch.rand(200, 500, generator=g) < 0.7] = 0
    assert float(phi(x, 1e-30).mean()) == pytest.approx(float((x != 0).double().mean()), abs=1e-6)
    assert float(phi(x, 1e-30).mean()) == pytest.approx(0.30, abs=0.01)


def test_penalty_is_the_mean_over_examples_and_layers_of_per_layer_means():
    g = torch.Generator().manual_seed(1)
    acts = [torch.randn(3, 5, 8, generator=g), torch.randn(3, 5, 16, generator=g) * 1e-3]
    manual = torch.stack([phi(a, 1e-7).mean((1, 2)) for a in acts], 1).mean()
    assert torch.allclose(l0_penalty(acts, 1e-7), manual)
    mask = torch.tensor([[1, 1, 1, 0, 0]] * 3)
    masked = torch.stack([phi(a[:, :3], 1e-7).mean((1, 2)) for a in acts], 1).mean()
    assert torch.allclose(l0_penalty(acts, 1e-7, mask), masked)


def test_density_meter_equals_a_manual_count():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(4, 6, 10, generator=g)
    a[torch.rand(4, 6, 10, generator=g) < 0.4] = 0
    a[0, 0, :3] = 5e-4  # below tau: non-zero but not counted by the thresholded density
    mask = torch.ones(4, 6)
    mask[1, 3:] = 0
    m = DensityMeter(2, tau=1e-3)
    m.add([a, a * 0], [0, 1], mask)
    r = m.result()
    assert r["exact"] == pytest.approx(((a != 0).float().mean() + 0) / 2)
    assert r["exact_per_layer"][0] == pytest.approx(float((a != 0).float().mean()))
    assert r["thr_per_layer"][0] == pytest.approx(float((a.abs() > 1e-3).float().mean()))
    tok = np.mean([float((a[b][mask[b].bool()] != 0).float().mean()) for b in range(4)])
    assert r["exact_tok_per_layer"][0] == pytest.approx(tok) and r["exact_per_layer"][1] == 0


def test_hooks_capture_one_tensor_per_layer_and_clear():
    m = tiny_bert()
    blocks = find_blocks(m.model)
    cap = Capture([b.act for b in blocks])
    ids, mask, _ = task_data(4)
    with torch.no_grad():
        m(ids, mask)
    assert len(cap.acts) == 3 and cap.which == [0, 1, 2] and cap.acts[0].shape == (4, 12, FF)
    cap.clear()
    for _ in range(5):
        with torch.no_grad():
            m(ids, mask)
        cap.clear()
    assert cap.acts == []
    cap.remove()
    with torch.no_grad():
        m(ids, mask)
    assert cap.acts == []


# ------------------------------------------------------------------ training
def test_density_loss_lowers_density_and_base_stays_frozen():
    base = tiny_bert(act="relu")
    w0 = base.model.encoder.layer[0].intermediate.dense.weight.detach().clone()
    res = {}
    for lam in (0.0, 3.0):
        m, rep = run(copy.deepcopy(base), density_weight=lam, train_steps=25, lr=3e-2, epsilon=1e-2)
        res[lam] = rep.extra["heldout"]["density"]
        assert torch.equal(m.encoder.model.encoder.layer[0].intermediate.dense.weight, w0)
    assert res[3.0]["exact_tok"] < 0.8 * res[0.0]["exact_tok"], res
    assert res[3.0]["thr_tok"] < res[0.0]["thr_tok"]


def test_lambda_zero_reproduces_the_baseline_bit_exactly_and_lora_merges():
    ids, mask, _ = task_data(8, seed=5)
    outs = []
    for _ in range(2):
        m, rep = run(tiny_bert(), density_weight=0.0, lr=1e-2)
        with torch.no_grad():
            outs.append(m(ids, mask)[1])
        mg = rep.extra["merge"]
        assert mg["merged"] and mg["lora_modules_left"] == 0 and mg["max_abs_diff"] < 1e-5 * max(1, mg["ref_max_abs"])
        assert not any("lora" in n for n, _ in m.named_modules())
    assert torch.equal(outs[0], outs[1])
    un = rep.extra["heldout_unmerged"]
    assert un["accuracy"] == rep.extra["heldout"]["accuracy"]  # merged model scores what the PEFT model scored


def test_lora_merge_equals_the_unmerged_peft_model():
    from edgekit.methods.deft.model import add_lora

    m = tiny_bert()
    cfg = parse_config(DEFT, {})
    peft_model = add_lora(m.model, "bert", cfg)
    for n, p in peft_model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.5)  # LoRA B starts at 0: give it weight so the merge matters
    m.model = peft_model.eval()
    ids, mask, _ = task_data(4)
    with torch.no_grad():
        ref = m(ids, mask)
        m.model = peft_model.merge_and_unload()
        got = m(ids, mask)
        plain = tiny_bert()(ids, mask)
    assert torch.allclose(ref, got, atol=1e-5) and not torch.allclose(ref, plain, atol=1e-3)


def test_adapter_trains_only_adapter_and_head_and_is_not_merged():
    m, rep = run(tiny_bert(), peft="adapter", train_steps=5)
    assert rep.extra["merge"]["merged"] is False
    names = [n for n, _ in m.named_modules() if n.endswith("adapter_down")]
    assert len(names) == 3


def test_save_then_load_gives_the_same_model_and_never_overwrites(tmp_path):
    f = tmp_path / "w.safetensors"
    m1, r1 = run(tiny_bert(), save_peft=str(f), skip_blocks=1, lr=1e-2)
    m2, r2 = run(tiny_bert(), load_peft=str(f), skip_blocks=1)
    ids, mask, _ = task_data(6, seed=9)
    with torch.no_grad():
        assert torch.allclose(m1(ids, mask)[1], m2(ids, mask)[1], atol=1e-6)
    assert r2.extra["skipped_blocks"] == r1.extra["skipped_blocks"] and r2.extra["training"] is None
    with pytest.raises(ConfigError, match="does not overwrite"):
        run(tiny_bert(), save_peft=str(f))


def test_bad_inputs_are_one_line_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="label<TAB>text"):
        run(tiny_bert(), data=DataSource(texts=["no tab here"]), tokenizer=str(tmp_path))
    ids, mask, _ = task_data()
    with pytest.raises(ConfigError, match="needs labels"):
        run(tiny_bert(), data=DataSource([ids, mask]))
    with pytest.raises(ConfigError, match="causal LM"):
        run(tiny_bert(), task="lm")


# ------------------------------------------------------------------ Llama, block skipping, export
def test_llama_lm_density_perplexity_and_skipping():
    from tests.unit._tiny_llm import VOCAB, tiny_llama

    from edgekit.models.real import CausalLMLogits

    lm = CausalLMLogits(tiny_llama()).eval()
    ids = torch.randint(0, VOCAB, (40, 16), generator=torch.Generator().manual_seed(0))
    m, rep = run(lm, data=DataSource([ids]), skip_blocks=1, skip_at=1.0, lr=1e-2, example_inputs=(ids[:1],))
    e = rep.extra
    assert e["task"] == "lm" and e["family"] == "llama" and np.isfinite(e["heldout"]["perplexity"])
    assert e["skipped_blocks"] in ([0], [1]) and e["mlp_matmuls_removed"] == 3
    per = e["heldout"]["density"]["thr_per_layer"]
    assert per[e["skipped_blocks"][0]] is None and all(p is not None for i, p in enumerate(per)
                                                       if i != e["skipped_blocks"][0])
    est = e["sparse_hw_estimate"]
    assert 0 <= est["macs_saved_share_thresholded"] < est["down_proj_macs"] / est["model_macs"]
    with torch.no_grad():
        assert m(ids[:2]).shape == (2, 16, VOCAB)


def _mlp_matmuls(path) -> int:
    """MatMul/Gemm nodes whose weight initializer has the MLP width FF in its shape."""
    import onnx

    g = onnx.load(str(path)).graph
    shapes = {i.name: tuple(i.dims) for i in g.initializer}
    return sum(1 for n in g.node if n.op_type in ("MatMul", "Gemm")
               and any(FF in shapes.get(x, ()) for x in n.input))


def test_cli_compress_exports_merged_model_without_skipped_blocks(tmp_path):
    pytest.importorskip("onnxruntime")
    from typer.testing import CliRunner

    from edgekit.artifact import read_manifest
    from edgekit.cli import app

    folder = tmp_path / "bert"
    tiny_bert().model.save_pretrained(str(folder))
    ids, mask, y = task_data()
    np.savez(tmp_path / "d.npz", ids=ids.numpy(), mask=mask.numpy(), y=y.numpy())
    r = CliRunner().invoke(app, ["compress", str(folder), "--method", "deft", "--data", str(tmp_path / "d.npz"),
                                 "--input-shape", "1x12:int64,1x12:int64", "--set", "train_steps=6",
                                 "--set", "skip_blocks=1", "--set", "progress=false", "-o", str(tmp_path / "art")])
    assert r.exit_code == 0, r.output
    man = read_manifest(tmp_path / "art")
    e = man["method"]["report"]["extra"]
    assert len(e["skipped_blocks"]) == 1 and e["merge"]["merged"] and "density" in e["heldout"]
    assert e["heldout"]["density"]["tau"] == 1e-3
    assert _mlp_matmuls(tmp_path / "art" / "model.onnx") == 2 * (3 - 1)
    import onnx

    g = onnx.load(str(tmp_path / "art" / "model.onnx")).graph
    assert not any("lora" in i.name for i in g.initializer)
    assert min(o["cosine"] for o in man["validation"]["onnx"]["outputs"].values()) > 0.9999
    r = CliRunner().invoke(app, ["compress", str(folder), "--method", "deft", "--data", str(tmp_path / "d.npz"),
                                 "--set", "peft=bogus", "-o", str(tmp_path / "art2")])
    assert r.exit_code == 2 and "peft" in r.output and not (tmp_path / "art2").exists()


def test_deft_chains_into_the_int8_deploy_with_its_labelled_training_data(tmp_path):
    """DEFT then `--deploy int8`: the deploy step takes the DEFT data's inputs (ids, mask) and leaves its label array
    out (it refused 3 arrays for 2 inputs before); the ONNX Runtime file runs integer MatMuls and is validated on
    held-out samples of that data."""
    pytest.importorskip("onnxruntime")
    from edgekit import api

    folder = tmp_path / "bert"
    tiny_bert().model.save_pretrained(str(folder))
    ids, mask, y = task_data()
    np.savez(tmp_path / "d.npz", ids=ids.numpy(), mask=mask.numpy(), y=y.numpy())
    art = api.compress(str(folder), "deft", {"train_steps": 4, "progress": False}, tmp_path / "art",
                       input_shape="1x12:int64,1x12:int64", data=str(tmp_path / "d.npz"), runtimes=["onnxruntime"],
                       deploy="int8")
    e = json.loads((art / "manifest.json").read_text())["exports"]["onnxruntime"]
    assert e["precision"] == "int8", e
    d = e["deploy"]
    kernels = d["int8"]["ort_kernels"]
    assert kernels.get("DynamicQuantizeMatMul", 0) + kernels.get("MatMulIntegerToFloat", 0) >= 6, kernels
    v = d["int8_validation"]
    assert v["passed"] and v["inputs"] == "held-out data" and v["inputs_checked"] > 0
    assert all(o["finite"] for o in v["outputs"].values())
    # an extra array that is not one label per sample is still refused, in one line
    from edgekit.deploy.select import calibration_samples
    from edgekit.specs import InputSpec

    specs = [InputSpec("input_ids", [1, 12], "int64"), InputSpec("attention_mask", [1, 12], "int64")]
    assert len(calibration_samples(DataSource([ids, mask, y]), specs)) > 0
    with pytest.raises(ConfigError, match="3 arrays but the model has 2 inputs"):
        calibration_samples(DataSource([ids, mask, ids]), specs)
