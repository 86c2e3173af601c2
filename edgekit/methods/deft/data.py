"""DEFT's task data: labelled sentences for encoders (classification), token windows for causal LMs.

Text input (a DataSource of texts): an encoder reads one `label<TAB>text` per line (labels are any strings; class
indices follow their sorted order, numerically when all are integers); a causal LM reads the texts joined with EOS
and cut into `max_len`-token windows. Array input: (ids[, mask][, labels]) integer arrays, labels 1-D.
Held-out data: `eval_data` (same format) or the last `eval_fraction` of the examples (after a seeded shuffle for
classification; the last windows for LM, so train and held-out windows are disjoint).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ...errors import ConfigError


@dataclass
class Examples:
    """Token ids (N, T), mask (N, T) and, for classification, labels (N,)."""

    ids: torch.Tensor
    mask: torch.Tensor
    y: torch.Tensor | None = None
    classes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, idx: torch.Tensor) -> "Examples":
        return Examples(self.ids[idx], self.mask[idx], None if self.y is None else self.y[idx], self.classes)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Rows idx, cut to the longest real sequence among them (padding only up to that)."""
        ids, mask = self.ids[idx], self.mask[idx]
        t = int(mask.sum(1).max().clamp_min(1)) if self.y is not None else ids.shape[1]
        return ids[:, :t], mask[:, :t], (None if self.y is None else self.y[idx])


def _labelled_lines(texts: list[str]) -> tuple[list[str], list[str]]:
    labels, sents = [], []
    for block in texts:
        for line in block.splitlines():
            if not line.strip():
                continue
            if "\t" not in line:
                raise ConfigError("deft on an encoder trains a classifier: give one 'label<TAB>text' per line "
                                  f"(line without a tab: {line[:60]!r})")
            lab, txt = line.split("\t", 1)
            labels.append(lab.strip())
            sents.append(txt.strip())
    return labels, sents


def _class_order(labels: list[str]) -> list[str]:
    uniq = set(labels)
    try:
        return sorted(uniq, key=int)
    except ValueError:
        return sorted(uniq)


def from_source(data: Any, kind: str, model: Any, cfg: Any, classes: list[str] | None = None) -> Examples:
    """Examples of one DataSource (module doc); `classes` fixes the label order (held-out data)."""
    from ..common import find_tokenizer, token_windows

    if data is None or not (getattr(data, "texts", None) or getattr(data, "tensors", None)):
        raise ConfigError("deft needs task data; pass --data FILE (.txt, or .npz token ids[, mask][, labels])")
    if data.texts:
        if kind == "lm":
            ids = token_windows(model, list(data.texts), cfg.max_len, cfg.tokenizer)
            return Examples(ids, torch.ones_like(ids))
        labels, sents = _labelled_lines(list(data.texts))
        order = classes or _class_order(labels)
        unknown = sorted(set(labels) - set(order))
        if unknown:
            raise ConfigError(f"held-out labels {unknown[:5]} do not occur in the training data")
        tok = find_tokenizer(model, cfg.tokenizer)
        enc = tok(sents, truncation=True, max_length=cfg.max_len, padding="max_length", return_tensors="pt")
        y = torch.tensor([order.index(lab) for lab in labels])
        return Examples(enc["input_ids"].long(), enc["attention_mask"].long(), y, order)
    ts = list(data.tensors)
    ids = ts[0]
    if ids.is_floating_point() or ids.dim() != 2:
        raise ConfigError("deft: array data must start with (N, T) integer token ids")
    mask = next((t.long() for t in ts[1:] if t.dim() == 2), torch.ones_like(ids))
    y = next((t.long() for t in ts[1:] if t.dim() == 1), None)
    if kind == "classify" and y is None:
        raise ConfigError("deft on an encoder needs labels: add a 1-D integer label array to the .npz")
    if y is not None and (len(y) != len(ids) or y.min() < 0):
        raise ConfigError(f"deft: {len(ids)} sequences but {len(y)} labels (labels must be >= 0)")
    if kind == "lm":
        y = None
    n_cls = len(classes) if classes else (int(y.max()) + 1 if y is not None else 0)
    return Examples(ids.long(), mask, y, classes or [str(i) for i in range(n_cls)])


def split(ex: Examples, cfg: Any, kind: str, eval_ex: Examples | None) -> tuple[Examples, Examples]:
    """(train, held-out): held-out = eval_ex, else the last eval_fraction (module doc)."""
    if eval_ex is not None:
        return ex, eval_ex
    n = len(ex)
    n_ev = max(1, int(round(n * cfg.eval_fraction)))
    if n - n_ev < 1:
        raise ConfigError(f"deft: {n} examples are too few to hold out {n_ev}; add data or pass eval_data")
    order = torch.arange(n) if kind == "lm" else torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))
    return ex.take(order[:n - n_ev]), ex.take(order[n - n_ev:])
