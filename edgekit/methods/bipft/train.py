"""Binary pre-training by distillation from the FP model (spec §5), the local estimator fit (spec §8.5), text
batches, checkpoints and the compact trained-student file (1-bit weights packed, FP side parameters)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...errors import ConfigError
from ..common import Checkpoint
from .attention import BiPFTSelfAttention, add_mask, fp_scores
from .binarize import ALPHA_MIN, BinaryLinear


class TextBatches:
    """Seeded random batches (ids, mask) from texts (tokenized with the model's tokenizer) or a token-id array."""

    def __init__(self, data: Any, model: nn.Module, cfg: Any) -> None:
        self.cfg, self.texts, self.ids = cfg, list(getattr(data, "texts", []) or []), None
        # never longer than the model's position table (a small BERT has fewer than the default 128 positions)
        limits = [int(m.config.max_position_embeddings) for m in model.modules()
                  if isinstance(getattr(getattr(m, "config", None), "max_position_embeddings", None), int)]
        self.seq_len = min([cfg.seq_len] + limits)
        if self.texts:
            from ..common import find_tokenizer

            self.tok = find_tokenizer(model, cfg.tokenizer)
        elif getattr(data, "tensors", None) and data.tensors[0].dim() == 2 and not data.tensors[0].is_floating_point():
            self.ids = data.tensors[0].long()[:, :self.seq_len]
        else:
            raise ConfigError("bipft needs text (--data corpus.txt) or token ids (an .npy of shape (n, seq) int)")
        self.n = len(self.texts) if self.texts else len(self.ids)

    def get(self, step: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.cfg.seed * 1000003 + step)
        pick = torch.randint(0, self.n, (size,), generator=g).tolist()
        if self.ids is not None:
            ids = self.ids[pick]
            return ids, torch.ones_like(ids)
        enc = self.tok([self.texts[i] for i in pick], truncation=True, max_length=self.seq_len, padding=True,
                       return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]


def run_model(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Forward of the wrapper (input_ids, attention_mask) the way the exported graph runs it."""
    return model(ids, mask)


class Tap:
    """Forward hooks collecting the embedding output and every layer's output (and the teacher's attention scores)."""

    def __init__(self, bert: nn.Module, teacher: bool) -> None:
        self.hidden: list[torch.Tensor] = []
        self.scores: list[torch.Tensor] = []
        self.handles = [bert.embeddings.register_forward_hook(self._keep)]
        for layer in bert.encoder.layer:
            self.handles.append(layer.register_forward_hook(self._keep))
            if teacher:
                self.handles.append(layer.attention.self.register_forward_pre_hook(self._attn, with_kwargs=True))

    def _keep(self, mod, args, out) -> None:
        self.hidden.append(out[0] if isinstance(out, (tuple, list)) else out)

    def _attn(self, mod, args, kwargs) -> None:
        x = args[0] if args else kwargs["hidden_states"]
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        self.scores.append(fp_scores(mod, x, mask))

    def clear(self) -> None:
        self.hidden, self.scores = [], []

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def kd_loss(hs: list[torch.Tensor], ht: list[torch.Tensor], ss: list[torch.Tensor], st: list[torch.Tensor],
            mask: torch.Tensor, hid_w: float, attn_w: float) -> tuple[torch.Tensor, dict[str, float]]:
    """hid_w · mean_l MSE(H_S^l, H_T^l) over real tokens + attn_w · mean_l KL(P_T ‖ P_S) per real query row.

    MSE: Σ over real tokens and features of (H_S − H_T)² / (real tokens · d). KL per (batch, head, query) row:
    Σ_k P_T (log P_T − log P_S), P = softmax of the masked scores, averaged over heads and real query rows."""
    valid = mask.to(hs[0].dtype)
    n_tok = valid.sum().clamp_min(1)
    hid = torch.stack([(((a - b) ** 2).mean(-1) * valid).sum() / n_tok for a, b in zip(hs, ht)]).mean()
    total = hid_w * hid
    parts = {"kd_hid": float(hid.detach())}
    if attn_w > 0 and ss:
        kls = []
        for s_s, s_t in zip(ss, st):
            pt = torch.softmax(s_t, -1)
            kl = torch.where(pt > 0, pt * (torch.log(pt.clamp_min(1e-30)) - torch.log_softmax(s_s, -1)), 0).sum(-1)
            heads = kl.shape[1]
            kls.append((kl * valid[:, None, :]).sum() / (n_tok * heads))
        att = torch.stack(kls).mean()
        total = total + attn_w * att
        parts["kd_attn"] = float(att.detach())
    return total, parts


def _progress(enabled: bool):
    from ..common import progress_bar

    return progress_bar("bipft", enabled)


def attn_modules(bert: nn.Module) -> list[BiPFTSelfAttention]:
    return [layer.attention.self for layer in bert.encoder.layer]


def fit_estimators(model: nn.Module, bert: nn.Module, batches: TextBatches, cfg: Any, dev: torch.device) -> dict:
    """Fit only the estimators to the layer's own binarization residual (no teacher): per layer minimise
    ‖(QKᵀ − Q̂K̂ᵀ)/√d_h − est‖² over real (query, key) pairs + ‖P̂R_V − P̂g1ᵀ‖²; Q, K, V are the binary projections'
    outputs before their binarizers (spec §3's residual polynomial)."""
    mods = attn_modules(bert)
    params = [p for m in mods for p in m.est.parameters()]
    opt = torch.optim.Adam(params, lr=cfg.fit_lr)
    xs: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    hooks = [m.register_forward_pre_hook(lambda mod, a, kw: xs.append(
        (a[0] if a else kw["hidden_states"], kw.get("attention_mask"))), with_kwargs=True) for m in mods]
    losses = []
    try:
        for step in range(cfg.fit_steps):
            ids, mask = (t.to(dev) for t in batches.get(10**7 + step, cfg.batch_size))
            xs.clear()
            with torch.no_grad():
                run_model(model, ids, mask)
            pair = mask[:, None, :, None].float() * mask[:, None, None, :].float()
            loss = 0
            for m, (x, amask) in zip(mods, xs):
                with torch.no_grad():
                    raw = [lin(x) for lin in (m.query, m.key, m.value)]
                    q, k, v = (m._heads(r) for r in raw)
                    qb, kb, vb = (m._heads(act(r)) for act, r in zip((m.act_q, m.act_k, m.act_v), raw))
                    target = (q @ k.transpose(-1, -2) - qb @ kb.transpose(-1, -2)) * m.scaling
                    p = m.act_p(torch.softmax(add_mask(qb @ kb.transpose(-1, -2) * m.scaling, amask), -1))
                    vres = p @ (v - vb)
                d = (target - m.est.scores(x)) ** 2 * pair
                dv = (vres - p @ m.est.value(x)) ** 2 * mask[:, None, :, None].float()
                loss = loss + d.sum() / (pair.sum() * m.heads) + dv.sum() / (mask.sum() * v.shape[1] * v.shape[-1])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()) / len(mods))
    finally:
        for h in hooks:
            h.remove()
    return {"steps": cfg.fit_steps, "loss_first": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None}


def distill(model: nn.Module, bert: nn.Module, teacher: nn.Module, tbert: nn.Module, batches: TextBatches, cfg: Any,
            dev: torch.device, steps: int) -> dict[str, Any]:
    """KD from the FP teacher for `steps` steps (AdamW, linear warm-up then linear decay); resumable checkpoint."""
    model.to(dev)
    teacher.to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ck = Checkpoint(cfg.checkpoint, cfg, {"checkpoint", "checkpoint_every", "progress", "device", "save_binary",
                                          "train_steps"})
    start = ck.resume(model, opt, dev)
    warm = min(cfg.warmup_steps, steps // 10)
    tap_s, tap_t = Tap(bert, False), Tap(tbert, cfg.attn_weight > 0)
    mods = attn_modules(bert)
    for m in mods:
        m.capture = cfg.attn_weight > 0
    model.train(cfg.dropout)
    teacher.train(cfg.dropout)
    losses, t0 = [], time.perf_counter()
    alphas = [p for n, p in model.named_parameters() if n.endswith(".alpha")]
    try:
        with _progress(cfg.progress) as bar:
            task = bar.add_task("distillation", total=steps, completed=start)
            for step in range(start, steps):
                torch.manual_seed(cfg.seed * 1000003 + step)
                ids, mask = (t.to(dev) for t in batches.get(step, cfg.batch_size))
                tap_s.clear(), tap_t.clear()
                with torch.no_grad():
                    run_model(teacher, ids, mask)
                run_model(model, ids, mask)
                ss = [m.last_scores for m in mods] if cfg.attn_weight > 0 else []
                loss, parts = kd_loss(tap_s.hidden, tap_t.hidden, ss, tap_t.scores, mask, cfg.hid_weight,
                                      cfg.attn_weight)
                if not torch.isfinite(loss):
                    raise ConfigError(f"bipft: the distillation loss became {float(loss)} at step {step}; lower lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                lr = cfg.lr * ((step + 1) / max(warm, 1) if step < warm else max(0.0, (steps - step) / max(steps - warm, 1)))
                for g in opt.param_groups:
                    g["lr"] = lr
                opt.step()
                with torch.no_grad():  # α stays >= ALPHA_MIN as a parameter too, not only where it is used
                    for a in alphas:
                        a.clamp_(min=ALPHA_MIN)
                losses.append(float(loss.detach()))
                bar.update(task, advance=1, description=f"distillation loss {losses[-1]:.4f}")
                ck.save(model, opt, step + 1, cfg.checkpoint_every, steps)
    finally:
        tap_s.remove(), tap_t.remove()
        for m in mods:
            m.capture, m.last_scores = False, None
    model.eval()
    teacher.eval()
    tail = max(1, len(losses) // 10)
    return {"steps": steps, "resumed_at": start, "device": str(dev), "batch_size": cfg.batch_size, "lr": cfg.lr,
            "seq_len": cfg.seq_len, "loss_first": losses[0] if losses else None,
            "loss_last": sum(losses[-tail:]) / tail if losses else None, "seconds": time.perf_counter() - t0,
            "losses_every_10pct": losses[::max(1, len(losses) // 10)]}


def save_binary(model: nn.Module, skip: set[str], path: Path) -> int:
    """Write the trained student compactly (safetensors): every BinaryLinear's weight as packed sign bits + scale,
    every other tensor except `skip` (the frozen embeddings, rebuilt from the source model) in float32."""
    from safetensors.torch import save_file

    lins = {n for n, m in model.named_modules() if isinstance(m, BinaryLinear)}
    out: dict[str, torch.Tensor] = {}
    for n, m in model.named_modules():
        if n in lins:
            s, scale = m.codes()
            out[f"{n}.weight::bits"] = torch.from_numpy(np.packbits((s.cpu().numpy() > 0).ravel()))
            out[f"{n}.weight::scale"] = scale.reshape(1).cpu()
            out[f"{n}.weight::shape"] = torch.tensor(list(s.shape), dtype=torch.int64)
    for k, v in model.state_dict().items():
        if k in skip or (k.endswith(".weight") and k[:-len(".weight")] in lins):
            continue
        out[k] = v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu()
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in out.items()}, str(tmp))
    tmp.replace(path)
    return path.stat().st_size


def load_binary(model: nn.Module, skip: set[str], path: Path) -> None:
    """Load what save_binary wrote into a freshly BiPFT-ized student (names and shapes must match)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise ConfigError(f"load_binary={path}: no such file; give a file written by --set save_binary=FILE")
    try:
        t = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ConfigError(f"load_binary={path}: not a safetensors file ({str(e)[:80]}); give a file written by "
                          "--set save_binary=FILE") from None
    mods = dict(model.named_modules())
    state = model.state_dict()
    for n, m in mods.items():
        if isinstance(m, BinaryLinear):
            if f"{n}.weight::bits" not in t:
                raise ConfigError(f"load_binary={path}: no weights for {n}; it was written for another model")
            shape = tuple(int(x) for x in t[f"{n}.weight::shape"])
            if shape != tuple(m.weight.shape):
                raise ConfigError(f"load_binary={path}: {n} has shape {shape}, the model {tuple(m.weight.shape)}")
            bits = np.unpackbits(t[f"{n}.weight::bits"].numpy())[:m.weight.numel()].reshape(shape)
            s = torch.from_numpy(bits.astype(np.float32) * 2 - 1)
            with torch.no_grad():
                m.weight.data = (s * t[f"{n}.weight::scale"][0]).to(m.weight.dtype)
            m.weight.requires_grad_(False)
            m.frozen = True
    rest = {k: v for k, v in t.items() if "::" not in k}
    missing = [k for k in state if k not in rest and k not in skip and not
               (k.endswith(".weight") and isinstance(mods.get(k[:-7]), BinaryLinear))]
    if missing or any(k not in state or state[k].shape != v.shape for k, v in rest.items()):
        raise ConfigError(f"load_binary={path}: its tensors do not match this model (missing {missing[:3]}); it was "
                          "written for another model or configuration")
    with torch.no_grad():
        for k, v in rest.items():
            state[k].copy_(v.to(state[k].dtype))


__all__ = ["TextBatches", "Tap", "distill", "fit_estimators", "kd_loss", "load_binary", "save_binary"]
