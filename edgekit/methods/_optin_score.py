"""OPTIN trajectory scores: one masked forward per unit, batched over units and started at the unit's own layer.

Spec §2. Masking a unit of layer i leaves layers < i unchanged, so the scorer caches the reference activations of
one calibration pass and replays only layers i..L-1 for a stack of U masked copies at once (U = `unit_batch`):
a neuron's removal is the exact rank-1 change F_i - act_n · W_down[:, n] of its FFN output; a head's removal
zeroes its context slice before the output projection, then layer i's FFN and the later layers run as usual.
For each unit this returns the raw manifold-distillation sum over hook points F_z (FFN down-projection outputs)
z > i (z = i too on the last layer) and the raw KD term; weighting and multipliers are applied by the caller.
A unit whose removal changes nothing (zero outgoing weights or zero activations) is not run and scores 0.
Only torch is imported (this module also runs on a bare GPU machine).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._heads import Arch, _ctx_cols


@dataclass
class ScoreOptions:
    """What the scorer needs beyond the model and data."""

    temperature: float = 4.0      # KD: KL(teacher‖student)·T², logits not divided by T (as the reference code)
    md_tokens: int = 768          # K tokens sampled once for every Gram matrix
    md_valid_only: bool = True    # sample K among non-padding tokens only
    final_layer_md: bool = True   # units of the last layer also compare F_{L-1}
    unit_batch: int = 32          # masked copies per forward
    seed: int = 0


def pack(ids: torch.Tensor, mask: torch.Tensor, width: int) -> tuple[torch.Tensor, ...]:
    """Pack padded sequences into rows of `width` tokens (first-fit decreasing): (ids, mask, segment, position).

    Encoders only: attention stays within a segment (block-diagonal bias), positions restart per segment, so the
    result equals the padded batch without computing padding (what dominates the cost of short texts).
    """
    lens = mask.sum(1).tolist()
    rows: list[list[int]] = []
    for i in sorted(range(len(lens)), key=lambda i: -lens[i]):
        row = next((r for r in rows if sum(lens[j] for j in r) + lens[i] <= width), None)
        rows.append([i]) if row is None else row.append(i)
    out = [torch.zeros(len(rows), width, dtype=torch.long) for _ in range(4)]
    out[2] -= 1
    for r, members in enumerate(rows):
        at = 0
        for i in sorted(members):
            n = int(lens[i])
            out[0][r, at:at + n] = ids[i][mask[i].bool()]
            out[1][r, at:at + n] = 1
            out[2][r, at:at + n] = i
            out[3][r, at:at + n] = torch.arange(n)
            at += n
    return tuple(out)


class Forward:
    """Functional forward of a BERT- or Llama-style stack on one calibration batch, over U stacked copies."""

    def __init__(self, arch: Arch, ids: torch.Tensor, mask: torch.Tensor, seg: torch.Tensor | None = None,
                 pos: torch.Tensor | None = None):
        self.arch, self.mask = arch, mask
        self.B, self.T = ids.shape
        bb = arch.backbone
        neg = torch.finfo(torch.float32).min
        if arch.family == "bert":
            if seg is None:  # plain padded batch: one segment per row
                seg = torch.where(mask.bool(), torch.arange(self.B, device=ids.device)[:, None], -1)
                pos = torch.arange(self.T, device=ids.device)[None].expand(self.B, -1)
            self.x0 = bb.embeddings(input_ids=ids, position_ids=pos)
            same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] >= 0)
            self.bias = torch.where(same, 0.0, neg)[:, None]
            flat = seg.reshape(-1)
            nseq = int(flat.max()) + 1
            pool = (flat[None] == torch.arange(nseq, device=ids.device)[:, None]).float()
            self.pool = pool / pool.sum(1, keepdim=True).clamp(min=1)   # (n_seq, B·T) mean pooling
        else:
            self.x0 = bb.embed_tokens(ids)
            pos = torch.arange(self.T, device=ids.device)[None]
            self.cos, self.sin = bb.rotary_emb(self.x0, pos)
            future = torch.triu(torch.ones(self.T, self.T, dtype=torch.bool, device=ids.device), 1)
            blocked = future[None] | (mask[:, None, :] == 0)
            self.bias = torch.where(blocked, neg, 0.0)[:, None]

    def attn(self, l: int, x: torch.Tensor) -> torch.Tensor:
        """Per-head context (N, T, units·q_per_unit·d_h), the input of the output projection."""
        a, layer, dh = self.arch, self.arch.layers[l], self.arch.head_dim
        n = x.shape[0]
        bias = self.bias.repeat(n // self.B, 1, 1, 1)
        if a.family == "bert":
            sa = layer.attention.self
            q, k, v = (m(x).view(n, self.T, -1, dh).transpose(1, 2) for m in (sa.query, sa.key, sa.value))
        else:
            from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

            sa = layer.self_attn
            xn = layer.input_layernorm(x)
            q, k, v = (m(xn).view(n, self.T, -1, dh).transpose(1, 2) for m in (sa.q_proj, sa.k_proj, sa.v_proj))
            q, k = apply_rotary_pos_emb(q, k, self.cos, self.sin)
            k = k.repeat_interleave(a.q_per_unit, 1)
            v = v.repeat_interleave(a.q_per_unit, 1)
        p = torch.softmax(q @ k.transpose(-1, -2) * dh ** -0.5 + bias, -1)
        return (p @ v).transpose(1, 2).reshape(n, self.T, -1)

    def post(self, l: int, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """Block state after attention (BERT: LN(x + o(ctx)); Llama: x + o(ctx))."""
        layer = self.arch.layers[l]
        if self.arch.family == "bert":
            ao = layer.attention.output
            return ao.LayerNorm(ao.dense(ctx) + x)
        return x + layer.self_attn.o_proj(ctx)

    def act(self, l: int, a: torch.Tensor) -> torch.Tensor:
        """FFN hidden activations (the neurons)."""
        layer = self.arch.layers[l]
        if self.arch.family == "bert":
            return layer.intermediate(a)
        an, mlp = layer.post_attention_layernorm(a), layer.mlp
        return mlp.act_fn(mlp.gate_proj(an)) * mlp.up_proj(an)

    def out(self, l: int, a: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """Block output from the post-attention state and the FFN output F_l."""
        if self.arch.family == "bert":
            return self.arch.layers[l].output.LayerNorm(f + a)
        return a + f

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """What KD compares: task logits, LM logits, or (no head) the unit-length mean-pooled embedding."""
        a = self.arch
        if a.family == "llama":
            hn = a.backbone.norm(h)
            return a.lm_head(hn) if a.lm_head is not None else hn
        if a.classifier is not None:
            return a.classifier(a.backbone.pooler(h))
        k = h.shape[0] // self.B
        e = self.pool.to(h.dtype) @ h.reshape(k, self.B * self.T, -1)
        return F.normalize(e.reshape(-1, e.shape[-1]), dim=-1)


class Scorer:
    """Reference pass once, then raw (MD, KD) per unit; see the module docstring."""

    def __init__(self, arch: Arch, ids: torch.Tensor, mask: torch.Tensor, opts: ScoreOptions,
                 seg: torch.Tensor | None = None, pos: torch.Tensor | None = None):
        self.arch, self.opts, self.L = arch, opts, len(arch.layers)
        self.fw = fw = Forward(arch, ids, mask, seg, pos)
        self.xs, self.ctx, self.a, self.inter, self.f = [], [], [], [], []
        x = fw.x0
        for l in range(self.L):
            self.xs.append(x)
            self.ctx.append(fw.attn(l, x))
            self.a.append(fw.post(l, x, self.ctx[-1]))
            self.inter.append(fw.act(l, self.a[-1]))
            self.f.append(arch.down(l)(self.inter[-1]))
            x = fw.out(l, self.a[-1], self.f[-1])
        self.h_final = x
        self.teacher = torch.log_softmax(fw.head(x), -1)
        valid = mask.reshape(-1).bool() if opts.md_valid_only else torch.ones(mask.numel(), dtype=torch.bool)
        pool = torch.nonzero(valid.cpu()).flatten()
        g = torch.Generator().manual_seed(opts.seed)
        self.idx = pool[torch.randperm(len(pool), generator=g)[:opts.md_tokens]].to(ids.device)
        self.gref = [self._gram(f[None]) [0] for f in self.f]

    def _gram(self, f: torch.Tensor) -> torch.Tensor:
        """(U, K, K) cosine Gram matrices of the sampled tokens of U stacked copies of F_z."""
        u = f.shape[0]
        t = F.normalize(f.reshape(u, -1, f.shape[-1])[:, self.idx], dim=-1)
        return t @ t.transpose(1, 2)

    def _md(self, f: torch.Tensor, z: int, u: int) -> torch.Tensor:
        """Σ (G_ref - G_masked)² per copy."""
        return ((self._gram(f.view(u, -1, f.shape[-1])) - self.gref[z][None]) ** 2).sum((1, 2))

    def _kd(self, h: torch.Tensor, u: int) -> torch.Tensor:
        """KL(teacher‖student)·T² per copy, summed over the batch (and valid tokens); head run in slices."""
        per = max(1, (1 << 26) // max(1, self.teacher.numel()))
        out = []
        for s in range(0, u, per):
            k = min(per, u - s)
            hs = h[s * self.fw.B:(s + k) * self.fw.B]
            ls = torch.log_softmax(self.fw.head(hs), -1).view(k, *self.teacher.shape)
            kl = (self.teacher.exp() * (self.teacher - ls)).sum(-1)
            if kl.dim() == 3:  # per-token LM logits: padding tokens do not count
                kl = kl * self.fw.mask[None].to(kl.dtype)
            out.append(kl.reshape(k, -1).sum(1))
        return (torch.cat(out) * self.opts.temperature ** 2).clamp(min=0)

    def _rest(self, start: int, h: torch.Tensor, u: int, md: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run layers start..L-1 on U copies, adding their MD terms; then KD on the outputs."""
        fw = self.fw
        for z in range(start, self.L):
            a = fw.post(z, h, fw.attn(z, h))
            f = self.arch.down(z)(fw.act(z, a))
            md = md + self._md(f, z, u)
            h = fw.out(z, a, f)
        return md, self._kd(h, u)

    def heads(self, l: int, units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw (MD, KD) of removing each attention unit in `units` of layer l, one masked copy per unit."""
        u, fw = len(units), self.fw
        ctx = self.ctx[l].repeat(u, 1, 1).view(u, fw.B, fw.T, -1)
        cols = _ctx_cols(self.arch, torch.arange(1)).numel()
        for j, unit in enumerate(units.tolist()):
            ctx[j, ..., unit * cols:(unit + 1) * cols] = 0
        ctx = ctx.view(u * fw.B, fw.T, -1)
        a = fw.post(l, self.xs[l].repeat(u, 1, 1), ctx)
        f = self.arch.down(l)(fw.act(l, a))
        md = self._md(f, l, u) if (l == self.L - 1 and self.opts.final_layer_md) else f.new_zeros(u)
        return self._rest(l + 1, fw.out(l, a, f), u, md)

    def neurons(self, l: int, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw (MD, KD) of removing each FFN neuron in `idx` of layer l (exact rank-1 update of F_l)."""
        u, fw = len(idx), self.fw
        w = self.arch.down(l).weight[:, idx]                      # (d, U)
        act = self.inter[l][..., idx]                             # (B, T, U)
        f = self.f[l][None] - act.permute(2, 0, 1)[..., None] * w.t()[:, None, None, :]
        f = f.reshape(u * fw.B, fw.T, -1)
        md = self._md(f, l, u) if (l == self.L - 1 and self.opts.final_layer_md) else f.new_zeros(u)
        return self._rest(l + 1, fw.out(l, self.a[l].repeat(u, 1, 1), f), u, md)

    def live_heads(self, l: int) -> torch.Tensor:
        """Boolean per attention unit: False when its output-projection columns are all zero."""
        w = self.arch.o(l).weight
        cols = _ctx_cols(self.arch, torch.arange(1)).numel()
        return (w.view(w.shape[0], -1, cols) != 0).any(2).any(0).cpu()

    def live_neurons(self, l: int) -> torch.Tensor:
        """Boolean per neuron: False when its down-projection column or its activations are all zero."""
        return ((self.arch.down(l).weight != 0).any(0) & (self.inter[l] != 0).flatten(0, 1).any(0)).cpu()

    @torch.no_grad()
    def run(self, progress: Callable[[int], None] | None = None) -> dict[str, list[torch.Tensor]]:
        """Raw md/kd per layer for heads and neurons, in layer-then-index order (dead units: 0, 0)."""
        res: dict[str, list[torch.Tensor]] = {"head_md": [], "head_kd": [], "neuron_md": [], "neuron_kd": []}
        for l in range(self.L):
            for kind, live, fn in (("head", self.live_heads(l), self.heads), ("neuron", self.live_neurons(l),
                                                                              self.neurons)):
                md, kd = torch.zeros(len(live), dtype=torch.float64), torch.zeros(len(live), dtype=torch.float64)
                todo = torch.nonzero(live).flatten()
                for s in range(0, len(todo), self.opts.unit_batch):
                    chunk = todo[s:s + self.opts.unit_batch]
                    m, k = fn(l, chunk.to(self.xs[0].device))
                    md[chunk], kd[chunk] = m.double().cpu(), k.double().cpu()
                    if progress:
                        progress(len(chunk))
                if progress and len(live) > len(todo):
                    progress(len(live) - len(todo))
                res[f"{kind}_md"].append(md)
                res[f"{kind}_kd"].append(kd)
        return res
