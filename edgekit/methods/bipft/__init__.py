"""BiPFT (Xing et al., AAAI 2024): a binary (W1A1) BERT-style encoder with low-rank estimators of the binarization
residual polynomial, distilled from the FP model. Spec: shared/methods/bipft.md (official code semantics).

What is binarized (spec §1-§3): every encoder linear (Q, K, V, attention output, FFN in/out) as BWN with one scale per
matrix (m·sgn(W − e), identity STE); the input of each binary linear after a learnable shift β (elastic binarizer,
learnable α, lazy 2·mean|x| init); the Q/K/V outputs (elastic); the attention probabilities (unsigned, α_P, lazy
4·mean P). Five FP rank-r estimators per layer (shared over heads by default) add a bᵀ + e fᵀ + e bᵀ to the scores and
P̂ g 1ᵀ to the context. Kept FP: position/token-type embeddings, LayerNorms, biases, β, α, estimators, the pooler.

Decisions where the spec is unsure or we differ, and why:
- sgn(0) = +1 everywhere (training and export): a 1-bit code has no zero, and both sides then agree exactly (§9).
- `initialized` is a saved buffer, so a loaded student never re-initialises its α (§9); α init happens on the first
  batch of the user's data (never on the exporter's random inputs).
- Word embeddings: `embed_bits=8` (default, what the issue's size goal asks: per-row symmetric int8, round-to-nearest),
  1 (the code's row-wise BWN: m_v·sgn(E_v − mean E), codes ±1 per-row scale) or 32. Embeddings stay frozen in
  distillation (they are not binary latents when 8/32; with 1 the binarized table is fixed too: our choice, it keeps
  the trained-student file small and needs no gather-side STE).
- Pooler: kept FP and unmodified (the code's LN+residual pooler is not loadable into a vanilla BertModel and
  sentence encoders mean-pool the last hidden state instead).
- Distillation loss (spec §5): KD_hid = mean over embeddings + every layer output of the MSE, over real tokens only
  (the code averages over padding too; we mask it so short texts are not dominated by pad positions); optional
  attention KD (`attn_weight`, KL(P_T‖P_S) per real query row; the code has none, so the default is 0). No MLM/NSP
  loss: encoders given to edgekit (e.g. sentence-transformers MiniLM) carry no MLM/NSP heads.
- Dropout: off in teacher and student by default (`dropout=false`; the code keeps both in train mode, which adds
  noise a short budget cannot average out). Optimiser AdamW (lr 2e-4, wd 0 as the code), linear warm-up over
  min(warmup_steps, steps/10) then linear decay to 0.
- `fit_steps`: before distillation the estimators alone are fitted to the layer's own residual (spec §8.5,
  no teacher): the "estimators, no distillation" variant of the issue when `train_steps=0`, and the estimators' start
  for distillation otherwise (the code starts them at N(0, 0.02²); `fit_steps=0` reproduces that).
- `rank=0` drops the estimators (plain binary attention, BiBERT-like); `binary_act=false` binarizes weights only
  (BWN, W1A32) - both are baselines.
- Export: after training each binary weight becomes exactly m·(±1) and is recorded as a 1-bit WeightCode
  (`storage=packed`: bit planes, 8 weights a byte, unpacked in the graph and constant-folded at load) or an 8-bit one
  (`storage=int8`: int8 ±1 + DequantizeLinear). CPU runtimes have no binary GEMM: latency is that of the float
  graph (the binarizers are Where/Greater ops); the binary-kernel gain is only an estimate (bit-op counts).
- Validation: binary activations turn 1e-7 float differences into sign flips, so exports are judged at
  export_precision "act_quant" (against a float64 twin, edgekit.export.validate).
"""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field
from torch import nn

from ...errors import ConfigError, UnsupportedModelError
from ...flops import count_params
from ...quant.codes import WeightCode, attach_codes, clear_codes, symmetric_per_channel
from ..common import MethodReport, resolve_device
from .attention import BiPFTSelfAttention
from .binarize import BinaryLinear, sign_pm

NEEDS: Literal["none", "calibration", "training"] = "training"
SUMMARY = "BiPFT: 1-bit weights and activations with low-rank residual estimators, distilled from FP (AAAI 2024)"
MODELS = ("encoder",)


def needs(cfg: "Config") -> str:
    """Training data when distilling or fitting; calibration data otherwise (α is set from real activations)."""
    if cfg.load_binary:
        return "none"
    return "training" if cfg.train_steps or cfg.fit_steps else "calibration"


class Config(BaseModel, extra="forbid"):
    """Options of BiPFT."""

    rank: int = Field(1, ge=0, le=64, description="rank r of the residual estimators (0: none, plain binary attention)")
    per_head: bool = Field(False, description="one estimator set per head instead of one shared over heads")
    binary_act: bool = Field(True, description="binarize activations (W1A1); false: weights only (BWN baseline)")
    embed_bits: Literal[1, 8, 32] = Field(8, description="word-embedding bits: 8 per-row int8, 1 row-wise binary, 32")
    storage: Literal["packed", "int8"] = Field("packed", description="export: 1-bit planes + in-graph unpack, or int8 ±1")
    train_steps: int = Field(60, ge=0, description="distillation steps (0: none); the default is a CPU smoke budget")
    fit_steps: int = Field(50, ge=0, description="steps fitting only the estimators to their residual, before KD")
    fit_lr: float = Field(1e-2, gt=0, description="Adam learning rate of the estimator fit")
    batch_size: int = Field(16, ge=1, description="texts per step")
    seq_len: int = Field(128, ge=4, le=4096, description="tokens per text (truncated), as the code's 128")
    lr: float = Field(2e-4, gt=0, description="AdamW peak learning rate (code: 2e-4)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (code: 0)")
    warmup_steps: int = Field(500, ge=0, description="warm-up steps (capped at a tenth of train_steps)")
    hid_weight: float = Field(1.0, ge=0, description="weight of the hidden-state MSE distillation")
    attn_weight: float = Field(0.0, ge=0, description="weight of the attention KL distillation (code: none)")
    dropout: bool = Field(False, description="keep dropout on in teacher and student while distilling (code: on)")
    tokenizer: str | None = Field(None, description="local tokenizer folder for text data (default: the model's)")
    device: str = Field("cpu", description="cpu | cuda | auto")
    seed: int = Field(0, description="seed of batches and estimator init")
    checkpoint: str | None = Field(None, description="file to save/resume the distillation state (model, optimizer)")
    checkpoint_every: int = Field(500, ge=1, description="steps between checkpoint saves")
    save_binary: str | None = Field(None, description="also write the trained student compactly (packed bits) here")
    load_binary: str | None = Field(None, description="load a student written by save_binary instead of training")
    progress: bool = Field(True, description="progress bar on stderr while distilling")


def find_bert(model: nn.Module) -> nn.Module:
    """The BERT-style encoder inside `model` (a module with .embeddings and .encoder.layer), else a clear error."""
    for m in model.modules():
        layers = getattr(getattr(m, "encoder", None), "layer", None)
        if hasattr(m, "embeddings") and isinstance(layers, nn.ModuleList) and len(layers) and all(
                hasattr(l, "attention") and hasattr(l.attention, "self") and hasattr(l, "intermediate")
                for l in layers):
            return m
    raise UnsupportedModelError(f"bipft binarizes BERT-style encoders (a module with .embeddings and .encoder.layer "
                                f"of BertLayer-like blocks); {type(model).__name__} has none")


def _embed_code(emb: nn.Embedding, bits: int) -> WeightCode | None:
    """Quantize the word-embedding table in place (module doc) and return its code."""
    w = emb.weight.detach()
    if bits == 32:
        return None
    if bits == 8:
        code = symmetric_per_channel(w, 8, axis=0)
    else:
        m = w.abs().mean(1)
        code = WeightCode(sign_pm(w - w.mean()).to(torch.int8), m.float(), 0, 1)
    emb.weight.data = code.dequantize().to(w.dtype)
    return code


def binarize_bert(bert: nn.Module, cfg: Config) -> list[str]:
    """Swap every encoder layer's attention and linears for their BiPFT forms; returns the binary linears' names."""
    torch.manual_seed(cfg.seed)  # estimator init
    heads = bert.config.num_attention_heads
    names = []
    for i, layer in enumerate(bert.encoder.layer):
        layer.attention.self = BiPFTSelfAttention(layer.attention.self, heads, cfg.rank, cfg.per_head, cfg.binary_act)
        layer.attention.output.dense = BinaryLinear(layer.attention.output.dense, cfg.binary_act)
        layer.intermediate.dense = BinaryLinear(layer.intermediate.dense, cfg.binary_act)
        layer.output.dense = BinaryLinear(layer.output.dense, cfg.binary_act)
        names += [f"encoder.layer.{i}.attention.self.{k}" for k in ("query", "key", "value")]
        names += [f"encoder.layer.{i}.{k}" for k in ("attention.output.dense", "intermediate.dense", "output.dense")]
    return names


def apply(model: nn.Module, cfg: Config, data=None) -> tuple[nn.Module, MethodReport]:
    """Binarize the encoder, fit estimators / distil from the FP copy as configured, record 1-bit codes for export."""
    from . import train as T

    t0 = time.perf_counter()
    bert = find_bert(model)  # before any work
    if needs(cfg) != "none" and data is None:
        raise ConfigError(f"bipft needs {needs(cfg)} data (the α scales are set from real activations); pass --data "
                          "corpus.txt (any text) or --set load_binary=FILE")
    model.eval()
    rep = MethodReport("bipft", params_before=count_params(model))
    dev = resolve_device(cfg.device)
    teacher = copy.deepcopy(model).eval() if cfg.train_steps and not cfg.load_binary else None
    tbert = find_bert(teacher) if teacher is not None else None
    prefix = next(n for n, m in model.named_modules() if m is bert)
    pre = f"{prefix}." if prefix else ""
    emb = bert.embeddings
    ecode = _embed_code(emb.word_embeddings, cfg.embed_bits)
    skip = set()
    for n, p in emb.named_parameters():
        if isinstance(dict(emb.named_modules()).get(n.rsplit(".", 1)[0]), nn.Embedding):
            p.requires_grad_(False)
            skip.add(f"{pre}embeddings.{n}")
    lin_names = binarize_bert(bert, cfg)
    extra: dict = {"rank": cfg.rank, "per_head": cfg.per_head, "binary_act": cfg.binary_act,
                   "embed_bits": cfg.embed_bits, "storage": cfg.storage}
    try:
        if cfg.load_binary:
            T.load_binary(model, skip, Path(cfg.load_binary))
            extra["loaded_from"] = cfg.load_binary
        else:
            batches = T.TextBatches(data, model, cfg)
            model.to(dev)
            ids, mask = batches.get(-1, cfg.batch_size)
            with torch.no_grad():  # lazy α init on real data
                T.run_model(model, ids.to(dev), mask.to(dev))
            if cfg.rank > 0 and cfg.fit_steps and cfg.binary_act:
                extra["estimator_fit"] = T.fit_estimators(model, bert, batches, cfg, dev)
            if cfg.train_steps:
                extra["distillation"] = T.distill(model, bert, teacher, tbert, batches, cfg, dev, cfg.train_steps)
    finally:
        model.to("cpu")
        if teacher is not None:
            teacher.to("cpu")
    if cfg.save_binary:
        extra["saved_binary_bytes"] = T.save_binary(model, skip, Path(cfg.save_binary))
    clear_codes(model)
    n_bin = side = 0
    for n in lin_names:
        lin = bert.get_submodule(n)
        lin.freeze()
        s, m = lin.codes()
        attach_codes(model, f"{pre}{n}.weight", WeightCode(s, m, None, 1 if cfg.storage == "packed" else 8))
        n_bin += s.numel()
        side += lin.out_features + (lin.in_features + 1 if cfg.binary_act else 0) + 1  # bias, β, α, m
    est = sum(p.numel() for n, p in model.named_parameters() if ".est." in n)
    others = sum(p.numel() for n, p in bert.encoder.named_parameters() if "dense.weight" not in n and ".query.weight"
                 not in n and ".key.weight" not in n and ".value.weight" not in n)
    if ecode is not None:
        attach_codes(model, f"{pre}embeddings.word_embeddings.weight", ecode)
    model.eval()
    total = rep.params_after = count_params(model)
    n_emb = emb.word_embeddings.weight.numel()
    stored = 1 if cfg.storage == "packed" else 8
    rep.layers_touched = lin_names + ([f"{pre}embeddings.word_embeddings"] if ecode is not None else [])
    rep.layers_skipped = {f"{pre}embeddings.position_embeddings": "kept FP (spec §1)", f"{pre}pooler":
                          "kept FP (module doc)"} if hasattr(bert, "pooler") and bert.pooler is not None else {}
    rep.bits_per_weight = (n_bin * 1 + n_emb * cfg.embed_bits + (total - n_bin - n_emb) * 32) / max(total, 1)
    extra.update(
        binary_weights=n_bin,
        bits_per_encoder_linear_weight=(n_bin + 32 * len(lin_names)) / max(n_bin, 1),
        stored_bits_per_encoder_linear_weight=(n_bin * stored + 32 * len(lin_names)) / max(n_bin, 1),
        encoder_fp_side_params=others, estimator_params=est,
        bits_per_encoder_weight_with_fp_side_params=(n_bin + 32 * others) / max(n_bin, 1),
        alphas={n: float(p.detach()) for n, p in model.named_parameters() if n.endswith(".alpha")} if len(lin_names) <= 24
        else None)
    extra["hardware_estimate"] = binary_hardware_estimate(bert.config, cfg.seq_len, cfg.rank)
    rep.extra = extra
    rep.export_precision = "act_quant" if cfg.binary_act else "fp32"
    rep.seconds = time.perf_counter() - t0
    return model, rep


def binary_hardware_estimate(config: Any, seq: int, rank: int) -> dict[str, Any]:
    """ESTIMATE, not a measurement (CPU runtimes have no 1-bit GEMM): MACs of the binarized encoder on 1-bit
    hardware by bit-op accounting (an XNOR-popcount on 64-bit words does 64 binary MACs, counted as one FP32 MAC, the
    paper's convention), against the FP32 encoder, at `seq` tokens; the FP estimators (rank r) stay FP32 MACs."""
    n, d, ff = config.num_hidden_layers, config.hidden_size, config.intermediate_size
    lin = n * seq * (4 * d * d + 2 * d * ff)
    attn = n * 2 * seq * seq * d
    est = n * seq * (4 * d + 1) * 5 * max(rank, 0) + n * 3 * seq * seq
    fp = lin + attn
    x = fp / (fp / 64 + est)
    return {"label": "estimate (not measured): 1-bit hardware, bit-op accounting",
            "summary": f"~{x:.0f}x fewer FP32-equivalent MACs than the FP32 encoder at {seq} tokens on hardware with "
                       "XNOR-popcount (64 binary MACs per word op); CPU runtimes here have no 1-bit GEMM",
            "fp32_macs": fp, "binary_macs": fp, "fp_macs_estimators": est, "speedup": round(x, 1)}
