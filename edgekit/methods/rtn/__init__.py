"""Naive baseline: round-to-nearest symmetric per-channel weight quantization of Conv/Linear layers.

This is what a user gets with no method at all; every paper method is compared against it. Weights stay
on their integer grid (float values) and the codes are recorded, so the ONNX export stores real int8/int4.

`group_size` g (optional): Linear weights get one scale per g consecutive input weights of each output channel
(block-wise, as NNCF's INT4 g128 and ONNX Runtime's MatMulNBits use), which is what makes 4-bit weights usable on
LLMs (per-channel W4 has one scale for a whole row of 576-1536 weights, and an outlier in the row costs every
other weight its precision). Layers whose input size is not a multiple of g, and convolutions, keep per-channel
scales and are listed in the report. The fp32 scales cost 32/g bits per weight, counted in `bits_per_weight`.

`head_bits` (optional): the output head (`head_pattern`, default the LLM `lm_head`) gets its own bit width, per
channel. SmolLM2 ties lm_head to the token embedding, so 4 bits there quantize both, which alone costs most of W4's
perplexity loss; NNCF's INT4 default keeps embeddings and lm_head at INT8 for that reason. `head_bits=8` is that
choice, stated in the report (the head's layer and its bits).

`gptq` (optional, needs `--data`: text through the model's tokenizer, or token-id rows): the Linear layers of the
model's repeated blocks get GPTQ codes instead of rounded ones (edgekit.quant.gptq; calibration block by block in
gptq_run.py): the same grid, scales and storage, so every export and runtime format takes them unchanged, but each
code is chosen so that the layer's output on the calibration data moves least. Layers outside the blocks (the head,
a pooler) and convolutions keep RTN codes. Why in RTN and not a method of its own: it changes which grid point each
weight gets, nothing else, and the data-free RTN stays the default. Why written here rather than taken from a
library: NNCF's GPTQ works on its own OpenVINO/torch graph and writes its own grid (asymmetric by default, its own
scales), and ONNX Runtime's works on an ONNX file; neither hands back codes on this grid for the torch model that
every edgekit export starts from.
"""
from __future__ import annotations

import re
import time
from typing import Literal

import torch
from pydantic import BaseModel, Field
from torch import nn

from ...errors import ConfigError
from ...flops import count_params
from ...quant.codes import attach_codes, symmetric_per_channel, symmetric_per_group
from ..common import MethodReport

NEEDS: Literal["none", "calibration", "training"] = "calibration"  # only with gptq: see needs()
SUMMARY = "Baseline: round-to-nearest per-channel symmetric weight quantization (int8/int4), data-free"
MODELS = ("cnn", "encoder", "decoder")


class Config(BaseModel, extra="forbid"):
    """Options of the RTN baseline."""

    bits: int = Field(8, ge=2, le=8, description="weight bits (4 or 8 give real int4/int8 storage)")
    skip: list[str] = Field(default_factory=list, description="regexes of module names to leave in float")
    group_size: int | None = Field(None, ge=8, description="one scale per this many input weights of a Linear "
                                   "output channel (block-wise, e.g. 32 or 128); default one scale per channel")
    head_bits: int | None = Field(None, ge=2, le=8, description="bits of the output head (head_pattern), per channel; "
                                  "e.g. 8 with bits=4 keeps an LLM's lm_head and the embedding tied to it at 8 bits")
    head_pattern: str = Field(r"(^|\.)lm_head$", description="regex of the head module(s) that head_bits applies to")
    gptq: bool = Field(False, description="GPTQ codes for the Linear layers of the repeated blocks (needs --data: "
                       "text or token ids); same grid and storage as RTN, less output error")
    gptq_damp: float = Field(0.01, gt=0, le=1, description="GPTQ dampening: this fraction of the mean Hessian "
                             "diagonal is added to it")
    n_seqs: int = Field(32, ge=1, description="gptq: calibration windows (text) or token-id rows")
    seq_len: int = Field(512, ge=8, description="gptq: tokens per calibration window (text data)")
    seed: int = Field(0, description="gptq: seed of the calibration windows' offsets")
    tokenizer: str | None = Field(None, description="gptq: tokenizer folder for .txt data (default: the HF model's)")
    progress: bool = Field(True, description="gptq: a progress bar over the blocks on stderr")


def needs(cfg: Config) -> str:
    """Data-free, except with gptq (calibration data)."""
    return "calibration" if cfg.gptq else "none"


def apply(model: nn.Module, cfg: Config, data=None) -> tuple[nn.Module, MethodReport]:
    """Quantize every Conv/Linear weight in place and record its codes."""
    t0 = time.perf_counter()
    rep = MethodReport("rtn", params_before=count_params(model))
    qw, scale_bits, code_bits = 0, 0.0, 0.0
    gptq_codes = _gptq(model, cfg, data, rep) if cfg.gptq else {}
    for name, mod in model.named_modules():
        if not isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            continue
        if any(re.search(p, name) for p in cfg.skip):
            rep.layers_skipped[name] = "matches a skip pattern"
            continue
        w = mod.weight.data
        head = cfg.head_bits is not None and re.search(cfg.head_pattern, name) is not None
        bits = cfg.head_bits if head else cfg.bits
        if head:
            code = symmetric_per_channel(w, bits, axis=0)
            rep.extra.setdefault("head_layers", {})[name] = bits
        elif name in gptq_codes:
            code = gptq_codes[name]
            if code.group_size:
                scale_bits += w.numel() * 32 / code.group_size
        elif cfg.group_size and isinstance(mod, nn.Linear) and w.shape[1] % cfg.group_size == 0:
            code = symmetric_per_group(w, cfg.bits, cfg.group_size)
            scale_bits += w.numel() * 32 / cfg.group_size
        else:
            if cfg.group_size:
                rep.extra.setdefault("per_channel_layers", {})[name] = (
                    "a convolution" if not isinstance(mod, nn.Linear)
                    else f"input size {w.shape[1]} is not a multiple of group_size {cfg.group_size}")
            code = symmetric_per_channel(w, cfg.bits, axis=0)
        with torch.no_grad():
            mod.weight.copy_(code.dequantize())
        attach_codes(model, f"{name}.weight", code)
        rep.layers_touched.append(name)
        qw += mod.weight.numel()
        code_bits += mod.weight.numel() * bits
    total = rep.params_after = count_params(model)
    rep.bits_per_weight = (code_bits + scale_bits + (total - qw) * 32) / max(total, 1)
    if cfg.head_bits is not None and not rep.extra.get("head_layers"):
        raise ConfigError(f"head_bits={cfg.head_bits}: no module matches head_pattern '{cfg.head_pattern}'; set "
                          "head_pattern to the head's module name (see `edgekit inspect MODEL`)")
    if cfg.group_size:
        rep.extra["group_size"] = cfg.group_size
    rep.seconds = time.perf_counter() - t0
    return model, rep


def _gptq(model: nn.Module, cfg: Config, data, rep: MethodReport) -> dict:
    """GPTQ codes of the blocks' Linear layers (gptq_run.py), already set into the model; the report's `gptq`."""
    from ..common import progress_bar
    from ..llm_fp4.calib import calibration_calls
    from .gptq_run import gptq_blocks

    if data is None or len(data) == 0:
        raise ConfigError("rtn gptq=true needs calibration data; pass --data calib.txt (text) or .npy (token ids)")

    def skip(n: str) -> bool:
        return any(re.search(p, n) for p in cfg.skip) or (
            cfg.head_bits is not None and re.search(cfg.head_pattern, n) is not None)

    calls = calibration_calls(model, cfg, data)
    with progress_bar("rtn gptq", cfg.progress) as bar:
        task = bar.add_task("blocks", total=None)
        codes, rec = gptq_blocks(model, calls, cfg.bits, cfg.group_size, cfg.gptq_damp, skip,
                                 lambda i, n: bar.update(task, completed=i, total=n))
    rep.extra["gptq"] = {**rec, "damp": cfg.gptq_damp, "grid": "RTN's (symmetric)",
                         "calibration": f"{len(calls)} calls" + (f" of {cfg.seq_len} tokens" if data.texts else "")}
    return codes
