"""DEFT training loop (spec §5) and held-out evaluation (task metric + density, fp32).

Per step: forward the PEFT model on a batch (hooks capture one activation tensor per MLP layer), task loss +
density_weight * L_dens, clear the hook buffer, backward, AdamW (weight decay 0.01), linear schedule with warm-up.
Batches are a seeded function of (seed, step): step t reads positions t*b .. t*b+b-1 of the permutation of epoch
floor(t*b/N). density_weight=0 skips the density term entirely, so it is the PEFT baseline with the same batches.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .data import Examples
from .density import Capture, DensityMeter, l0_penalty


def indices(step: int, b: int, n: int, seed: int) -> torch.Tensor:
    """Sample indices of one step (module doc)."""
    out: list[int] = []
    start = step * b
    while len(out) < b:
        epoch, pos = divmod(start + len(out), n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        out.extend(perm[pos:pos + b - len(out)].tolist())
    return torch.tensor(out)


def task_loss(net: nn.Module, kind: str, ids: torch.Tensor, mask: torch.Tensor, y: torch.Tensor | None,
              reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of the classifier, or next-token cross-entropy of the causal LM."""
    if kind == "classify":
        logits = net(ids, mask)[1]
        return F.cross_entropy(logits, y, reduction=reduction)
    logits = net(ids)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1),
                           reduction=reduction)


class _Quiet:
    """Stands in for a rich Progress when the bar is off (rich is then not needed)."""

    def __enter__(self) -> "_Quiet":
        return self

    def __exit__(self, *_: Any) -> None:
        return None

    def add_task(self, *_: Any, **__: Any) -> int:
        return 0

    def update(self, *_: Any, **__: Any) -> None:
        return None


def _progress(enabled: bool):
    if not enabled:
        return _Quiet()
    from ..common import progress_bar

    return progress_bar("deft", enabled)


def train(net: nn.Module, kind: str, ex: Examples, cfg: Any, dev: torch.device, cap: Capture, steps: int,
          at_step: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Train the parameters that require grad for `steps` steps; `at_step(t)` runs before step t (block skipping)."""
    params = [p for p in net.parameters() if p.requires_grad]
    head = [p for n, p in net.named_parameters() if p.requires_grad and n.startswith("head.")]
    rest = [p for p in params if all(p is not h for h in head)]
    groups = [{"params": rest, "lr": cfg.lr}] + ([{"params": head, "lr": cfg.head_lr or cfg.lr}] if head else [])
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    base_lr = [g["lr"] for g in opt.param_groups]
    warm = max(1, int(round(cfg.warmup * steps)))
    losses, dens = [], []
    net.train()
    rng_devs = [dev] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devs), _progress(cfg.progress) as bar:
        task = bar.add_task("training", total=steps)
        for step in range(steps):
            if at_step is not None:
                at_step(step)
                net.train()
            torch.manual_seed(cfg.seed * 1000003 + step)
            ids, mask, y = ex.batch(indices(step, cfg.batch_size, len(ex), cfg.seed))
            ids, mask = ids.to(dev), mask.to(dev)
            y = y.to(dev) if y is not None else None
            cap.clear()
            loss = task_loss(net, kind, ids, mask, y)
            ld = None
            if cfg.density_weight > 0:
                ld = l0_penalty(cap.acts, cfg.epsilon, mask if cfg.positions == "tokens" else None)
                total = loss + cfg.density_weight * ld
            else:
                total = loss
            cap.clear()
            opt.zero_grad(set_to_none=True)
            total.backward()
            f = (step + 1) / warm if step < warm else max(0.0, (steps - step) / max(1, steps - warm))
            for g, lr in zip(opt.param_groups, base_lr):
                g["lr"] = lr * f
            opt.step()
            losses.append(float(loss.detach()))
            dens.append(None if ld is None else float(ld.detach()))
            bar.update(task, advance=1, description=f"training loss {losses[-1]:.4f}"
                       + ("" if ld is None else f" L_dens {dens[-1]:.4f}"))
    net.eval()
    tail = max(1, len(losses) // 10)
    return {"steps": steps, "batch_size": cfg.batch_size, "lr": cfg.lr, "device": str(dev),
            "task_loss_first": losses[0] if losses else None,
            "task_loss_last": sum(losses[-tail:]) / tail if losses else None,
            "density_loss_first": dens[0] if dens else None,
            "density_loss_last": (sum(d for d in dens[-tail:] if d is not None) / tail) if dens and dens[-1] is not None
            else None}


@torch.no_grad()
def evaluate(net: nn.Module, kind: str, ex: Examples, cfg: Any, dev: torch.device, cap: Capture) -> dict[str, Any]:
    """Held-out task metric (accuracy, or perplexity) and density per layer, in fp32 (TF32 off)."""
    net.eval()
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    meter = DensityMeter(len(cap.handles), cfg.density_tau)
    correct, nll, count = 0, 0.0, 0
    try:
        for s in range(0, len(ex), cfg.eval_batch_size):
            ids, mask, y = ex.batch(torch.arange(s, min(s + cfg.eval_batch_size, len(ex))))
            ids, mask = ids.to(dev), mask.to(dev)
            cap.clear()
            if kind == "classify":
                logits = net(ids, mask)[1]
                correct += int((logits.argmax(-1).cpu() == y).sum())
                count += len(y)
            else:
                nll += float(task_loss(net, kind, ids, mask, None, reduction="sum"))
                count += ids.shape[0] * (ids.shape[1] - 1)
            meter.add(cap.acts, cap.which, mask)
            cap.clear()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    out: dict[str, Any] = {"examples": len(ex), "density": meter.result()}
    if kind == "classify":
        out["accuracy"] = correct / max(count, 1)
    else:
        out["perplexity"] = math.exp(nll / max(count, 1))
        out["tokens"] = count
    return out


@torch.no_grad()
def mean_loss(net: nn.Module, kind: str, ex: Examples, dev: torch.device, batch: int) -> float:
    """Mean task loss over `ex` (block-skip scoring)."""
    net.eval()
    tot, n = 0.0, 0
    for s in range(0, len(ex), batch):
        ids, mask, y = ex.batch(torch.arange(s, min(s + batch, len(ex))))
        ids, mask = ids.to(dev), mask.to(dev)
        tot += float(task_loss(net, kind, ids, mask, None if y is None else y.to(dev), reduction="sum"))
        n += len(y) if y is not None else ids.shape[0] * (ids.shape[1] - 1)
    return tot / max(n, 1)
