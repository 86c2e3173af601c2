"""LLM-FP4 (Liu et al., EMNLP 2023): 4-bit floating-point PTQ of weights and activations. Spec: shared/methods/llm_fp4.md.

Every nn.Linear (weight per output channel, input activation per tensor or FPQ per-channel shifts) and every
nn.Embedding (per row) is put on an ExMy grid with a real exponent bias found by the layer-output-MSE search of
`search.py`. Weights stay as codes·unit and are recorded as WeightCodes (int8 / int4 + DequantizeLinear on export);
activations become a fake-quant op in front of the linear (`FPQLinear`), exported as plain ONNX ops.

Decisions (why):
- Calibration is layer-parallel like the official code (each layer sees FP inputs), captured a few layers at a
  time by forward pre-hooks under a memory budget (`cache_mb`), with the forward stopped once the group has fired;
  all layers are switched to quantized only at the end. Never every layer's activations at once.
- Data: `.txt` -> tokenized with `tokenizer` (a folder) or the HF model's own folder (config.name_or_path);
  windows of `seq_len` tokens at seeded random offsets. `.npy/.npz` tensors are fed as-is (token ids for LMs,
  floats for plain models). The model is called with input_ids (+ an all-ones attention_mask when it takes one).
- Defaults keep SmolLM2-135M under 15 min on 2 cores: 8x256 calibration tokens (ranges), 256 of them for the
  MSE, "max" grid of 16 candidates, 2 rounds. The code's budget (32x1024 tokens, bias grid, n=100, 3 rounds) is
  reachable by options. lm_head is skipped by default (a tied lm_head shares the embedding's quantized rows).
- Weight-only (a_bits None or 16) uses the same search with float inputs, one round.
- FPQ shifts with headroom (`a_headroom`, ours, not the paper's): the shifts fit each channel to its calibration
  maximum, and on unseen text SmolLM2's down_proj inputs spike 5-9.5x above it and are clipped (plain FPQ W8A8:
  +5.7% perplexity). Lowering every shift by h binades lets a channel reach 2^h x its calibration max. Chosen on
  Python-docs windows disjoint from the evaluation ones: h = 0/1/2/3 gave +5.7/+2.6/+0.5/+0.2% at W8A8, so the
  default is 2 at >= 6-bit activations (8-bit formats have range to spare) and 0 at 4 bits (the paper's shifts,
  where every binade of precision counts).
- `device`: calibration and search run where the model is put (cuda for large calibrations), results on the CPU.
- Storage: E1M2 codes (|c| <= 7) are int4; E2M1 (|c| <= 12) and E3M0 (|c| <= 64) take at most 16 values, so they
  are stored as 4-bit indices into a 16-entry table of the codes (quant.codes.WeightCode.storage_bits): 4-bit weights
  are 8x smaller than fp32 whatever the per-layer format. 8-bit formats: codes·unit spans far more than int8 (largest code
  (2^(M+1)-1)·2^(2^E-2): E1M6 127, E2M5 252, E3M4 1984, E4M3 245760, E5M2 7·2^30) though the grid has 255 values,
  so export.qdq stores E1M6 as int8 + DequantizeLinear and the others as uint8 indices into a per-tensor table of
  the codes (Gather, then the row scale): exact and 4x smaller. The codes are kept in the smallest integer dtype
  that holds the format's largest code (`_code`). Until this was fixed, 8-bit codes were cast to int8 (252 -> -4)
  and to int16 (E4M3/E5M2 overflowed), and every 8-bit BERT export failed validation (MiniLM W8 rel L2 ~8). The activation records (`edgekit.quant.act`) + the weight codes feed
  edgekit.export.fp4_matmul, which turns each A4 fake-quant linear into an exact int8 MatMulInteger (spec §9.3).
  With `int_matmul` (default) the ONNX export does this on its own (export.onnx.to_onnx), checks each rewritten
  layer on ONNX Runtime against exact integer arithmetic, and lists rewritten / kept layers in the manifest and
  this method's report.
- Fan-out (`--set executor=ray [workers=N] [ray_address=HOST:PORT]`, edgekit.methods.fanout): every layer's
  format/bias search (`search.search_layer`) and every embedding table's (`search.search_embedding`) is one Ray
  task. This is exact because the search is layer-parallel: each layer is searched on inputs captured from the
  *float* model (all layers are switched to quantized only at the end), so no layer's result depends on another's;
  within a layer the rounds and the W/A half-steps are sequential (each depends on the previous pick) and stay in
  one task. What is shared across layers stays on the driver, in the local order: capture (the model's forward,
  a group at a time), the seeded MSE token subset (one generator, drawn layer after layer) and the per-channel
  maxima; a task gets the layer's weight, that subset, its weights and the maxima (each sent once, through the
  object store) and runs the same function as the local run on the same tensors, so formats, biases, shifts and
  codes are equal bit for bit (tested with torch.equal; workers run torch with 1 thread). Searches run while the
  next group is captured; results are collected by layer name in the local order. The report's `fan_out` says
  what ran where. executor=ray needs device=cpu (the workers are CPU processes).
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
from ...quant import fp as F
from ...quant.act import attach_act_records
from ...quant.codes import WeightCode, attach_codes
from . import search as S
from ..common import resolve_device
from .calib import calibration_calls, capture
from ..common import MethodReport

NEEDS: Literal["none", "calibration", "training"] = "calibration"
SUMMARY = "LLM-FP4: FP4/FP8 (ExMy, real exponent bias) weights+activations with format/bias search (EMNLP 2023)"
MODELS = ("encoder", "decoder")


class Config(BaseModel, extra="forbid"):
    """Options of LLM-FP4."""

    w_bits: int = Field(4, ge=3, le=8, description="weight bits (4: E3M0/E2M1/E1M2, 8: E5M2..E1M6)")
    a_bits: int | None = Field(4, description="activation bits; None or 16 = weight-only")
    e_bits: int | None = Field(None, description="embedding bits; None = w_bits, 16 = keep embeddings float")
    variant: Literal["fpq", "fpq_baseline", "minmax", "minmax_int"] = Field(
        "fpq", description="fpq: search + per-channel activation shifts; fpq_baseline: search, per-tensor; "
                           "minmax: FP, no search; minmax_int: symmetric INT min-max")
    grid: Literal["max", "bias"] = Field("max", description="max: clip max a*absmax (paper); bias: b=c*b0 (code)")
    n_candidates: int = Field(16, ge=1, le=400, description="candidates per format and search step (code: 100)")
    rounds: int = Field(2, ge=1, le=10, description="alternating W/A search rounds (code: 3)")
    alpha_min: float = Field(0.3, gt=0.0, lt=1.0, description="smallest clip ratio of the max grid")
    gamma: tuple[float, float] = Field((0.01, 1.2), description="bias-grid range (g1, g2) of the code")
    shift_round: Literal["search", "floor", "code"] = Field(
        "search", description="FPQ shift k_j: code round(b~_j)-round(rho), floor(b~_j-rho), or search both by MSE")
    w_formats: list[str] | None = Field(None, description="restrict weight formats, e.g. ['E1M2'] (int4 storage)")
    a_formats: list[str] | None = Field(None, description="restrict activation formats, e.g. ['E2M1']")
    seq_len: int = Field(256, ge=8, description="tokens per calibration window (text data)")
    n_seqs: int = Field(8, ge=1, description="calibration windows (text), rows of token-id arrays, or n_seqs*seq_len "
                                               "rows of float arrays; ranges use all their tokens")
    search_tokens: int = Field(256, ge=16, description="tokens per layer used in the MSE objective (seeded subset)")
    seed: int = Field(0, description="seed of window offsets and the token subset")
    keep_outlier_tokens: bool = Field(True, description="the MSE token subset always holds the search_tokens//8 "
                                                        "tokens of largest |x| (reweighted: unbiased full-data MSE); "
                                                        "False = plain random subset (the old behaviour)")
    tokenizer: str | None = Field(None, description="tokenizer folder for .txt data (default: the HF model's)")
    skip: list[str] = Field(default_factory=lambda: [r"(^|\.)lm_head$"], description="regexes of modules kept float")
    a_headroom: int | None = Field(None, ge=0, le=7, description="lower every FPQ activation shift by this many "
                                   "binades, so a channel clips only above 2^h x its calibration maximum; None = 2 "
                                   "for a_bits >= 6, 0 (the paper) below")
    device: str = Field("cpu", description="torch device of calibration and search: cpu, cuda or auto; the model "
                                           "comes back on the CPU")
    cache_mb: int = Field(256, ge=8, description="memory budget for cached layer inputs during calibration")
    progress: bool = Field(True, description="per-layer progress bar on stderr")
    executor: Literal["local", "ray"] = Field("local", description="where the per-layer searches run: here, or as "
                                              "Ray tasks (same results; pip install 'edgekit[ray]')")
    workers: int | None = Field(None, ge=1, description="executor=ray: CPU slots of the local Ray instance "
                                "(default: all cores); with ray_address, only a hint of the cluster's size")
    ray_address: str | None = Field(None, description="executor=ray: join this cluster (HOST:PORT or "
                                    "ray://HOST:PORT) instead of starting a local Ray instance")
    int_matmul: bool = Field(True, description="ONNX export: turn each A4 fake-quant linear whose codes fit int8 into "
                                               "an exact integer Cast+MatMulInteger+rescale (spec §9.3); the rest "
                                               "keeps the fake-quant graph, listed with the reason")


def _fmts(names: list[str] | None) -> list[F.Format] | None:
    try:
        return [F.parse_format(n) for n in names] if names else None
    except ValueError as e:
        raise ConfigError(f"llm_fp4: {e}") from None


class FPQLinear(nn.Linear):
    """nn.Linear whose input is fake-quantized: x -> u·Q(x/u) on an ExMy (or INT) grid; u per tensor or channel."""

    def __init__(self, lin: nn.Linear, act: S.ActQ):
        super().__init__(lin.in_features, lin.out_features, bias=lin.bias is not None, device="meta")
        self.weight = lin.weight
        self.bias = lin.bias
        self.register_buffer("a_unit", act.unit.detach().clone().float())
        self.a_kind, self.a_E, self.a_M, self.a_qmax = act.kind, act.fmt[0], act.fmt[1], float(act.qmax)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq = F.quant_units(x, self.a_unit, self.a_E, self.a_M, self.a_kind, self.a_qmax)
        return nn.functional.linear(xq, self.weight, self.bias)


def _progress(enabled: bool, total: int):
    """A rich progress bar on stderr (a no-op object when disabled)."""
    from ..common import progress_bar

    return progress_bar("llm_fp4", enabled)


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, new)


def _code(wq: S.WeightQ, bits: int) -> WeightCode:
    """WeightCode of a quantized weight, in the smallest integer dtype that holds every code of its grid: 8-bit
    formats reach 245760 (E4M3) and 7·2^30 (E5M2), which int16 (the old dtype) silently wrapped."""
    top = F.max_code(*wq.fmt) if wq.kind == "fp" else float(wq.codes.abs().max()) if wq.codes.numel() else 0.0
    dt = next(d for d in (torch.int16, torch.int32, torch.int64) if top <= torch.iinfo(d).max)
    return WeightCode(wq.codes.to(dt), wq.unit.to(torch.float32), 0, bits)


def apply(model: nn.Module, cfg: Config, data=None) -> tuple[nn.Module, MethodReport]:
    """Calibrate, then quantize every non-skipped Linear (W + A) and Embedding (W) in place."""
    t0 = time.perf_counter()
    a_bits = None if cfg.a_bits in (None, 16) else cfg.a_bits
    if a_bits is not None and not 3 <= a_bits <= 8:
        raise ConfigError(f"llm_fp4: a_bits={a_bits} is not supported; use 4..8, or 16/None for weight-only")
    e_bits = cfg.w_bits if cfg.e_bits is None else (None if cfg.e_bits == 16 else cfg.e_bits)
    opts = S.SearchOpts(cfg.variant, cfg.w_bits, a_bits, cfg.grid, cfg.n_candidates, cfg.rounds, tuple(cfg.gamma),
                        cfg.alpha_min, _fmts(cfg.w_formats), _fmts(cfg.a_formats), cfg.shift_round,
                        cfg.a_headroom if cfg.a_headroom is not None else (2 if (a_bits or 0) >= 6 else 0))
    dev = resolve_device(cfg.device)
    from .. import fanout

    fanout.check("llm_fp4", cfg, str(dev))  # executor options: one-line errors before any work
    rep = MethodReport("llm_fp4", params_before=count_params(model))

    def skip(n: str) -> bool:
        return any(re.search(p, n) for p in cfg.skip)

    embs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Embedding)}
    for n, m in model.named_modules():  # said, not silently left float
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            rep.layers_skipped[n] = "a convolution: LLM-FP4 quantizes Linear layers (use udfc, rtn or denseshift)"
    lins: dict[str, nn.Linear] = {}
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            if skip(n):
                tied = [e for e, em in embs.items() if em.weight is m.weight]
                rep.layers_skipped[n] = "matches a skip pattern" + (f"; weight tied to {tied[0]}" if tied else "")
            else:
                lins[n] = m
    for n, m in lins.items():  # a quantized tied lm_head gets its own copy of the weight
        if any(em.weight is m.weight for em in embs.values()):
            m.weight = nn.Parameter(m.weight.detach().clone())
    calls = [(tuple(a.to(dev) if torch.is_tensor(a) else a for a in args),
              {k: v.to(dev) if torch.is_tensor(v) else v for k, v in kw.items()})
             for args, kw in calibration_calls(model, cfg, data)]
    try:
        model.to(dev)
        results, emb_q, tokens = _calibrate(model, cfg, opts, lins, embs, e_bits, calls, skip, rep)
    finally:
        model.to("cpu")
    layers, act_records, stored, qn = {}, {}, 0.0, 0
    for n, (wq, act) in results.items():
        lin = lins[n]
        with torch.no_grad():
            lin.weight.copy_(wq.weight())
        code = _code(wq, cfg.w_bits)
        attach_codes(model, f"{n}.weight", code)
        stored += code.storage_bits() * lin.weight.numel()
        qn += lin.weight.numel()
        info = {"w_format": F.fmt_name(wq.fmt) if wq.kind == "fp" else f"INT{cfg.w_bits}", **wq.stats}
        if act is not None:
            _set_module(model, n, FPQLinear(lin, act))
            act_records[n] = act
            info["a_format"] = F.fmt_name(act.fmt) if act.kind == "fp" else f"INT{a_bits}"
            if act.shift is not None:
                info["a_shift_max"] = int(act.shift.max())
                info["a_shifted_frac"] = round(float((act.shift > 0).float().mean()), 4)
        layers[n] = info
        rep.layers_touched.append(n)
    for n, wq in emb_q.items():
        m = embs[n]
        with torch.no_grad():
            m.weight.copy_(wq.weight())
        code = _code(wq, e_bits)
        attach_codes(model, f"{n}.weight", code)
        for ln, lm in model.named_modules():  # a tied, skipped lm_head shares these codes
            if isinstance(lm, nn.Linear) and lm.weight is m.weight:
                attach_codes(model, f"{ln}.weight", code)
        stored += code.storage_bits() * m.weight.numel()
        qn += m.weight.numel()
        layers[n] = {"w_format": F.fmt_name(wq.fmt) if wq.kind == "fp" else f"INT{e_bits}", **wq.stats}
        rep.layers_touched.append(n)
    attach_act_records(model, act_records, int_matmul=bool(cfg.int_matmul and a_bits))
    total = rep.params_after = count_params(model)
    rep.bits_per_weight = (stored + (total - qn) * 32) / max(total, 1)
    rep.seconds = time.perf_counter() - t0
    fm: dict[str, int] = {}
    for info in layers.values():
        for k in ("w_format", "a_format"):
            if k in info:
                fm[f"{k[0]}:{info[k]}"] = fm.get(f"{k[0]}:{info[k]}", 0) + 1
    rep.export_precision = "act_quant" if a_bits else "fp32"
    rep.extra = {"fan_out": rep.extra.get("fan_out", {"executor": "local"}), "variant": cfg.variant,
                 "nominal_bits": {"w": cfg.w_bits, "a": a_bits, "e": e_bits}, "calibration_tokens": tokens,
                 "a_headroom": opts.a_headroom if a_bits else None,
                 "formats": fm, "layers": layers, "int_matmul_requested": bool(cfg.int_matmul and a_bits),
                 "layers_never_worse_than_minmax": sum(i["mse"] <= i["mse_minmax"] * (1 + 1e-6)
                                                       for i in layers.values() if "mse_minmax" in i)}
    return model, rep


def _search_task(w: torch.Tensor, sub: torch.Tensor, xmax: torch.Tensor, opts: S.SearchOpts,
                 wts: torch.Tensor | None) -> tuple[S.WeightQ, S.ActQ | None]:
    """A Ray task of the fan-out: one linear's search (the same call as the local run makes)."""
    wq, act = S.search_layer(w, sub, xmax, opts, wts)
    return wq.cpu(), None if act is None else act.cpu()


def _embedding_task(w: torch.Tensor, bits: int, opts: S.SearchOpts) -> S.WeightQ:
    """A Ray task of the fan-out: one embedding table's search."""
    return S.search_embedding(w, bits, opts).cpu()


def _calibrate(model: nn.Module, cfg: Config, opts: S.SearchOpts, lins: dict, embs: dict, e_bits: int | None,
               calls: list, skip, rep: MethodReport) -> tuple[dict, dict, int]:
    """Layer-parallel search over the non-skipped linears (a few at a time) and embeddings, on the model's device;
    results on the CPU. With executor=ray each search is a Ray task (see the module docstring)."""
    from .. import fanout

    if cfg.executor != "ray":
        return _calibrate_in(model, cfg, opts, lins, embs, e_bits, calls, skip, rep, None)
    with fanout.pool("llm_fp4", cfg) as p:
        out = _calibrate_in(model, cfg, opts, lins, embs, e_bits, calls, skip, rep, p)
        rep.extra["fan_out"] = p.report()
    return out


def _calibrate_in(model: nn.Module, cfg: Config, opts: S.SearchOpts, lins: dict, embs: dict, e_bits: int | None,
                  calls: list, skip, rep: MethodReport, pool) -> tuple[dict, dict, int]:
    """`_calibrate` here (pool None) or with every layer's and table's search submitted to a fanout.Pool: the
    driver still captures, picks the MSE token subset (one seeded generator, in layer order) and submits; the
    searches run while the next group is captured, and results are collected by name at the end."""
    tokens = 0
    results: dict[str, tuple[S.WeightQ, S.ActQ | None]] = {}
    emb_q: dict[str, S.WeightQ] = {}
    submitted: dict[int, tuple[str, str]] = {}
    gen = torch.Generator().manual_seed(cfg.seed)
    with _progress(cfg.progress, len(lins) + len(embs)) as bar:
        task = bar.add_task("calibrate", total=len(lins) + len(embs))
        names = list(lins)
        while names:
            group, budget = [], cfg.cache_mb * 2**20
            while names and (not group or budget > 0):
                group.append(names.pop(0))
                budget -= 4 * lins[group[-1]].in_features * cfg.seq_len * cfg.n_seqs
            xs = capture(model, calls, {n: lins[n] for n in group})
            for n in group:
                bar.update(task, description=n)
                if n not in xs:
                    rep.layers_skipped[n] = "never called on the calibration data"
                    bar.advance(task)
                    continue
                x = xs.pop(n)
                tokens = max(tokens, x.shape[0])
                sub, wts = S.search_subset(x, cfg.search_tokens, gen) if cfg.keep_outlier_tokens else \
                    (x if x.shape[0] <= cfg.search_tokens else
                     x[torch.randperm(x.shape[0], generator=gen)[: cfg.search_tokens].sort().values], None)
                if pool is None:
                    results[n] = _search_task(lins[n].weight, sub, x.abs().amax(0), opts, wts)
                    bar.advance(task)
                else:
                    submitted[pool.submit(_search_task, lins[n].weight.detach().cpu(), sub.cpu(),
                                          x.abs().amax(0).cpu(), opts, None if wts is None else wts.cpu())] = (
                        "lin", n)
        for n, m in embs.items():
            bar.update(task, description=n)
            if e_bits is None or skip(n):
                rep.layers_skipped[n] = "embedding kept float" if e_bits is None else "matches a skip pattern"
            elif pool is None:
                emb_q[n] = _embedding_task(m.weight, e_bits, opts)
            else:
                submitted[pool.submit(_embedding_task, m.weight.detach().cpu(), e_bits, opts)] = ("emb", n)
                continue
            bar.advance(task)
        if pool is not None:
            bar.update(task, description="searches on Ray workers")
            got = pool.results(lambda i, _: bar.advance(task))
            for i, (kind, n) in sorted(submitted.items()):
                if kind == "lin":
                    results[n] = got[i]
                else:
                    emb_q[n] = got[i]
    return results, emb_q, tokens
