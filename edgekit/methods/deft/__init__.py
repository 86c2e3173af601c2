"""DEFT (Runwal, Pedapati, Chen; arXiv 2402.01911): parameter-efficient fine-tuning with a density loss on the MLP
activations, so the fine-tuned model's MLP activations are sparser. Spec: shared/methods/deft.md.

What it does: the base model stays frozen; LoRA (peft; default r=8, alpha=16, dropout 0.1 on attention Q and V) or a
Pfeiffer-style bottleneck adapter (ReLU, reduction 16, after each MLP's down-projection) is trained together with a
task head (encoders) on task loss + density_weight * L_dens, L_dens = mean over examples and layers of the mean
phi_eps(a) = a^2/(a^2+eps) over the MLP activation-function output (eps=1e-7, weight 1.0: the reference values).
density_weight=0 is the PEFT baseline (same batches, same seed). The held-out report gives the task metric and the
density per layer: exact zeros and |a| > density_tau, in fp32, over all positions (the spec's metric) and over real
tokens; the manifest carries it (method.report.extra).

Decisions where the paper/spec leaves room, and why:
- Tasks: an encoder (BERT-style) becomes a classifier (mean pooling + linear head, trained with the PEFT weights);
  its module returns (the source's own output, class logits), so output 0 keeps the source's contract (fidelity vs
  the source stays meaningful) and output 1 is the task. A causal LM (Llama-style) is trained on next-token loss of
  token windows. Batches are padded to their longest sequence, not to a fixed max_len (spec: pad to 128): the
  loss covers all positions of the batch (positions=all, spec) or real tokens only (positions=tokens).
- Activations: BERT `intermediate_act_fn` output; Llama SiLU(gate) output (spec §2, by analogy). `relu=true` is
  the ReLU-ified variant: every MLP activation becomes ReLU before fine-tuning, so zeros are exact.
- Adapter: peft ships no bottleneck (Pfeiffer) adapter, so it is a small module here (down, ReLU, up, residual;
  up initialised at zero). Being non-linear it cannot be merged: the adapter's matmuls stay in the exported graph
  (reported as merged: false). LoRA is merged into the base weights (peft merge_and_unload), so the exported graph
  has no extra matmuls; the report gives the max output difference of merged vs unmerged on held-out data.
- Block skipping (ADA-DEFT's static form; the paper's selection rule is not public): `skip_blocks=k` removes the
  k MLP blocks whose replacement by a constant (their mean output on training data, `skip_fill=mean`) raises the
  training loss least (`skip_rank=loss`), or the k with the lowest thresholded density (`skip_rank=density`),
  chosen at `skip_at` of the training steps so the remaining steps adapt to the removal. The removed blocks are
  gone from the exported graph (report: skipped_blocks, mlp_matmuls_removed).
- Sparse-hardware estimate (labelled an estimate, not measured): a kernel that skips the rows of the
  down-projection for zero activations (batch 1) saves (1 - density) of that matmul; the report gives the share of
  the model's MACs that would save, at the exact and the thresholded density (the threshold one assumes values
  |a| <= tau are dropped, which changes outputs).
- Optimiser AdamW (weight decay 0.01), linear decay with 6% warm-up (reference recipe); budget in steps
  (train_steps; the default is a CPU smoke budget), lr 3e-4 (reference), head_lr for the new head (default 1e-3).
- save_peft / load_peft: the trained weights (PEFT, head, skipped-block constants; safetensors, no pickle), so one
  machine can train (device=cuda) and another merge, export and evaluate the same weights.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field
from torch import nn

from ...errors import ConfigError
from ...flops import count_params
from ..common import MethodReport, check_new_safetensors, is_causal_lm, resolve_device
from . import model as M
from .data import from_source, split
from .density import Capture
from .train import evaluate, mean_loss, train

NEEDS: Literal["none", "calibration", "training"] = "training"
SUMMARY = "DEFT: LoRA/adapter fine-tuning with a density loss on MLP activations; merged export, MLP block skipping"
MODELS = ("encoder", "decoder")


class Config(BaseModel, extra="forbid"):
    """Options of DEFT (defaults: the reference recipe, at a CPU smoke budget)."""

    peft: Literal["lora", "adapter"] = Field("lora", description="PEFT module: lora (peft, merged for export) or "
                                             "adapter (Pfeiffer bottleneck, stays in the graph)")
    density_weight: float = Field(1.0, ge=0, description="lambda of the density loss (0: the PEFT baseline)")
    epsilon: float = Field(1e-7, gt=0, description="epsilon of the surrogate a^2/(a^2+eps)")
    positions: Literal["all", "tokens"] = Field("all", description="density loss over all positions (spec) or real "
                                                "tokens only")
    density_tau: float = Field(1e-3, ge=0, description="threshold tau of the reported density (|a| > tau counts)")
    relu: bool = Field(False, description="ReLU-ify the MLP activations before fine-tuning (exact zeros)")
    task: Literal["auto", "classify", "lm"] = Field("auto", description="auto: lm for causal LMs, classify for encoders")
    lora_r: int = Field(8, ge=1, description="LoRA rank")
    lora_alpha: float = Field(16.0, gt=0, description="LoRA alpha")
    lora_dropout: float = Field(0.1, ge=0, lt=1, description="LoRA dropout")
    lora_targets: list[str] | None = Field(None, description="module names for LoRA (default: attention Q and V)")
    adapter_reduction: int = Field(16, ge=1, description="bottleneck adapter reduction factor")
    train_steps: int = Field(30, ge=0, description="optimizer steps (default: a CPU smoke budget)")
    batch_size: int = Field(16, ge=1, description="training batch size")
    max_len: int = Field(128, ge=4, description="tokens per sequence (classification: cut; LM: window length)")
    lr: float = Field(3e-4, gt=0, description="peak learning rate of the PEFT weights")
    head_lr: float | None = Field(1e-3, gt=0, description="learning rate of the new classifier head (None: lr)")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay")
    warmup: float = Field(0.06, ge=0, lt=1, description="warm-up fraction of the linear schedule")
    seed: int = Field(42, description="seed of batches, dropout and the head init")
    eval_data: str | None = Field(None, description="held-out file (same format as --data); default: a split")
    eval_fraction: float = Field(0.1, gt=0, lt=1, description="held-out share of --data when eval_data is not given")
    eval_limit: int = Field(512, ge=1, description="held-out examples used at most")
    eval_batch_size: int = Field(16, ge=1, description="held-out batch size")
    skip_blocks: int = Field(0, ge=0, description="MLP blocks to remove (ADA-DEFT-style static skipping)")
    skip_rank: Literal["loss", "density"] = Field("loss", description="which blocks: least loss increase, or lowest "
                                                  "thresholded density")
    skip_fill: Literal["mean", "zero"] = Field("mean", description="a removed block outputs its mean output, or 0")
    skip_at: float = Field(0.5, ge=0, le=1, description="fraction of train_steps after which blocks are removed")
    skip_examples: int = Field(128, ge=1, description="training examples used to rank blocks for skipping")
    tokenizer: str | None = Field(None, description="local tokenizer folder for text data (default: the model's)")
    device: str = Field("cpu", description="cpu | cuda | auto")
    save_peft: str | None = Field(None, description="new .safetensors file for the trained weights (not overwritten)")
    load_peft: str | None = Field(None, description="trained weights from save_peft: no training, merge and export")
    progress: bool = Field(True, description="progress bar on stderr while training")


def _task(model: nn.Module, cfg: Config) -> str:
    lm = is_causal_lm(model)
    if cfg.task == "auto":
        return "lm" if lm else "classify"
    if cfg.task == "lm" and not lm:
        raise ConfigError("task=lm needs a causal LM (a *ForCausalLM model); this is an encoder")
    if cfg.task == "classify" and lm:
        raise ConfigError("task=classify needs an encoder; this model is a causal LM")
    return cfg.task


def _load_weights(path: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file() or p.suffix != ".safetensors":
        raise ConfigError(f"load_peft {p}: not an existing .safetensors file written by save_peft")
    with safe_open(str(p), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("deft", "null") or "null")
        if not isinstance(meta, dict):
            raise ConfigError(f"load_peft {p}: no DEFT metadata; use a file written by --set save_peft=...")
        return {k: f.get_tensor(k) for k in f.keys()}, meta


def _save_weights(path: str, net: nn.Module, meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    state = {n: t.detach().cpu().contiguous() for n, t in net.state_dict().items()
             if n in meta["keys"]}
    save_file(state, str(tmp), metadata={"deft": json.dumps(meta)})
    tmp.replace(p)


def _check_paths(cfg: Config) -> None:
    check_new_safetensors(cfg.save_peft, "save_peft")
    if cfg.eval_data and not Path(cfg.eval_data).exists():
        raise ConfigError(f"eval_data {cfg.eval_data} does not exist")


def apply(model: nn.Module, cfg: Config, data: Any = None, example_inputs: Any = None) -> tuple[nn.Module, MethodReport]:
    """Fine-tune PEFT weights with the density loss, measure density held-out, merge, skip blocks; see module doc."""
    from ...data import open_data

    t0 = time.perf_counter()
    _check_paths(cfg)
    hf, parent, attr = M.hf_core(model)
    blocks = M.find_blocks(hf)
    kind = _task(model, cfg)
    loaded = _load_weights(cfg.load_peft) if cfg.load_peft else None
    dev = resolve_device(cfg.device)
    rep = MethodReport("deft", params_before=count_params(model))
    ex = from_source(data, kind, model, cfg, loaded[1].get("classes") if loaded else None)
    ev = from_source(open_data(cfg.eval_data), kind, model, cfg, ex.classes or None) if cfg.eval_data else None
    tr, held = split(ex, cfg, kind, ev)
    held = held.take(torch.arange(min(len(held), cfg.eval_limit)))
    acts_before = M.relufy(blocks) if cfg.relu else None
    for p in model.parameters():
        p.requires_grad_(False)
    if cfg.peft == "lora":
        setattr(parent, attr, M.add_lora(hf, blocks[0].family, cfg))
    else:
        M.add_adapters(blocks, cfg.adapter_reduction)
        for b in blocks:
            for p in list(b.down.adapter_down.parameters()) + list(b.down.adapter_up.parameters()):
                p.requires_grad_(True)
    net: nn.Module = model
    if kind == "classify":
        torch.manual_seed(cfg.seed)
        dim = getattr(hf.config, "hidden_size", None)
        net = M.Classifier(model, dim, max(2, len(ex.classes)))
    skipped: dict[int, dict[str, Any]] = {}
    cap = Capture([b.act for b in blocks])
    steps = 0 if loaded else cfg.train_steps
    info: dict[str, Any] = {}
    try:
        net.to(dev)
        if loaded:
            _apply_loaded(net, blocks, loaded)
            skipped = {int(k): v for k, v in loaded[1]["skipped"].items()}
        skip_step = int(cfg.skip_at * steps) if cfg.skip_blocks else None

        def at_step(t: int) -> None:
            if t == skip_step:
                skipped.update(_skip(net, kind, blocks, tr, cfg, dev, cap))
        if steps:
            info = train(net, kind, tr, cfg, dev, cap, steps, at_step)
        if cfg.skip_blocks and not loaded and (skip_step is None or skip_step >= steps):
            skipped.update(_skip(net, kind, blocks, tr, cfg, dev, cap))
        if cfg.save_peft:
            keys = [n for n, p in net.named_parameters() if p.requires_grad] + \
                [n for n, _ in net.named_buffers() if n.endswith(".c")]
            _save_weights(cfg.save_peft, net, {"keys": keys, "classes": ex.classes, "kind": kind,
                                               "skipped": {str(k): v for k, v in skipped.items()},
                                               "config": cfg.model_dump(exclude={"save_peft", "load_peft"})})
        before = evaluate(net, kind, held, cfg, dev, cap) if cfg.peft == "lora" else None
        merge = _merge(net, parent, attr, kind, held, cfg, dev) if cfg.peft == "lora" else \
            {"merged": False, "reason": "a bottleneck adapter is non-linear: its matmuls stay in the graph"}
        after = evaluate(net, kind, held, cfg, dev, cap)
    finally:
        cap.remove()
        net.to("cpu")
    for p in net.parameters():
        p.requires_grad_(False)
    net.eval()
    rep.layers_touched = [b.name for b in blocks]
    rep.layers_skipped = {blocks[i].name + ".mlp": f"removed (block skipping, {v['why']})" for i, v in skipped.items()}
    rep.params_after = count_params(net)
    rep.extra.update(
        task=kind, peft=cfg.peft, density_weight=cfg.density_weight, epsilon=cfg.epsilon, tau=cfg.density_tau,
        relu=cfg.relu, relu_replaced=acts_before, family=blocks[0].family, mlp_blocks=len(blocks),
        train_examples=len(tr), heldout_examples=len(held), classes=ex.classes if kind == "classify" else None,
        training=info or None, loaded_from=cfg.load_peft, heldout=after, heldout_unmerged=before, merge=merge,
        skipped_blocks=sorted(skipped), skip_details={str(k): v for k, v in skipped.items()},
        mlp_matmuls_removed=len(skipped) * (3 if blocks[0].family == "llama" else 2),
        sparse_hw_estimate=_estimate(net, blocks, after["density"], example_inputs))
    rep.seconds = time.perf_counter() - t0
    return net, rep


def _apply_loaded(net: nn.Module, blocks: list[M.Block], loaded: tuple[dict, dict]) -> None:
    """Put saved weights back: skipped blocks first (their constants), then the trainable tensors."""
    state, meta = loaded
    for k in meta.get("skipped", {}):
        b = blocks[int(k)]
        c = next(v for n, v in state.items() if n.endswith(".c") and f".{b.name}." in f".{n}")
        M.skip_block(b, c)
    missing = [k for k in meta["keys"] if k not in dict(net.named_parameters()) and k not in dict(net.named_buffers())]
    if missing:
        raise ConfigError(f"load_peft: {len(missing)} saved tensors do not fit this model/options (e.g. {missing[0]}); "
                          "use the same model and peft/relu/lora options as when it was saved")
    own = net.state_dict()
    for k in meta["keys"]:
        if own[k].shape != state[k].shape:
            raise ConfigError(f"load_peft: {k} has shape {tuple(state[k].shape)}, the model {tuple(own[k].shape)}")
    net.load_state_dict({k: state[k] for k in meta["keys"]}, strict=False)


def _skip(net: nn.Module, kind: str, blocks: list[M.Block], tr, cfg: Config, dev: torch.device,
          cap: Capture) -> dict[int, dict[str, Any]]:
    """Choose and remove `skip_blocks` MLP blocks (module doc); returns {index: why}."""
    sub = tr.take(torch.arange(min(len(tr), cfg.skip_examples)))
    live = [i for i, b in enumerate(blocks) if not b.skipped]
    hooks = {i: M.MeanOut(M.mlp_output_module(blocks[i])) for i in live}
    dens = evaluate(net, kind, sub, cfg, dev, cap)["density"]["thr_tok_per_layer"]
    means = {i: h.mean() for i, h in hooks.items()}
    base = mean_loss(net, kind, sub, dev, cfg.eval_batch_size)
    score = {}
    for i in live:
        b = blocks[i]
        saved = (b.layer.intermediate, b.layer.output) if b.family == "bert" else (b.layer.mlp,)
        c = means[i] if cfg.skip_fill == "mean" else torch.zeros_like(means[i])
        M.skip_block(b, c.to(dev))
        score[i] = mean_loss(net, kind, sub, dev, cfg.eval_batch_size) - base if cfg.skip_rank == "loss" else dens[i]
        if b.family == "bert":
            b.layer.intermediate, b.layer.output = saved
        else:
            b.layer.mlp = saved[0]
    pick = sorted(live, key=lambda i: score[i])[:cfg.skip_blocks]
    out = {}
    for i in pick:
        c = means[i] if cfg.skip_fill == "mean" else torch.zeros_like(means[i])
        M.skip_block(blocks[i], c.to(dev))
        why = f"loss +{score[i]:.4f}" if cfg.skip_rank == "loss" else f"density {score[i]:.4f}"
        out[i] = {"why": why, "score": float(score[i]), "density_thr_tok": dens[i], "fill": cfg.skip_fill}
    return out


def _merge(net: nn.Module, parent: nn.Module, attr: str, kind: str, held, cfg: Config,
           dev: torch.device) -> dict[str, Any]:
    """peft merge_and_unload; returns the max |merged - unmerged| output difference on held-out batches."""
    ids, mask, _ = held.batch(torch.arange(min(len(held), cfg.eval_batch_size)))
    ids, mask = ids.to(dev), mask.to(dev)

    def outs() -> torch.Tensor:
        with torch.no_grad():
            o = net(ids, mask) if kind == "classify" else net(ids)
        return (o[1] if isinstance(o, tuple) else o).double()

    net.eval()
    ref = outs()
    setattr(parent, attr, getattr(parent, attr).merge_and_unload())
    got = outs()
    left = [n for n, _ in net.named_modules() if "lora_" in n]
    return {"merged": True, "max_abs_diff": float((got - ref).abs().max()),
            "ref_max_abs": float(ref.abs().max()), "lora_modules_left": len(left)}


def _estimate(net: nn.Module, blocks: list[M.Block], dens: dict[str, Any], example_inputs: Any) -> dict[str, Any]:
    """Share of MACs a zero-skipping down-projection kernel would save at batch 1 (an estimate; module doc)."""
    if example_inputs is None:
        return {"label": "estimate", "note": "no example inputs given, MACs not counted"}
    from ...flops import count_macs

    with torch.no_grad():
        total = count_macs(net, tuple(example_inputs))
    seq = int(example_inputs[0].shape[-1]) * int(example_inputs[0].shape[0])
    saved = {"exact": 0.0, "thr": 0.0}
    down_total = 0
    for i, b in enumerate(blocks):
        if b.skipped:
            continue
        lin = M.down_linear(b)
        macs = seq * lin.in_features * lin.out_features
        down_total += macs
        for k in saved:
            d = dens[f"{k}_tok_per_layer"][i]
            saved[k] += (1 - d) * macs if d is not None else 0.0
    return {"label": "estimate (not measured): a sparse-input down-projection kernel skipping zero activations",
            "model_macs": int(total), "down_proj_macs": int(down_total),
            "macs_saved_share_exact_zeros": saved["exact"] / max(total, 1),
            "macs_saved_share_thresholded": saved["thr"] / max(total, 1),
            "assumes": "batch 1, density as measured held-out; thresholded drops |a| <= tau (changes outputs)"}
