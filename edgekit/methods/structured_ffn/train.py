"""Recovery training for structured FFN layers: distillation from the original model, optionally self-guided (SGT).

Spec §4: a dense guide W_g (here: the original pretrained W) is mixed in as α_t·W_g x + (1-α_t)·S(x), α_t decaying
from 1 to 0 over the first T = ⌊sgt_ratio·steps⌋ optimizer steps (cosine or linear); with reduce_flop the guide is
skipped with probability 1-α_t per layer and forward. Guides are dropped at the end. Data: text (packed into
`seq_len`-token windows with the model's local tokenizer) or arrays fed positionally to the model (e.g. images).
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError
from ..common import find_tokenizer, is_causal_lm, resolve_device, token_windows  # noqa: F401


def alpha(t: int, total: int, schedule: str) -> float:
    """Guide weight α_t: ½(1+cos(πt/T)) or 1-t/T for t ≤ T, 0 afterwards (α_0 = 1)."""
    if total <= 0 or t >= total:
        return 0.0
    return 0.5 * (1 + math.cos(math.pi * t / total)) if schedule == "cosine" else 1 - t / total


def lr_at(step: int, total: int, peak: float) -> float:
    """10% linear warm-up, then cosine decay to 0.1·peak (the paper's recipe)."""
    warm = max(1, total // 10)
    if step < warm:
        return peak * (step + 1) / warm
    frac = (step - warm) / max(1, total - warm)
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))



def call(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Run the model on a batch (token ids get an all-ones attention mask when the forward takes one)."""
    names = [p.name for p in inspect.signature(model.forward).parameters.values()
             if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    kw: dict[str, Any] = {"use_cache": False} if "use_cache" in names else {}
    if len(batch) == 1 and not batch[0].is_floating_point() and "attention_mask" in names:
        kw["attention_mask"] = torch.ones_like(batch[0])
        out = model(batch[0], **kw) if names[0] != "attention_mask" else model(input_ids=batch[0], **kw)
    else:
        out = model(*batch, **kw)
    if hasattr(out, "logits"):
        return out.logits
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    return out[0] if isinstance(out, (tuple, list)) else out


def loss_fn(kind: str, student: torch.Tensor, teacher: torch.Tensor | None, batch: tuple) -> torch.Tensor:
    """kl: token-mean KL(teacher‖student); mse: MSE relative to the teacher's mean square; lm: next-token CE."""
    if kind == "lm":
        ids = batch[0]
        return F.cross_entropy(student[:, :-1].reshape(-1, student.shape[-1]).float(), ids[:, 1:].reshape(-1))
    assert teacher is not None
    if kind == "kl":
        s = F.log_softmax(student.float().reshape(-1, student.shape[-1]), -1)
        t = F.log_softmax(teacher.float().reshape(-1, teacher.shape[-1]), -1)
        return F.kl_div(s, t, log_target=True, reduction="batchmean")
    return ((student - teacher) ** 2).mean() / (teacher ** 2).mean().clamp(min=1e-12)


def batches(model: nn.Module, data: Any, cfg: Any) -> tuple[Iterator[tuple[torch.Tensor, ...]], tuple]:
    """(endless shuffled batch iterator, fixed first batch for before/after figures)."""
    if getattr(data, "texts", None):
        tensors = [token_windows(model, data.texts, cfg.seq_len, cfg.tokenizer)]
    else:
        tensors = list(data.tensors)
    n = len(tensors[0])
    gen = torch.Generator().manual_seed(cfg.seed)
    fixed = tuple(t[:cfg.batch] for t in tensors)

    def it() -> Iterator[tuple[torch.Tensor, ...]]:
        while True:
            order = torch.randperm(n, generator=gen)
            for s in range(0, n, cfg.batch):
                idx = order[s:s + cfg.batch]
                yield tuple(t[idx] for t in tensors)

    return it(), fixed


def recover(model: nn.Module, teacher: nn.Module, replaced: list, data: Any, cfg: Any) -> dict[str, Any]:
    """Train the structured layers toward the teacher for cfg.train_steps steps; returns the loss figures."""
    kind = cfg.loss if cfg.loss != "auto" else ("kl" if is_causal_lm(model) else "mse")
    if kind in ("kl", "lm") and not is_causal_lm(model):
        raise ConfigError(f"loss={kind} needs a causal LM (next-token logits); use loss=mse for this model")
    dev = resolve_device(cfg.device)
    try:
        model.to(dev)
        teacher.to(dev)
        return _recover(model, teacher, replaced, data, cfg, kind, dev)
    finally:
        model.to("cpu")
        teacher.to("cpu")


def _recover(model: nn.Module, teacher: nn.Module, replaced: list, data: Any, cfg: Any, kind: str,
             dev: torch.device) -> dict[str, Any]:
    it0, fixed = batches(model, data, cfg)
    fixed = tuple(t.to(dev) for t in fixed)
    it = (tuple(t.to(dev) for t in b) for b in it0)
    layers = [layer for _, layer, _ in replaced]
    sgt = cfg.train_mode == "sgt"
    T = int(cfg.sgt_ratio * cfg.train_steps) if sgt else 0
    model.eval()  # no dropout: distillation targets are deterministic
    params = [p for p in model.parameters()] if cfg.train_scope == "all" else \
        [p for layer in layers for p in layer.parameters()]
    model.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)

    def fixed_loss() -> float:
        with torch.no_grad():
            return float(loss_fn(kind, call(model, fixed), call(teacher, fixed) if kind != "lm" else None, fixed))

    before = fixed_loss()
    if sgt:
        for (_, layer, w) in replaced:
            layer.set_guide(w)
            layer.sample_guide = cfg.reduce_flop
            params.append(layer.guide)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    torch.manual_seed(cfg.seed)
    losses: list[float] = []
    from rich.progress import Progress

    with Progress(transient=True, disable=not cfg.progress) as bar:
        task = bar.add_task(f"recovery ({cfg.train_mode})", total=cfg.train_steps)
        for step in range(cfg.train_steps):
            a = alpha(step, T, cfg.sgt_schedule) if sgt else 0.0
            for layer in layers:
                if hasattr(layer, "alpha"):
                    layer.alpha = a
            batch = next(it)
            with torch.no_grad():
                target = call(teacher, batch) if kind != "lm" else None
            loss = loss_fn(kind, call(model, batch), target, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg.train_steps, cfg.lr)
            opt.step()
            losses.append(float(loss.detach()))
            bar.update(task, advance=1, description=f"recovery ({cfg.train_mode}) loss {losses[-1]:.4g}")
    for layer in layers:
        if hasattr(layer, "set_guide"):  # structured layers (kind=neurons gives plain Linears)
            layer.set_guide(None)
            layer.sample_guide = False
    model.requires_grad_(True)
    tail = max(1, len(losses) // 10)
    return {"mode": cfg.train_mode, "loss": kind, "steps": cfg.train_steps, "sgt_steps": T, "lr": cfg.lr,
            "batch": cfg.batch, "seq_len": cfg.seq_len, "scope": cfg.train_scope,
            "fixed_batch_loss_before": before, "fixed_batch_loss_after": fixed_loss(),
            "train_loss_first": losses[0], "train_loss_last": sum(losses[-tail:]) / tail, "device": str(dev)}
