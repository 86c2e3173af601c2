"""OPTIN trajectory scores: one masked forward per unit, batched over units and started at the unit's own layer.

Spec §2. Masking a unit of layer i leaves layers < i unchanged, so the scorer caches the reference activations of
one calibration pass and replays only layers i..L-1 for a stack of U masked copies at once (U = `unit_batch`):
a neuron's removal is the exact rank-1 change F_i - act_n · W_down[:, n] of its FFN output; a head's removal
zeroes its context slice before the output projection, then layer i's FFN and the later layers run as usual.
For each unit this returns the raw manifold-distillation sum over hook points F_z (FFN down-projection outputs)
z > i (z = i too on the last layer) and the raw KD term; weighting and multipliers are applied by the caller.
A unit whose removal changes nothing (zero outgoing weights or zero activations) is not run and scores 0.

Which heads a head's forward masks comes from `head_score_masks`: only the scored head (the paper), or with
`reproduce_code_bug` also the last attention unit of every earlier layer (the reference code never resets a
layer's head-mask row, spec §8); the changed prefix (layers < i) is then run once per layer on the calibration
batch and layer i replays from it (and every head of a layer i > 0 is scored, even one that writes nothing).

Fan-out (`executor=ray`, see edgekit.methods.fanout): `plan` lists the chunks in the order `run` scores them
(layer, then heads before neurons, `unit_batch` live units per chunk); the driver builds the Scorer (reference
pass, MD token sample) once and puts it into the Ray object store, each task scores a disjoint set of whole chunks
with `score` (the same batches of masked copies as the local run, so the same kernels on the same shapes) and the
driver writes each chunk's numbers back at its units' positions. Only the chunk-to-process assignment differs.

Speed (CPU cost is dominated by the token-wise matmuls of the replayed layers): hidden states are kept *compact*,
padding positions dropped (`Forward.valid`), and only attention scatters q/k/v into the padded (rows, T) layout;
q/k/v are one fused matmul; attention is `scaled_dot_product_attention` (fused kernel, same maths as
softmax(q·kᵀ/√d_h + bias)·v up to float rounding). Only torch is imported (this module also runs on a bare GPU
machine).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .heads import Arch, _ctx_cols


@dataclass
class ScoreOptions:
    """What the scorer needs beyond the model and data."""

    temperature: float = 4.0      # KD: KL(teacher‖student)·T², logits not divided by T (as the reference code)
    md_tokens: int = 768          # K tokens sampled once for every Gram matrix
    md_valid_only: bool = True    # sample K among non-padding tokens only
    final_layer_md: bool = True   # units of the last layer also compare F_{L-1}
    unit_batch: int = 64          # masked copies per forward
    seed: int = 0
    reproduce_code_bug: bool = False  # head scoring also masks the last unit of every earlier layer (spec §8)


def head_score_masks(units: list[int], l: int, scored: torch.Tensor,
                     reproduce_code_bug: bool = False) -> list[torch.Tensor]:
    """Keep masks (True = kept) of the forwards that score the attention units `scored` of layer l.

    One (len(scored), units[z]) boolean tensor per layer z, one row per scored unit: layer l drops the scored unit;
    with `reproduce_code_bug` every layer z < l also drops its last unit (units[z] - 1), as the reference code's
    never-reset head-mask rows do; all other units are kept.
    """
    u = len(scored)
    out = [torch.ones(u, n, dtype=torch.bool) for n in units]
    out[l][torch.arange(u), scored.cpu().long()] = False
    if reproduce_code_bug:
        for z in range(l):
            if units[z]:
                out[z][:, units[z] - 1] = False
    return out


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
    """Functional forward of a BERT- or Llama-style stack on one calibration batch, over U stacked copies.

    Hidden states are compact, (U, N, d): the N kept positions `valid` of the flattened (B·T) batch (the non-padding
    tokens when `compact`, else all). Attention alone works on the padded (U·B, T) layout.
    """

    def __init__(self, arch: Arch, ids: torch.Tensor, mask: torch.Tensor, seg: torch.Tensor | None = None,
                 pos: torch.Tensor | None = None, compact: bool = True):
        self.arch, self.mask = arch, mask
        self.B, self.T = ids.shape
        dev = ids.device
        bb = arch.backbone
        neg = torch.finfo(torch.float32).min
        if arch.family == "bert":
            if seg is None:  # plain padded batch: one segment per row
                seg = torch.where(mask.bool(), torch.arange(self.B, device=dev)[:, None], -1)
                pos = torch.arange(self.T, device=dev)[None].expand(self.B, -1)
            x0 = bb.embeddings(input_ids=ids, position_ids=pos)
            same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] >= 0)
            self.bias = torch.where(same, 0.0, neg)[:, None]
            flat = seg.reshape(-1)
            nseq = int(flat.max()) + 1
            pool = (flat[None] == torch.arange(nseq, device=dev)[:, None]).float()
            pool = pool / pool.sum(1, keepdim=True).clamp(min=1)   # (n_seq, B·T) mean pooling
        else:
            x0 = bb.embed_tokens(ids)
            p = torch.arange(self.T, device=dev)[None]
            self.cos, self.sin = bb.rotary_emb(x0, p)
            future = torch.triu(torch.ones(self.T, self.T, dtype=torch.bool, device=dev), 1)
            blocked = future[None] | (mask[:, None, :] == 0)
            self.bias = torch.where(blocked, neg, 0.0)[:, None]
        keep = mask.reshape(-1).bool() if compact else torch.ones(mask.numel(), dtype=torch.bool, device=dev)
        if arch.family == "bert" and arch.classifier is not None:
            keep = keep.clone()
            keep[torch.arange(self.B, device=dev) * self.T] = True   # the pooler reads position 0 of every row
        self.valid = torch.nonzero(keep).flatten()
        self.N = len(self.valid)
        self.padded = self.N < self.B * self.T
        self.where = torch.full((self.B * self.T,), -1, dtype=torch.long, device=dev)  # flat position -> compact
        self.where[self.valid] = torch.arange(self.N, device=dev)
        self.weight = mask.reshape(-1)[self.valid]                 # KD weight of each compact position (padding: 0)
        self.x0 = self.to_compact(x0)[0]
        if arch.family == "bert":
            self.pool = pool[:, self.valid]
            self.cls = self.where[torch.arange(self.B, device=dev) * self.T]
        self._qkv: dict[int, tuple[torch.Tensor, torch.Tensor | None, list[int]]] = {}
        self._bias: dict[int, torch.Tensor] = {}

    def to_compact(self, h: torch.Tensor) -> torch.Tensor:
        """(k·B, T, d) padded-layout states -> (k, N, d) compact."""
        k = h.shape[0] // self.B
        return h.reshape(k, self.B * self.T, -1).index_select(1, self.valid)

    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        """(n, N, c) compact -> (n·B, T, c), zeros at dropped positions."""
        n, _, c = x.shape
        if not self.padded:
            return x.view(n * self.B, self.T, c)
        out = x.new_zeros(n, self.B * self.T, c)
        out.index_copy_(1, self.valid, x)
        return out.view(n * self.B, self.T, c)

    def _fused_qkv(self, l: int) -> tuple[torch.Tensor, torch.Tensor | None, list[int]]:
        """q, k, v projections of layer l as one (weight, bias, split sizes)."""
        if l not in self._qkv:
            mods = self.arch.q(l), *self.arch.kv(l)
            w = torch.cat([m.weight for m in mods])
            b = torch.cat([m.bias for m in mods]) if all(m.bias is not None for m in mods) else None
            if b is None and any(m.bias is not None for m in mods):
                b = torch.cat([m.bias if m.bias is not None else m.weight.new_zeros(m.out_features) for m in mods])
            self._qkv[l] = (w, b, [m.out_features for m in mods])
        return self._qkv[l]

    def attn(self, l: int, x: torch.Tensor) -> torch.Tensor:
        """Per-head context (n, N, units·q_per_unit·d_h), the input of the output projection; x: (n, N, d)."""
        a, layer, dh = self.arch, self.arch.layers[l], self.arch.head_dim
        n = x.shape[0]
        if a.family == "llama":
            x = layer.input_layernorm(x)
        w, b, sizes = self._fused_qkv(l)
        qkv = self._padded(F.linear(x, w, b))                                 # (n·B, T, q+k+v)
        q, k, v = (t.view(n * self.B, self.T, -1, dh).transpose(1, 2) for t in qkv.split(sizes, -1))
        if a.family == "llama":
            from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

            q, k = apply_rotary_pos_emb(q, k, self.cos, self.sin)
            k = k.repeat_interleave(a.q_per_unit, 1)
            v = v.repeat_interleave(a.q_per_unit, 1)
        if n not in self._bias:
            self._bias = {n: self.bias.repeat(n, 1, 1, 1)}   # a 4-D mask keeps SDPA on its fused CPU kernel
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=self._bias[n].to(q.dtype))
        ctx = ctx.transpose(1, 2).reshape(n, self.B * self.T, -1)
        return ctx.index_select(1, self.valid) if self.padded else ctx

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

    def layer(self, l: int, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Block l on (n, N, d); `keep` (bool per attention unit) masks heads."""
        ctx = self.attn(l, x)
        if keep is not None:
            ctx = ctx * torch.repeat_interleave(keep.to(ctx), ctx.shape[-1] // len(keep))
        a = self.post(l, x, ctx)
        return self.out(l, a, self.arch.down(l)(self.act(l, a)))

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """What KD compares, per copy: task logits (k, B, C), LM logits (k, N, V), or (no head) the unit-length
        mean-pooled embeddings (k, n_seq, d); h: (k, N, d) compact."""
        a = self.arch
        if a.family == "llama":
            hn = a.backbone.norm(h)
            return a.lm_head(hn) if a.lm_head is not None else hn
        if a.classifier is not None:
            return a.classifier(a.backbone.pooler(h[:, self.cls].reshape(-1, 1, h.shape[-1]))).unflatten(
                0, (h.shape[0], self.B))
        return F.normalize(self.pool.to(h.dtype) @ h, dim=-1)


class Scorer:
    """Reference pass once, then raw (MD, KD) per unit; see the module docstring."""

    def __init__(self, arch: Arch, ids: torch.Tensor, mask: torch.Tensor, opts: ScoreOptions,
                 seg: torch.Tensor | None = None, pos: torch.Tensor | None = None):
        self.arch, self.opts, self.L = arch, opts, len(arch.layers)
        # padding positions are dropped unless MD may sample them
        self.fw = fw = Forward(arch, ids, mask, seg, pos, compact=opts.md_valid_only)
        self.xs, self.ctx, self.a, self.inter, self.f = [], [], [], [], []
        x = fw.x0[None]
        for l in range(self.L):
            self.xs.append(x[0])
            self.ctx.append(fw.attn(l, x)[0])
            self.a.append(fw.post(l, x[0], self.ctx[-1]))
            self.inter.append(fw.act(l, self.a[-1]))
            self.f.append(arch.down(l)(self.inter[-1]))
            x = fw.out(l, self.a[-1], self.f[-1])[None]
        self.h_final = x[0]                                   # (N, d) compact
        self.teacher = torch.log_softmax(fw.head(x), -1)[0]
        valid = mask.reshape(-1).bool() if opts.md_valid_only else torch.ones(mask.numel(), dtype=torch.bool)
        pool = torch.nonzero(valid.cpu()).flatten()
        g = torch.Generator().manual_seed(opts.seed)
        self.idx = pool[torch.randperm(len(pool), generator=g)[:opts.md_tokens]].to(ids.device)
        self.cidx = fw.where[self.idx]                        # the same tokens, compact positions
        self.gref = [self._gram(f[None])[0] for f in self.f]
        self.units = [arch.units(l) for l in range(self.L)]
        self._prefix: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _gram(self, f: torch.Tensor) -> torch.Tensor:
        """(U, K, K) cosine Gram matrices of the sampled tokens of U stacked copies of F_z (U, N, d)."""
        t = F.normalize(f.index_select(1, self.cidx), dim=-1)
        return t @ t.transpose(1, 2)

    def _md(self, f: torch.Tensor, z: int) -> torch.Tensor:
        """Σ (G_ref - G_masked)² per copy."""
        return ((self._gram(f) - self.gref[z][None]) ** 2).sum((1, 2))

    def _kd(self, h: torch.Tensor) -> torch.Tensor:
        """KL(teacher‖student)·T² per copy, summed over the batch (and valid tokens); head run in slices."""
        u = h.shape[0]
        per = max(1, (1 << 26) // max(1, self.teacher.numel()))
        p = self.teacher.exp()
        out = []
        for s in range(0, u, per):
            ls = torch.log_softmax(self.fw.head(h[s:s + per]), -1)
            kl = (p * (self.teacher - ls)).sum(-1)
            if self.arch.family == "llama":  # per-token LM logits: padding tokens do not count
                kl = kl * self.fw.weight[None].to(kl.dtype)
            out.append(kl.reshape(kl.shape[0], -1).sum(1))
        return (torch.cat(out) * self.opts.temperature ** 2).clamp(min=0)

    def _rest(self, start: int, h: torch.Tensor, md: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run layers start..L-1 on U copies (U, N, d), adding their MD terms; then KD on the outputs."""
        fw = self.fw
        for z in range(start, self.L):
            a = fw.post(z, h, fw.attn(z, h))
            f = self.arch.down(z)(fw.act(z, a))
            md = md + self._md(f, z)
            h = fw.out(z, a, f)
        return md, self._kd(h)

    def prefix(self, l: int, keep: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input of layer l, its per-head context) on the calibration batch with heads of layers < l masked by
        keep[z] (one bool row per layer); the cached reference when nothing is masked."""
        key = tuple(tuple(k.tolist()) for k in keep[:l])
        if all(all(k) for k in key):
            return self.xs[l], self.ctx[l]
        if key not in self._prefix:
            x = self.fw.x0[None]
            for z in range(l):
                x = self.fw.layer(z, x, keep[z].to(x.device))
            self._prefix = {key: (x[0], self.fw.attn(l, x)[0])}   # layers are visited in order: keep one
        return self._prefix[key]

    def heads(self, l: int, units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw (MD, KD) of removing each attention unit in `units` of layer l, one masked copy per unit (masks of
        `head_score_masks`)."""
        u, fw = len(units), self.fw
        keep = head_score_masks(self.units, l, units, self.opts.reproduce_code_bug)
        if not all(bool(k.all()) for k in keep[l + 1:]) or any(bool((k != k[:1]).any()) for k in keep[:l]):
            raise ValueError("head masks must differ only in layer l and keep every later head")
        x, ctx = self.prefix(l, [k[0] for k in keep])
        cols = ctx.shape[-1] // self.units[l]
        ctx = ctx[None] * torch.repeat_interleave(keep[l], cols, 1).to(ctx)[:, None, :]   # (u, N, d_ctx)
        a = fw.post(l, x[None], ctx)
        f = self.arch.down(l)(fw.act(l, a))
        md = self._md(f, l) if (l == self.L - 1 and self.opts.final_layer_md) else f.new_zeros(u)
        return self._rest(l + 1, fw.out(l, a, f), md)

    def neurons(self, l: int, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw (MD, KD) of removing each FFN neuron in `idx` of layer l (exact rank-1 update of F_l)."""
        u = len(idx)
        w = self.arch.down(l).weight[:, idx]                      # (d, U)
        act = self.inter[l][:, idx]                               # (N, U)
        f = self.f[l][None] - act.t()[..., None] * w.t()[:, None, :]
        md = self._md(f, l) if (l == self.L - 1 and self.opts.final_layer_md) else f.new_zeros(u)
        return self._rest(l + 1, self.fw.out(l, self.a[l][None], f), md)

    def live_heads(self, l: int) -> torch.Tensor:
        """Boolean per attention unit: False when its output-projection columns are all zero (with
        `reproduce_code_bug`, every unit of a layer > 0 is live: its forward also masks earlier heads)."""
        w = self.arch.o(l).weight
        cols = _ctx_cols(self.arch, torch.arange(1)).numel()
        live = (w.view(w.shape[0], -1, cols) != 0).any(2).any(0).cpu()
        return live | (self.opts.reproduce_code_bug and l > 0)

    def live_neurons(self, l: int) -> torch.Tensor:
        """Boolean per neuron: False when its down-projection column or its activations are all zero."""
        return ((self.arch.down(l).weight != 0).any(0) & (self.inter[l] != 0).any(0)).cpu()

    def plan(self) -> tuple[list[tuple[int, str, int]], list[tuple[int, str, torch.Tensor]], int]:
        """What `run` scores: (sizes [(layer, kind, units)] in layer-then-kind order, chunks [(layer, kind, live unit
        indices)] of at most `unit_batch` units in the order they are scored, number of dead units)."""
        sizes, chunks, dead = [], [], 0
        for l in range(self.L):
            for kind, live in (("head", self.live_heads(l)), ("neuron", self.live_neurons(l))):
                todo = torch.nonzero(live).flatten()
                sizes.append((l, kind, len(live)))
                chunks += [(l, kind, todo[s:s + self.opts.unit_batch])
                           for s in range(0, len(todo), self.opts.unit_batch)]
                dead += len(live) - len(todo)
        return sizes, chunks, dead

    @torch.no_grad()
    def score(self, l: int, kind: str, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw (MD, KD) in float64 on the CPU of one chunk of `plan` (a Ray task runs this too)."""
        m, k = (self.heads if kind == "head" else self.neurons)(l, idx.to(self.xs[0].device))
        return m.double().cpu(), k.double().cpu()

    @torch.no_grad()
    def run(self, progress: Callable[[int], None] | None = None,
            fan_out: Callable[[list, Callable[[int], None] | None], list] | None = None
            ) -> dict[str, list[torch.Tensor]]:
        """Raw md/kd per layer for heads and neurons, in layer-then-index order (dead units: 0, 0).
        `fan_out(chunks, progress)` -> one (md, kd) per chunk, in the chunks' order (optin.raw_scores passes the
        Ray fan-out); None scores the chunks here, one after another. Either way each chunk is the same batch of
        masked copies, so the per-unit numbers are the same."""
        sizes, chunks, dead = self.plan()
        res: dict[str, list[torch.Tensor]] = {"head_md": [], "head_kd": [], "neuron_md": [], "neuron_kd": []}
        slot: dict[tuple[int, str], int] = {}
        for l, kind, n in sizes:
            slot[l, kind] = len(res[f"{kind}_md"])
            res[f"{kind}_md"].append(torch.zeros(n, dtype=torch.float64))
            res[f"{kind}_kd"].append(torch.zeros(n, dtype=torch.float64))
        if progress and dead:
            progress(dead)
        if fan_out is not None:
            scored = fan_out(chunks, progress)
            if len(scored) != len(chunks):
                raise RuntimeError(f"optin: the fan-out returned {len(scored)} chunks for {len(chunks)}")
        else:
            scored = (self.score(*c) for c in chunks)
        for (l, kind, idx), (m, k) in zip(chunks, scored):
            i = slot[l, kind]
            res[f"{kind}_md"][i][idx], res[f"{kind}_kd"][i][idx] = m, k
            if progress and fan_out is None:
                progress(len(idx))
        return res


def score_chunks(scorer: Scorer, chunks: list[tuple[int, str, torch.Tensor]]) -> list[tuple[torch.Tensor, ...]]:
    """A Ray task of the fan-out: (MD, KD) of each chunk, in the given order."""
    return [scorer.score(*c) for c in chunks]
