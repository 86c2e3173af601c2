"""Shift-aware fine-tuning loop: batches from a DataSource, CE and/or distillation, cosine LR, resumable, seeded.

Batches are stateless functions of (seed, step): step t reads positions t·b .. t·b+b-1 of the permutation of epoch
⌊t·b/N⌋ (seeded by seed+epoch), and augmentation and torch's RNG are seeded by (seed, t). A resumed run therefore
sees exactly the batches an uninterrupted one would. The checkpoint (if asked) holds the model's state (latents
included), the optimizer and the step; it is refused when it was written under another configuration.
"""
from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError
from ..common import Checkpoint


class Batches:
    """Input/label tensors of a DataSource made model-ready per batch (uint8 -> /255, mean/std, NCHW)."""

    def __init__(self, data: Any, cfg: Any, model: nn.Module, dev: torch.device | None = None):
        self.dev = dev  # batches are moved there before prep: a resize then runs on the training device
        ts = list(getattr(data, "tensors", []) or [])
        if not ts:
            raise ConfigError("denseshift fine-tuning needs array data (.npz with x[, y], or an image folder); "
                              "text data cannot feed an image model")
        self.x = ts[0]
        self.y = ts[1].long() if len(ts) > 1 and not ts[1].is_floating_point() and ts[1].dim() == 1 else None
        if self.y is not None and len(self.y) != len(self.x):
            raise ConfigError(f"data: {len(self.x)} inputs but {len(self.y)} labels")
        self.n, self.cfg = len(self.x), cfg
        conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        self.cin = conv.in_channels if conv is not None else None
        if self.n == 0:
            raise ConfigError("data: no samples")

    def indices(self, step: int, b: int) -> torch.Tensor:
        """Sample indices of one step (module doc)."""
        start = step * b
        out = []
        while len(out) < b:
            epoch, pos = divmod(start + len(out), self.n)
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.cfg.seed * 100003 + epoch))
            out.extend(perm[pos:pos + b - len(out)].tolist())
        return torch.tensor(out)

    def prep(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 -> [0,1]; (N,H,W) -> (N,1,H,W); NHWC -> NCHW; then (x - mean)/std per channel if configured; then
        the resize to input_size if configured, and one grey channel repeated to an RGB network's three."""
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if self.cin is not None and x.dim() == 3:
            x = x.unsqueeze(1)
        if self.cin is not None and x.dim() == 4 and x.shape[1] != self.cin and x.shape[-1] == self.cin:
            x = x.permute(0, 3, 1, 2)
        c = self.cfg
        if c.input_mean is not None:
            x = x - torch.tensor(c.input_mean, device=x.device).reshape((1, -1) + (1,) * (x.dim() - 2))
        if c.input_std is not None:
            x = x / torch.tensor(c.input_std, device=x.device).reshape((1, -1) + (1,) * (x.dim() - 2))
        if c.input_size is not None and x.dim() == 4 and tuple(x.shape[-2:]) != (c.input_size, c.input_size):
            x = F.interpolate(x, size=(c.input_size, c.input_size), mode="bilinear", align_corners=False)
        if self.cin is not None and x.dim() == 4 and x.shape[1] == 1 and self.cin > 1:
            x = x.expand(-1, self.cin, -1, -1)  # grey images into an RGB network: the channel repeated
        return x.contiguous()

    def get(self, step: int, b: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        idx = self.indices(step, b)
        x = self.x[idx]
        x = self.prep(x.to(self.dev, non_blocking=True) if self.dev is not None else x)
        if self.cfg.augment == "flip_shift" and x.dim() == 4:
            g = torch.Generator().manual_seed(self.cfg.seed * 7919 + step)
            flip = torch.rand(len(x), generator=g) < 0.5
            x = torch.where(flip[:, None, None, None].to(x.device), x.flip(3), x)
            dy, dx = torch.randint(-2, 3, (2,), generator=g).tolist()
            x = torch.roll(x, (dy, dx), (2, 3))
        return x, (self.y[idx] if self.y is not None else None)


def loss_kind(cfg: Any, has_labels: bool) -> str:
    """auto -> ce with labels, else kd (distillation from the original float model)."""
    kind = cfg.loss if cfg.loss != "auto" else ("ce" if has_labels else "kd")
    if "ce" in kind and not has_labels:
        raise ConfigError(f"loss={kind} needs integer labels as the data's second array (x, y)")
    return kind


def logits_of(out: Any) -> torch.Tensor:
    """The logits of a model's output: the tensor, or the first tensor of a tuple/list/dict (a model that also
    returns features, e.g. (logits, pooled features), is trained on its logits)."""
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        out = next((o for o in out if isinstance(o, torch.Tensor)), None)
    if not isinstance(out, torch.Tensor):
        raise ConfigError("denseshift fine-tuning needs a model whose (first) output is a logits tensor")
    return out


def compute_loss(kind: str, out: Any, y: torch.Tensor | None, t_out: Any, T: float):
    """Cross-entropy, KL to the teacher's softmax at temperature T (times T²), or their sum (on the logits: the
    first output of a model with several)."""
    out = logits_of(out)
    t_out = logits_of(t_out) if t_out is not None else None
    loss = out.new_zeros(())
    if "ce" in kind:
        loss = loss + F.cross_entropy(out, y)
    if "kd" in kind:
        loss = loss + F.kl_div(F.log_softmax(out / T, -1), F.log_softmax(t_out / T, -1), reduction="batchmean",
                               log_target=True) * T * T
    return loss


def _optimizer(model: nn.Module, cfg: Any) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _progress(enabled: bool):
    from ..common import progress_bar

    return progress_bar("denseshift", enabled)


def _snapshot(layers: dict[str, nn.Module]) -> torch.Tensor:
    return torch.cat([m.codes().flatten().cpu() for m in layers.values()]) if layers else torch.zeros(0)


def finetune(model: nn.Module, teacher: nn.Module | None, data: Any, cfg: Any, dev: torch.device,
             layers: dict[str, nn.Module], steps: int) -> dict[str, Any]:
    """Train all parameters (latents, BN, float layers) for `steps` steps; returns loss and weight-freezing figures."""
    batches = Batches(data, cfg, model, dev)
    kind = loss_kind(cfg, batches.y is not None)
    if "kd" in kind and teacher is None:
        raise ConfigError("loss with kd needs the original model as teacher (init=convert)")
    model.to(dev)
    if teacher is not None:
        teacher.to(dev).eval()
    opt = _optimizer(model, cfg)
    ck = Checkpoint(cfg.checkpoint, cfg, {"checkpoint", "checkpoint_every", "progress", "device"})
    start = ck.resume(model, opt, dev)
    fixed_x, fixed_y = batches.get(10**6, min(256, batches.n))  # a fixed batch (far-off step) to compare before/after
    fixed_x = fixed_x.to(dev)
    fixed_y = fixed_y.to(dev) if fixed_y is not None else None

    def fixed_loss() -> float:
        was = model.training
        model.eval()
        with torch.no_grad():
            t = teacher(fixed_x) if "kd" in kind else None
            v = float(compute_loss(kind, model(fixed_x), fixed_y, t, cfg.kd_temperature))
        model.train(was)
        return v

    before = fixed_loss()
    every = max(1, steps // 20)
    snaps, flips, sign_flips, frozen, losses = [_snapshot(layers)], [], [], [], []
    changed_at = torch.zeros(len(snaps[0]), dtype=torch.long)
    model.train()
    if cfg.bn == "frozen":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    rng_devs = [dev] if dev.type == "cuda" else []
    t_loop = time.perf_counter()
    with torch.random.fork_rng(devices=rng_devs), _progress(cfg.progress) as bar:
        task = bar.add_task("fine-tuning", total=steps, completed=start)
        for step in range(start, steps):
            torch.manual_seed(cfg.seed * 1000003 + step)
            x, y = batches.get(step, cfg.batch_size)
            x = x.to(dev, non_blocking=True)
            y = y.to(dev, non_blocking=True) if y is not None else None
            with torch.no_grad():
                t_out = teacher(x) if "kd" in kind else None
            loss = compute_loss(kind, model(x), y, t_out, cfg.kd_temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for g in opt.param_groups:
                g["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / steps))
            opt.step()
            losses.append(float(loss.detach()))
            bar.update(task, advance=1, description=f"fine-tuning loss {losses[-1]:.4f}")
            if (step + 1) % every == 0 or step + 1 == steps:
                cur = _snapshot(layers)
                diff = cur != snaps[-1]
                flips.append(float(diff.float().mean()) if len(cur) else 0.0)
                sign_flips.append(float(((cur > 0) != (snaps[-1] > 0)).float().mean()) if len(cur) else 0.0)
                changed_at = torch.where(diff, torch.full_like(changed_at, len(flips)), changed_at)
                snaps = [cur]
                frozen.append(float((changed_at <= len(flips) - 5).float().mean()) if len(flips) >= 5 else None)
            ck.save(model, opt, step + 1, cfg.checkpoint_every, steps)
    loop_s = time.perf_counter() - t_loop
    model.eval()
    tail = max(1, len(losses) // 10)
    return {"steps": steps, "resumed_at": start, "loss": kind, "optimizer": cfg.optimizer, "lr": cfg.lr,
            "batch_size": cfg.batch_size, "device": str(dev), "loop_seconds": round(loop_s, 2),
            "seconds_per_step": round(loop_s / max(1, steps - start), 4), "fixed_batch_loss_before": before,
            "fixed_batch_loss_after": fixed_loss(), "train_loss_first": losses[0] if losses else None,
            "train_loss_last": sum(losses[-tail:]) / tail if losses else None,
            "freezing": {"every_steps": every, "flip_rate": flips, "sign_flip_rate": sign_flips,
                         "frozen_fraction_5": frozen}}
