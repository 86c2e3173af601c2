"""DenseShift (Li et al., ICCV 2023): zero-free low-bit power-of-two weights, converted from a trained model and
fine-tuned shift-aware. Spec: shared/methods/denseshift.md (official code semantics of PR #198, §3).

Every converted Conv/Linear weight becomes α_c · (±2^p), p in 0..2^(B-1)-1, with no zero (B=2: ±1,±2; B=3: ±1..±8;
B=4: ±1..±128). The first conv and the last linear stay float by default (keep_first / keep_last).

Decisions where the paper/spec leaves room, and why:
- Conversion (data-free start, ours; the paper only trains from scratch): per-output-channel scale α_c by a small
  search + least-squares/re-rounding (Lloyd) steps (convert.py doc) on the weight's squared error; rounding to the nearest grid
  value in the linear domain. Where the layer feeds a BatchNorm used only by it (found by a torch.fx trace), α_c is
  folded into that BN exactly (μ' = μ/α, σ'²+ε = (σ²+ε)/α², bias/α; convert.fold_scale_into_bn), so the layer holds
  pure ±2^p integers as the paper's layers do; otherwise α_c stays a per-channel scale (the WeightCode scale, one
  float per output channel). An untraceable model is converted in module order without any BN fold.
- Latent initialisation from the trained weights (init=convert): θ_s = w/α (the weight in grid units: its sign
  margin is its distance to 0 in grid steps); each exponent latent = ± the log2 distance from |w/α| to the rounding
  boundary that flipping it alone would cross (shift.ShiftLayer.init_from), so the chain reproduces the rounded
  exponent and fine-tuning starts exactly at the converted model. Recursive chain: latents before the decisive one
  are negative, so one flip moves the exponent by one step either way.
- init=lowvar: the spec's from-scratch init (all latents N(0, latent_std²), default 1e-3), the following BN reset
  (γ=1, β=0, fresh statistics) and α = 1 there; without a BN α makes the layer's weight std sqrt(2/fan_in) (He).
- Fine-tuning (spec §3): identity STE for H and S (no clipping), the sqrt(e+1) magnitude surrogate, every
  parameter trained (latents, BN, float layers). Generalised to B=2/4 with K = 2^(B-1)-1 recursive latents
  (chain=binary: B-1 latents, e = Σ 2^(k-1) H(θ_k), not the authors' design). Optimizer: AdamW lr 1e-3 by default (our
  choice for short fine-tuning from converted weights: Adam's per-parameter step makes the flip rate depend on the
  latents' margins, not on each layer's gradient scale; not compared with SGD here), `optimizer=sgd lr=0.1` is the
  paper's from-scratch recipe; cosine LR to 0, weight decay 1e-4 on all parameters (spec §6), no warm-up.
- Loss: cross-entropy on labels (data = .npz (x, y), an image folder or an MNIST-style IDX folder, via
  edgekit.data.open_data; uint8 images are scaled to [0, 1], then input_mean/input_std apply) and/or distillation (KL at temperature T)
  from the original float model; `loss=auto` is CE with labels, KD without.
- train_steps=None: 0 (conversion only, NEEDS no data) without --data, `default_steps` (300) with data.
- variant=pot_zero: the S3/DeepShift-style baseline {0, ±2^p : p < 2^(B-1)-1} (7 values at B=3): same scale
  search and rounding with zero; fine-tuned (same budget) with an extra zero-gate latent, W = S(θ_s)·H(θ_z)·2^e, same
  STE and surrogate (our construction; S3's own training code is not replicated). variant=pot_nozero_noft: the
  DenseShift grid with conversion only (train_steps is forced to 0).
- Weight-freezing metric (spec §5, our operationalisation): flip rate and sign-flip rate between 20 evenly spaced
  snapshots, and the share of weights unchanged over the last 5 snapshots (report extra.training.freezing).
- Export: after training every ShiftLayer is materialised into the original plain Conv/Linear holding α·codes
  exactly, and the codes (±2^p integers, scale α, axis 0) are recorded through edgekit.quant.codes; the ONNX pass
  (export/qdq.py) picks the storage from the codes. storage=packed (default) records B bits: B=2 and B=3 are
  stored as B bit planes of an index into a 2^B-entry table (B bits per weight in model.onnx and in the OpenVINO
  IR, the `bitplane` kind), B=4 as a 4-bit index into a 16-entry table (uint4 -> Cast -> Gather -> Mul).
  storage=int8 records 8-bit codes: the exact int8 values ±2^p
  (B<=3) + DequantizeLinear, the form that INT8 kernels consume (B=4: ±128 exceeds int8, so a uint8 index + table).
  The report gives both the information bits (B per converted weight + the scale floats where not folded) and the
  bits each converted weight takes in the file.
- LiteRT: the .tflite is converted from the torch model and its integer-weight step (ai-edge-quantizer) picks its
  own 127-level per-channel grid, which does not hold ±2^p·α; the exact validation then keeps float weights there.
- export_precision is fp32: weights are exactly on their grid, so exports are checked at the float tolerance.
- Shift-capable hardware (spec §7): the report's `shift_estimate_*` fields are an ESTIMATE, not a measurement:
  f = the share of the model's MACs (on the example inputs) in converted layers; with the paper's 1.6x faster
  exponent-add FP16 dot product (ARM Cortex-A57) applied to those MACs only, Amdahl's law gives 1/((1-f) + f/1.6).
  Pooling, activations, BN and memory traffic are ignored (they only lower the gain).
"""
from __future__ import annotations

import copy
import json
import time
from typing import Literal

import torch
from pydantic import BaseModel, Field
from torch import nn

from ...flops import count_params, macs_by_module
from ...quant.codes import attach_codes, clear_codes
from ..common import MethodReport, check_new_safetensors, resolve_device, save_safetensors
from .convert import fold_scale_into_bn, plan_layers, search_scale, set_module
from .shift import ShiftLayer, n_magnitudes

NEEDS: Literal["none", "calibration", "training"] = "training"  # only when train_steps > 0 (None/0: data-free)
SUMMARY = "DenseShift: zero-free power-of-two (±2^p) weights, converted data-free + shift-aware fine-tuning (ICCV 2023)"
MODELS = ("cnn", "encoder")


def needs(cfg: "Config") -> str:
    """Training data only when fine-tuning steps are asked for (train_steps=None/0 converts data-free)."""
    return "training" if cfg.train_steps else "none"


class Config(BaseModel, extra="forbid"):
    """Options of DenseShift."""

    bits: int = Field(3, ge=2, le=4, description="weight bits B: 1 sign + B-1 exponent bits (2: ±1,±2; 3: ±1..±8)")
    variant: Literal["denseshift", "pot_zero", "pot_nozero_noft"] = Field(
        "denseshift", description="denseshift; pot_zero: baseline with zeros {0,±2^p}; pot_nozero_noft: no fine-tuning")
    chain: Literal["recursive", "binary"] = Field("recursive", description="exponent latents: the paper's recursive "
                                                  "chain (2^(B-1)-1 latents) or a binary code (B-1 latents)")
    init: Literal["convert", "lowvar"] = Field("convert", description="latents from the trained weights, or the "
                                               "paper's low-variance random init (from scratch)")
    keep_first: bool = Field(True, description="keep the first conv in float")
    keep_last: bool = Field(True, description="keep the last linear in float")
    skip: list[str] = Field(default_factory=list, description="regexes of module names to keep in float")
    storage: Literal["packed", "int8"] = Field(
        "packed", description="export storage: packed (B <= 3: B bit planes of table indices, B bits per weight; B=4: "
        "4-bit indices + table) or int8 (±2^p exact, B<=3)")
    fold_bn: bool = Field(True, description="fold the per-channel scale into the following BatchNorm (exact)")
    scale_search: int = Field(24, ge=0, le=200, description="scale candidates per channel (eighth-binade steps)")
    train_steps: int | None = Field(None, ge=0, description="fine-tuning steps (None: 0 without data, "
                                    "default_steps with data; 0: conversion only)")
    default_steps: int = Field(300, ge=0, description="steps used when train_steps is None and data is given")
    batch_size: int = Field(128, ge=1, description="fine-tuning batch size")
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="adamw, or sgd (paper: lr 0.1, momentum 0.9)")
    lr: float = Field(1e-3, gt=0, description="peak learning rate (cosine decay to 0)")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(1e-4, ge=0, description="weight decay on all parameters, latents included")
    loss: Literal["auto", "ce", "kd", "ce+kd"] = Field("auto", description="ce with labels, kd (distil from the "
                                                       "original model), or both; auto: ce if labels else kd")
    kd_temperature: float = Field(1.0, gt=0, description="distillation temperature")
    input_mean: list[float] | None = Field(None, description="per-channel mean subtracted from inputs (uint8 -> /255 first)")
    input_std: list[float] | None = Field(None, description="per-channel std dividing inputs")
    input_size: int | None = Field(None, ge=1, description="resize training images (bilinear, after mean/std) to this "
                                   "square size, e.g. 28 px Fashion-MNIST into a 224 px network (None: as given)")
    augment: Literal["none", "flip_shift"] = Field("none", description="flip_shift: random h-flip + ±2 px shift")
    bn: Literal["train", "frozen"] = Field("train", description="BatchNorm in train mode, or frozen statistics")
    latent_std: float = Field(1e-3, gt=0, description="std of the low-variance init (init=lowvar)")
    device: str = Field("cpu", description="cpu | cuda | auto")
    seed: int = Field(0, description="seed of batches, augmentation and init")
    checkpoint: str | None = Field(None, description="file to save/resume fine-tuning state (latents, optimizer, step)")
    checkpoint_every: int = Field(200, ge=1, description="steps between checkpoint saves")
    progress: bool = Field(True, description="progress bar on stderr while fine-tuning")
    save_weights: str | None = Field(None, description="new .safetensors file: the converted (fine-tuned) model's "
                                     "state dict under the source's own keys; `compress` of it with train_steps=0 "
                                     "converts it exactly (fine-tune on a GPU host, deploy elsewhere)")


def steps_for(cfg: Config, data) -> int:
    """Fine-tuning steps actually run (module doc)."""
    if cfg.variant == "pot_nozero_noft":
        return 0
    if cfg.train_steps is not None:
        return cfg.train_steps
    return cfg.default_steps if data is not None else 0


def _lowvar(layer: ShiftLayer, bn: nn.Module | None, cfg: Config, gen: torch.Generator) -> None:
    """Spec §4 init of one layer; α = 1 under a BN (reset), He-matched α without one."""
    layer.init_lowvar(cfg.latent_std, gen)
    if bn is not None:
        bn.reset_parameters()
        layer.alpha.fill_(1.0)
        return
    w = layer.base.weight
    P = n_magnitudes(cfg.bits, cfg.variant == "pot_zero")
    mean_sq = sum(4.0 ** p * 0.5 ** (p + 1) for p in range(P - 1)) + 4.0 ** (P - 1) * 0.5 ** (P - 1)
    mean_sq *= 0.5 if layer.zero else 1.0  # half the gates start closed
    fan_in = w[0].numel()
    layer.alpha.fill_((2.0 / fan_in) ** 0.5 / mean_sq ** 0.5)


SHIFT_DOT_SPEEDUP = 1.6  # the paper's exponent-add FP16 dot product vs multiply (ARM Cortex-A57; spec §7)


def _mac_share(model: nn.Module, names: set[str], example_inputs) -> float | None:
    """Share of the model's MACs (one forward pass on the example inputs, edgekit.flops) in the named modules."""
    try:
        total, per = macs_by_module(model, example_inputs)
    except Exception:  # noqa: BLE001 - the estimate is optional; a model that fails here just gets none
        return None
    return sum(per.get(n, 0) for n in names) / total if total else None


def apply(model: nn.Module, cfg: Config, data=None, example_inputs=None) -> tuple[nn.Module, MethodReport]:
    """Convert every eligible Conv/Linear to ±2^p codes (scale folded into BN), fine-tune if asked, record codes."""
    t0 = time.perf_counter()
    steps = steps_for(cfg, data)
    if steps > 0 and data is None:
        from ...errors import ConfigError

        raise ConfigError(f"denseshift with {steps} fine-tuning steps needs training data; pass --data (an .npz "
                          "with x[, y] or an image folder), or --set train_steps=0 for conversion only")
    save_to = check_new_safetensors(cfg.save_weights, "save_weights")  # before any work
    zero = cfg.variant == "pot_zero"
    model.eval()
    rep = MethodReport("denseshift", params_before=count_params(model))
    plan = plan_layers(model, cfg.keep_first, cfg.keep_last, cfg.skip)
    rep.layers_skipped.update(plan.skipped)
    teacher = copy.deepcopy(model).eval() if steps > 0 and cfg.init == "convert" else None
    mods = dict(model.named_modules())
    layers: dict[str, ShiftLayer] = {}
    folded, scaled, errors = [], [], {}
    gen = torch.Generator().manual_seed(cfg.seed)
    for name in plan.convert:
        mod = mods[name]
        bn = mods[plan.bn[name]] if (cfg.fold_bn and name in plan.bn) else None
        alpha, codes = search_scale(mod.weight, cfg.bits, zero, cfg.scale_search)
        w = mod.weight.detach().double()
        errors[name] = float((w - alpha.double().reshape((-1,) + (1,) * (w.dim() - 1)) * codes).norm()
                             / w.norm().clamp_min(1e-30))
        layer = ShiftLayer(mod, cfg.bits, cfg.chain, zero, alpha)
        if cfg.init == "lowvar":
            _lowvar(layer, bn, cfg, gen)
        else:
            x = w / alpha.double().reshape((-1,) + (1,) * (w.dim() - 1))
            layer.init_from(x, codes)
            if bn is not None and fold_scale_into_bn(mod, bn, alpha):
                layer.alpha.fill_(1.0)
        (folded if bool((layer.alpha == 1).all()) and bn is not None else scaled).append(name)
        set_module(model, name, layer)
        layers[name] = layer
    training = None
    if steps > 0:
        from .train import finetune

        dev = resolve_device(cfg.device)
        try:
            training = finetune(model, teacher, data, cfg, dev, layers, steps)
        finally:
            model.to("cpu")
    clear_codes(model)
    conv_w = 0
    storage, hist = {}, {}
    for name, layer in layers.items():
        plain, code = layer.materialize(8 if cfg.storage == "int8" else cfg.bits)
        set_module(model, name, plain)
        attach_codes(model, f"{name}.weight", code)
        conv_w += code.codes.numel()
        storage[name] = code.storage_bits()
        for v, c in zip(*torch.unique(code.codes, return_counts=True)):
            hist[int(v)] = hist.get(int(v), 0) + int(c)
    model.eval()
    total = rep.params_after = count_params(model)
    n_scales = sum(layers[n].alpha.numel() for n in scaled)
    rep.layers_touched = list(layers)
    rep.bits_per_weight = (conv_w * cfg.bits + (total - conv_w) * 32) / max(total, 1)
    stored = sum(storage[n] * dict(model.named_modules())[n].weight.numel() for n in layers)
    rep.extra.update(
        bits=cfg.bits, variant=cfg.variant, chain=cfg.chain, init=cfg.init, zero_free=not zero,
        levels=sorted(hist), code_histogram={str(k): v for k, v in sorted(hist.items())},
        converted_weights=conv_w,
        bits_per_converted_weight=(conv_w * cfg.bits + 32 * n_scales) / max(conv_w, 1),
        stored_bits_per_converted_weight=stored / max(conv_w, 1), storage_bits=storage,
        scale_folded_into_bn=folded, scale_kept=scaled, traced=plan.traced,
        conversion_rel_error=errors, train_steps=steps, training=training)
    share = _mac_share(model, set(layers), example_inputs) if example_inputs is not None else None
    if share is not None:
        rep.extra.update(shift_estimate_label="ESTIMATE, not measured: Amdahl's law with the paper's 1.6x exponent-add "
                                              "dot product on the converted layers' MACs",
                         shift_estimate_mac_fraction=round(share, 4),
                         shift_estimate_speedup=round(1 / ((1 - share) + share / SHIFT_DOT_SPEEDUP), 3))
        rep.extra["hardware_estimate"] = {  # what `edgekit profile` reports for hardware this host does not have
            "label": "estimate (not measured): a shift-capable accelerator (exponent-add instead of multiply, the "
                     "paper's 1.6x FP16 dot product) on the converted layers only, Amdahl's law",
            "summary": f"{share * 100:.1f}% of the MACs are in converted layers: ~"
                       f"{rep.extra['shift_estimate_speedup']:.2f}x on such hardware",
            "speedup": rep.extra["shift_estimate_speedup"], "converted_mac_fraction": round(share, 4)}
    if save_to is not None:
        meta = {k: getattr(cfg, k) for k in ("bits", "variant", "chain", "init", "storage")}
        rep.extra["saved_weights"] = {"path": str(save_to), "bytes": save_safetensors(
            save_to, model.state_dict(), {"denseshift": json.dumps({**meta, "train_steps": steps})})}
    rep.seconds = time.perf_counter() - t0
    return model, rep
