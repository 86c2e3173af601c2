"""wordnet10: MiniLM sentence embeddings on a WordNet-10 supersense probe, cosine to FP32, Python-docs retrieval.

Data (offline): WordNet 3.0 noun glosses (/usr/share/wordnet/data.noun, Debian wordnet-base) from ten lexicographer
files (act, animal, artifact, body, communication, food, location, person, plant, substance). Default subsample:
250 glosses per class drawn with a seeded generator, 150 train / 100 test per class. The probe head (standardise +
logistic regression) is fitted once on FP32 train embeddings and kept fixed. Retrieval: the 79 topics of the
stdlib's pydoc_data.topics, query = topic name, document = topic text; top-1 / top-5 by cosine.

Metrics: probe_accuracy on the 1,000 test glosses, mean cosine of the model's embeddings (test glosses, queries,
documents) to the FP32 ones, retrieval_top1 / retrieval_top5 with the model's own embeddings. Texts are cut at
`max_len` tokens (256, as sentence-transformers does for this model); the probe reads unit-length embeddings
(what sentence-transformers returns) with plain logistic regression (C=1); an artifact with a static sequence length
gets its texts padded/cut to that length, one at a time.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from ..errors import ConfigError
from ._common import (
    Predictor,
    apply_probe,
    cached_arrays,
    fit_probe,
    make_predictor,
    ref_key,
)

DATA = Path("/usr/share/wordnet/data.noun")
CLASSES = {4: "act", 5: "animal", 6: "artifact", 8: "body", 10: "communication", 13: "food", 15: "location",
           18: "person", 20: "plant", 27: "substance"}


class Config(BaseModel, extra="forbid"):
    """Sizes of the probe and retrieval sets; the defaults reproduce the reference figures."""

    per_class: int = Field(250, ge=4, le=2500, description="glosses sampled per class")
    train_per_class: int = Field(150, ge=2, description="of those, how many fit the probe head")
    topics: int = Field(79, ge=5, le=79, description="pydoc topics in the retrieval set")
    max_len: int = Field(256, ge=8, le=512, description="token cut-off per text")
    seed: int = Field(0, description="sampling seed")
    batch: int = Field(32, ge=1, description="torch batch size")


def load_glosses(cfg: Config) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
    """Seeded (train texts, labels, test texts, labels); test order shuffled so a --limit spans all classes."""
    if not DATA.is_file():
        raise ConfigError(f"{DATA} not found; install WordNet with: apt-get install -y wordnet-base")
    if cfg.train_per_class >= cfg.per_class:
        raise ConfigError("train_per_class must be smaller than per_class")
    by: dict[int, list[str]] = {k: [] for k in CLASSES}
    with open(DATA, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(" ") or "|" not in line:
                continue
            lex = int(line.split(" ", 2)[1])
            if lex in by:
                by[lex].append(line.split("|", 1)[1].strip())
    rng = np.random.default_rng(cfg.seed)
    tr, ytr, te, yte = [], [], [], []
    for c, lex in enumerate(sorted(CLASSES)):
        pick = rng.choice(len(by[lex]), cfg.per_class, replace=False)
        texts = [by[lex][i] for i in pick]
        tr += texts[:cfg.train_per_class]
        te += texts[cfg.train_per_class:]
        ytr += [c] * cfg.train_per_class
        yte += [c] * (cfg.per_class - cfg.train_per_class)
    order = rng.permutation(len(te))
    return tr, np.array(ytr), [te[i] for i in order], np.array(yte)[order]


def load_topics(n: int) -> tuple[list[str], list[str]]:
    """(queries, documents) from pydoc_data.topics in sorted name order, first n."""
    from pydoc_data.topics import topics

    names = sorted(topics)[:n]
    return [k.replace("-", " ") for k in names], [topics[k] for k in names]


def embed(pred: Predictor, tok: Any, texts: list[str], max_len: int) -> np.ndarray:
    """(N, D) embeddings; torch batches pad to the longest text, artifacts to their static length or none."""
    static = pred.static_dim(pred.input_names[0], 1)
    step = pred.batch
    order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths per batch: little padding
    texts = [texts[i] for i in order]
    out = []
    for s in range(0, len(texts), step):
        if static:
            enc = tok(texts[s:s + step], padding="max_length", truncation=True, max_length=static,
                      return_tensors="np")
        else:
            enc = tok(texts[s:s + step], padding=True, truncation=True, max_length=max_len, return_tensors="np")
        arrays = [enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)]
        if len(pred.input_names) != 2:
            raise ConfigError(f"wordnet10 feeds (input_ids, attention_mask); the model takes {pred.input_names}")
        out.append(pred(dict(zip(pred.input_names, arrays)))[0].reshape(len(arrays[0]), -1))
    emb = np.empty((len(texts), out[0].shape[1]), np.float32)
    emb[order] = np.concatenate(out)
    return emb


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def retrieval(q: np.ndarray, d: np.ndarray) -> tuple[float, float]:
    """Top-1 and top-5 hit rates of query i retrieving document i by cosine."""
    sim = _unit(q) @ _unit(d).T
    rank = (sim > np.diag(sim)[:, None]).sum(1)  # documents scored strictly above the right one
    return float(np.mean(rank < 1)), float(np.mean(rank < 5))


def reference(cfg: Config, tok: Any) -> dict[str, np.ndarray]:
    """FP32 head, test/query/document embeddings and retrieval figures (cached)."""
    from ..models.real import file_sha256, load_minilm, minilm_weights

    def build() -> dict[str, np.ndarray]:
        tr, ytr, te, _ = load_glosses(cfg)
        qs, ds = load_topics(cfg.topics)
        pred = make_predictor(load_minilm()[0], ["input_ids", "attention_mask"], None, None, cfg.batch)
        etr, ete = embed(pred, tok, tr, cfg.max_len), embed(pred, tok, te, cfg.max_len)
        eq, ed = embed(pred, tok, qs, cfg.max_len), embed(pred, tok, ds, cfg.max_len)
        head = fit_probe(_unit(etr), ytr, cfg.seed, standardize=False)
        return {**head, "test": ete, "queries": eq, "docs": ed, "pred": apply_probe(head, _unit(ete))}

    key = ref_key(file_sha256(str(minilm_weights())), cfg.model_dump(exclude={"batch"}), 2)
    return cached_arrays("wordnet10", key, build)


def run(model: Any, cfg: Config, runtime: str | None, limit: int | None, threads: int | None) -> dict[str, Any]:
    """Probe accuracy, cosine to FP32 and retrieval on the test glosses (first `limit` if given) and topics."""
    from ..models.real import minilm_tokenizer

    tok = minilm_tokenizer()
    ref = reference(cfg, tok)
    _, _, te, yte = load_glosses(cfg)
    qs, ds = load_topics(cfg.topics)
    n = min(limit or len(te), len(te))
    pred = make_predictor(model, ["input_ids", "attention_mask"], runtime, threads, cfg.batch)
    ete, eq, ed = (embed(pred, tok, t, cfg.max_len) for t in (te[:n], qs, ds))
    cos = np.concatenate([(_unit(a) * _unit(b)).sum(1) for a, b in
                          ((ete, ref["test"][:n]), (eq, ref["queries"]), (ed, ref["docs"]))])
    top1, top5 = retrieval(eq, ed)
    r1, r5 = retrieval(ref["queries"], ref["docs"])
    return {"runtime": pred.runtime, "samples": n,
            "metrics": {"probe_accuracy": float(np.mean(apply_probe(ref, _unit(ete)) == yte[:n])),
                        "cosine": float(cos.mean()), "cosine_min": float(cos.min()),
                        "retrieval_top1": top1, "retrieval_top5": top5},
            "reference": {"probe_accuracy": float(np.mean(ref["pred"][:n] == yte[:n])),
                          "retrieval_top1": r1, "retrieval_top5": r5}}
