"""OPTIN (Khaki & Plataniotis, ICLR 2024): one-shot pruning of attention heads and FFN neurons under a FLOPs budget.

Spec: shared/methods/optin.md. No retraining, forward passes only:
1. Importance of every unit (head / kv group, FFN neuron) = the *trajectory* of its removal: manifold distillation
   (Gram matrices of K=768 sampled, L2-normalised tokens) at the FFN down-projection output of every later layer
   (and its own layer on the last one) + KD on the outputs, KL(teacher‖student)·T² with T=4 (`score.py`).
   KD targets: task logits (BERT *ForSequenceClassification), next-token logits (Llama causal LM, all tokens), and
   for an encoder without a task head (e.g. MiniLM) the unit-length mean-pooled output embedding taken as a logit
   vector: KL of its softmax is, to second order, the change of the embedding's direction (what cosine users see).
2. KD balance `adaptive_pow10` (reference code, default): per unit, KD is scaled by the power of ten that brings it
   to ~MD/lambda_c when MD > KD, else by the mean of the scales so far (heads and neurons keep separate lists,
   visited in layer-then-index order); `fixed`: I = MD + kd_weight·KD. The code-only multipliers (default on)
   multiply heads by 0.5·geomspace(10→1 over head index), neurons by geomspace(100→1 over neuron index) and the
   last layer by 0.5.
   `reproduce_code_bug` (default off): the reference code never resets a layer's row of its head mask, so while the
   heads of layer i are scored, the last head (H-1) of every earlier layer stays masked too (spec §8); the flag
   reproduces that in the scorer (`score.head_score_masks`): layer-0 head scores are unchanged, later
   layers' head scores include the effect of those extra masked heads (even a head that writes nothing scores > 0).
   Neuron scores are not affected. It is part of the ranking cache key (only when on, so default keys are stable).
3. Global search (`heads.search`): heads and neurons of all layers ranked globally, the split maximising the
   kept score under cap = flops_keep·BaseMAC (MAC model of spec §3 at s = mean calibration length, or mac_seq_len).
4. Physical slimming (`heads.slim`): smaller q/k/v/o and FFN matrices, so the exported graph really shrinks.
GQA (Llama): the attention unit is a whole key/value group (its query heads + k/v head), see `_heads`.
Fan-out (`--set executor=ray [workers=N] [ray_address=HOST:PORT]`, edgekit.methods.fanout): the per-unit scoring
of step 1 runs as Ray tasks. The scorer (model + reference activations + MD token sample) is built once here and
put into the object store once; the chunks of `unit_batch` units that the local run scores one after another are
dealt round-robin into disjoint tasks (4 per worker slot; layer-0 chunks replay every layer, the last layer's
only one, so dealing spreads the cost) and each chunk's (MD, KD) is written back at its units' positions, so the
raw scores, the cache entry and the chosen masks are those of the local run: equal bit for bit (tested with
torch.equal; each chunk is the same batch on the same kernels, and a worker runs torch with 1 thread). Balancing,
search and slimming (steps 2-4) stay here: they are cheap. The report's `fan_out` says what ran where;
`raw_scores_sha256` (a digest of the raw scores) lets two runs be compared. A cache hit runs no task.
Calibration data: a text file, tokenised with `tokenizer` (a local HF folder) or the tokenizer saved next to the
HF model (config._name_or_path); encoders take one text per sequence (cut at max_len, padded to the longest),
decoders take packed max_len-token windows; `samples` sequences drawn with `seed`. Token-id arrays (.npy: ids,
optional mask) also work. Rankings are cached under $EDGEKIT_CACHE/optin (default ~/.cache/edgekit), keyed by the
sha256 of the model state dict, of the calibration tokens and of the scoring options.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, Field
from torch import nn

from ...errors import ConfigError, UnsupportedModelError
from ...flops import count_params
from . import heads as H
from .score import ScoreOptions, Scorer, pack
from ..common import MethodReport

NEEDS: Literal["none", "calibration", "training"] = "calibration"
SUMMARY = "OPTIN: one-shot head/FFN-neuron pruning of HF transformers under a FLOPs budget (trajectory importance)"
MODELS = ("encoder",)
VERSION = 1  # bump when raw scores change meaning (invalidates the cache)


class Config(BaseModel, extra="forbid"):
    """Options of OPTIN; the defaults reproduce the reference code (MNLI config) except the calibration size."""

    flops_keep: float = Field(0.6, gt=0.0, le=1.0, description="fraction of the prunable MACs to keep (C)")
    samples: int = Field(16, ge=1, description="calibration sequences (the paper uses 128; scoring cost is linear)")
    max_len: int = Field(128, ge=4, description="tokens per sequence (encoders: cut; decoders: window length)")
    mac_seq_len: float | None = Field(None, gt=0, description="s of the MAC model (default: mean calibration length)")
    tokenizer: str | None = Field(None, description="local tokenizer folder for text data (default: the model's)")
    importance: Literal["trajectory", "magnitude"] = Field("trajectory", description="OPTIN score, or weight-norm "
                                                           "baseline (L2 norm of the unit's weights)")
    kd_balance: Literal["adaptive_pow10", "fixed"] = Field("adaptive_pow10", description="how KD is weighted vs MD")
    lambda_c: float = Field(10.0, gt=0, description="adaptive_pow10: KD is brought to about MD / lambda_c")
    kd_weight: float = Field(1.0, ge=0, description="fixed: importance = MD + kd_weight * KD")
    code_multipliers: bool = Field(True, description="reference-code multipliers (index envelopes, decays)")
    head_decay: float = Field(0.5, gt=0, description="multiplier of every head score")
    neuron_decay: float = Field(1.0, gt=0, description="multiplier of every neuron score")
    fin_decay: float = Field(0.5, gt=0, description="multiplier of last-layer scores")
    head_envelope: float = Field(10.0, ge=1, description="head h gets geomspace(1, this, H) reversed [h]")
    neuron_envelope: float = Field(100.0, ge=1, description="neuron n gets geomspace(1, this, D_ff) reversed [n]")
    temperature: float = Field(4.0, gt=0, description="KD temperature T (loss scaled by T², logits not divided)")
    md_tokens: int = Field(768, ge=2, description="tokens sampled for the Gram matrices (K)")
    md_valid_only: bool = Field(True, description="sample MD tokens among non-padding tokens only")
    final_layer_md: bool = Field(True, description="last-layer units also compare their own layer's output")
    budget_tolerance: float = Field(0.01, ge=0, description="kept MACs stay within this fraction of the base below "
                                    "the budget when possible (no such floor in the reference)")
    pack: bool = Field(True, description="encoders without a task head: pack texts into max_len rows (no padding "
                       "compute; attention kept within each text)")
    reproduce_code_bug: bool = Field(False, description="head scoring also masks the last head of every earlier "
                                     "layer, as the reference code's never-reset head mask (spec §8)")
    unit_batch: int = Field(64, ge=1, description="masked copies per forward pass (memory vs speed; not in the scores)")
    seed: int = Field(0, description="seed of the calibration draw and of the MD token sample")
    device: str = Field("cpu", description="torch device for scoring ('cuda' when available)")
    cache: bool = Field(True, description="reuse cached rankings")
    progress: bool = Field(True, description="show a progress bar while scoring")
    executor: Literal["local", "ray"] = Field("local", description="where the per-unit scoring runs: here, or as "
                                              "Ray tasks (same scores; pip install 'edgekit[ray]')")
    workers: int | None = Field(None, ge=1, description="executor=ray: CPU slots of the local Ray instance "
                                "(default: all cores); with ray_address, how finely the work is split")
    ray_address: str | None = Field(None, description="executor=ray: join this cluster (HOST:PORT or "
                                    "ray://HOST:PORT) instead of starting a local Ray instance")


def calibration(model: nn.Module, arch: H.Arch | None, data: Any, cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of the calibration batch, from texts (tokenised) or token-id arrays; `arch` None: the
    model's layout, found as apply() finds it (so callers need no private helper)."""
    if arch is None:
        arch = H.find_arch(model)
        if arch is None:
            raise UnsupportedModelError("optin needs a Hugging Face BERT-style encoder or Llama-style decoder; "
                                        f"none found in {type(model).__name__}")
    g = torch.Generator().manual_seed(cfg.seed)
    if data is None or not (getattr(data, "texts", None) or getattr(data, "tensors", None)):
        raise ConfigError("optin needs calibration data; pass --data FILE (.txt text, or .npy token ids)")
    if not data.texts:
        ids = data.tensors[0]
        if ids.is_floating_point() or ids.dim() != 2:
            raise ConfigError("optin: array data must be (N, T) integer token ids (optionally a second mask array)")
        mask = data.tensors[1] if len(data.tensors) > 1 else torch.ones_like(ids)
        pick = torch.randperm(len(ids), generator=g)[:cfg.samples]
        return ids[pick].long(), mask[pick].long()
    from ..common import find_tokenizer

    tok = find_tokenizer(model, cfg.tokenizer)
    texts = list(data.texts)
    if arch.family == "bert":
        pick = torch.randperm(len(texts), generator=g)[:cfg.samples].tolist()
        enc = tok([texts[i] for i in pick], truncation=True, max_length=cfg.max_len, padding=True,
                  return_tensors="pt")
        return enc["input_ids"].long(), enc["attention_mask"].long()
    sep = [tok.eos_token_id] if tok.eos_token_id is not None else []
    flat: list[int] = []
    for t in texts:
        flat += tok(t, add_special_tokens=False)["input_ids"] + sep
    n = len(flat) // cfg.max_len
    if n == 0:
        raise ConfigError(f"optin: the text has {len(flat)} tokens, fewer than max_len={cfg.max_len}; "
                          "add text or lower max_len")
    win = torch.tensor(flat[:n * cfg.max_len]).view(n, cfg.max_len)
    win = win[torch.randperm(n, generator=g)[:cfg.samples]]
    return win.long(), torch.ones_like(win)


def _sha(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.numpy().tobytes() if isinstance(p, torch.Tensor) else json.dumps(p, sort_keys=True).encode())
    return h.hexdigest()[:24]


def cache_key(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, cfg: Config) -> str:
    """Key of the raw scores: model weights, calibration tokens, options that change raw scores, version."""
    from ...models.real import state_dict_sha256

    opts = cfg.model_dump(include={"importance", "temperature", "md_tokens", "md_valid_only", "final_layer_md",
                                   "seed"})
    if cfg.reproduce_code_bug:  # only when on: keys (and cached rankings) of the default stay as they were
        opts["reproduce_code_bug"] = True
    return _sha(state_dict_sha256(model), ids.contiguous(), mask.contiguous(), opts, VERSION)


def magnitude_raw(arch: H.Arch) -> dict[str, list[torch.Tensor]]:
    """Baseline scores: L2 norm of each unit's weights (q/k/v rows + o columns; FFN rows + down column)."""
    out: dict[str, list[torch.Tensor]] = {"head_md": [], "neuron_md": []}
    cols = arch.head_dim * arch.q_per_unit
    for l in range(len(arch.layers)):
        u = arch.units(l)
        q = arch.q(l).weight.view(u, -1).pow(2).sum(1) + arch.o(l).weight.t().reshape(u, -1).pow(2).sum(1)
        q = q + sum(m.weight.view(u, -1).pow(2).sum(1) for m in arch.kv(l))
        assert arch.o(l).weight.shape[1] == u * cols
        out["head_md"].append(q.sqrt().double())
        n = arch.down(l).weight.pow(2).sum(0) + sum(m.weight.pow(2).sum(1) for m in arch.ups(l))
        out["neuron_md"].append(n.sqrt().double())
    out["head_kd"] = [torch.zeros_like(t) for t in out["head_md"]]
    out["neuron_kd"] = [torch.zeros_like(t) for t in out["neuron_md"]]
    return out


def raw_scores(model: nn.Module, arch: H.Arch, ids: torch.Tensor, mask: torch.Tensor,
               cfg: Config, info: dict | None = None) -> tuple[dict[str, list[torch.Tensor]], bool]:
    """Raw per-unit (MD, KD) from the cache or by scoring (here, or as Ray tasks with executor=ray); returns
    (scores, cache_hit). `info`, when given, receives the fan-out's report (what ran where)."""
    from .. import fanout

    ray = fanout.check("optin", cfg, cfg.device)
    if cfg.importance == "magnitude":
        return magnitude_raw(arch), False
    from ...models.real import cache_dir

    path = cache_dir() / "optin" / f"{cache_key(model, ids, mask, cfg)}.npz"
    if cfg.cache and path.is_file():
        with np.load(path, allow_pickle=False) as z:
            L = len(arch.layers)
            out = {k: [torch.from_numpy(z[f"{k}_{l}"]) for l in range(L)]
                   for k in ("head_md", "head_kd", "neuron_md", "neuron_kd")}
            out["seconds"] = [torch.from_numpy(z["seconds"])] if "seconds" in z.files else []
            return out, True
    dev = torch.device(cfg.device)
    t0 = time.perf_counter()
    model.to(dev)
    try:
        opts = ScoreOptions(cfg.temperature, cfg.md_tokens, cfg.md_valid_only, cfg.final_layer_md, cfg.unit_batch,
                            cfg.seed, cfg.reproduce_code_bug)
        with torch.no_grad():
            seg = pos = None
            if cfg.pack and arch.family == "bert" and arch.classifier is None:
                width = max(int(mask.sum(1).max()), min(64, cfg.max_len))
                ids, mask, seg, pos = (t.to(dev) for t in pack(ids, mask, width))
            scorer = Scorer(arch, ids.to(dev), mask.to(dev), opts, seg, pos)
            total = sum(arch.units(l) + arch.neurons(l) for l in range(len(arch.layers)))
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            with Progress(TextColumn("optin scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                          transient=True, disable=not cfg.progress) as bar:
                task = bar.add_task("units", total=total)
                if ray:
                    raw = _score_on_ray(scorer, cfg, lambda k: bar.advance(task, k), info)
                else:
                    raw = scorer.run(lambda k: bar.advance(task, k))
    finally:
        model.to("cpu")
    if cfg.cache:
        save_raw(path, raw, time.perf_counter() - t0)
    return raw, False


def _score_on_ray(scorer: Scorer, cfg: Config, progress: Any, info: dict | None) -> dict[str, list[torch.Tensor]]:
    """Scorer.run with its chunks dealt into Ray tasks (see the module docstring)."""
    from .. import fanout
    from .score import score_chunks

    with fanout.pool("optin", cfg) as p:
        def fan_out(chunks: list, prog: Any) -> list:
            shared = p.put(scorer)  # the model and its reference activations, once
            tasks = fanout.split(len(chunks), p.slots)
            for idx in tasks:
                p.submit(score_chunks, shared, [chunks[i] for i in idx])
            out: list = [None] * len(chunks)
            for idx, got in zip(tasks, p.results(lambda i, got: prog and prog(sum(len(chunks[j][2])
                                                                                   for j in tasks[i])))):
                for i, mk in zip(idx, got):
                    out[i] = mk
            return out

        raw = scorer.run(progress, fan_out)
        if info is not None:
            info.update(p.report())
    return raw


def raw_digest(raw: dict[str, list[torch.Tensor]]) -> str:
    """sha256 of the raw scores' bytes (float64, layer-then-index order): equal digests = bit-identical scores."""
    h = hashlib.sha256()
    for k in ("head_md", "head_kd", "neuron_md", "neuron_kd"):
        for t in raw[k]:
            h.update(t.detach().to(torch.float64).contiguous().numpy().tobytes())
    return h.hexdigest()


def save_raw(path: Any, raw: dict[str, list[torch.Tensor]], seconds: float) -> None:
    """Store raw scores (and the scoring wall time) as a plain .npz, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    arrays = {f"{k}_{l}": v[l].numpy() for k, v in raw.items() if k != "seconds" for l in range(len(v))}
    with open(tmp, "wb") as f:
        np.savez(f, seconds=np.asarray(seconds), **arrays)
    tmp.replace(path)


def balance(md: torch.Tensor, kd: torch.Tensor, cfg: Config) -> torch.Tensor:
    """MD + weighted KD per unit, in the given (layer-then-index) order."""
    if cfg.kd_balance == "fixed":
        return md + cfg.kd_weight * kd
    scales: list[float] = []
    out = torch.empty_like(md)
    for i, (m, k) in enumerate(zip(md.tolist(), kd.tolist())):
        if m > k > 0:
            s = 10.0 ** math.trunc(math.log10(m / k) - math.log10(cfg.lambda_c))
            scales.append(s)
        else:
            s = sum(scales) / len(scales) if scales else 1.0
        out[i] = m + k * s
    return out


def importance(raw: dict[str, list[torch.Tensor]], cfg: Config) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Final per-layer head and neuron scores (balance, then the reference-code multipliers)."""
    L = len(raw["head_md"])
    out = []
    for kind, decay, env in (("head", cfg.head_decay, cfg.head_envelope),
                             ("neuron", cfg.neuron_decay, cfg.neuron_envelope)):
        sizes = [len(t) for t in raw[f"{kind}_md"]]
        flat = balance(torch.cat(raw[f"{kind}_md"]), torch.cat(raw[f"{kind}_kd"]), cfg)
        per = list(torch.split(flat, sizes))
        if cfg.code_multipliers and cfg.importance == "trajectory":
            for l in range(L):
                n = sizes[l]
                if n:
                    per[l] = per[l] * decay * torch.from_numpy(np.geomspace(1, env, n)[::-1].copy())
                if l == L - 1:
                    per[l] = per[l] * cfg.fin_decay
        out.append(per)
    return out[0], out[1]


def apply(model: nn.Module, cfg: Config, data: Any = None) -> tuple[nn.Module, MethodReport]:
    """Score (or load cached scores), search the masks under the FLOPs budget and slim the model in place."""
    t0 = time.perf_counter()
    from .. import fanout

    fanout.check("optin", cfg, cfg.device)  # executor options: one-line errors before any work
    arch = H.find_arch(model)
    if arch is None:
        raise UnsupportedModelError("optin needs a Hugging Face BERT-style encoder or Llama-style decoder; "
                                    f"none found in {type(model).__name__}")
    if any(arch.units(l) == 0 or arch.neurons(l) == 0 for l in range(len(arch.layers))):
        raise UnsupportedModelError("optin: this model already has emptied layers; prune the original model")
    model.eval()
    rep = MethodReport("optin", params_before=count_params(model))
    ids, mask = calibration(model, arch, data, cfg)
    s = cfg.mac_seq_len or float(mask.sum(1).float().mean())
    mh, mn = H.mac_unit(arch, s)
    base = H.macs(arch, s)
    ts = time.perf_counter()
    fan: dict = {}
    raw, hit = raw_scores(model, arch, ids, mask, cfg, fan)
    t_score = time.perf_counter() - ts
    hsc, nsc = importance(raw, cfg)
    sizes_h, sizes_n = [len(t) for t in hsc], [len(t) for t in nsc]
    keep_h, keep_n = H.search(torch.cat(hsc), torch.cat(nsc), mh, mn, cfg.flops_keep * base,
                              (cfg.flops_keep - cfg.budget_tolerance) * base)
    keep_h, keep_n = list(torch.split(keep_h, sizes_h)), list(torch.split(keep_n, sizes_n))
    counts = H.slim(arch, keep_h, keep_n)
    kept = H.macs(arch, s)
    rep.layers_touched = [f"layer{l}" for l in range(len(arch.layers))
                          if counts["units"][l] < sizes_h[l] or counts["neurons"][l] < sizes_n[l]]
    rep.params_after = count_params(model)
    rep.extra.update({
        "flops_keep_target": cfg.flops_keep, "flops_keep_achieved": kept / base, "mac_seq_len": s,
        "prunable_macs_before": base, "prunable_macs_after": kept,
        "attention_unit": "kv group" if arch.q_per_unit > 1 else "head",
        "units_per_layer": counts["units"], "neurons_per_layer": counts["neurons"],
        "calibration_shape": list(ids.shape), "scoring_seconds": round(t_score, 2), "cache_hit": hit,
        "scoring_seconds_when_computed": float(raw["seconds"][0]) if raw.get("seconds") else round(t_score, 2),
        "raw_scores_sha256": raw_digest(raw),
        "fan_out": fan or {"executor": "ray (cache hit: no task ran)" if cfg.executor == "ray" else "local"}})
    rep.export_precision = "fp32"
    rep.seconds = time.perf_counter() - t0
    return model, rep
