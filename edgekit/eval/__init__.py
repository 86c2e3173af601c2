"""Task metrics and fidelity against FP32: `evaluate(model_or_artifact, task)` -> dict.

Tasks (each offline; see the task module's docstring for its data and subsample):

* ``digits``        bundled demo CNN on its held-out split of scikit-learn's 8x8 digits: accuracy, agreement.
* ``fashion-probe`` EfficientNet-Lite0, Fashion-MNIST linear probe (fixed head fitted on FP32 features) and top-1
  agreement of the ImageNet logits with FP32.
* ``wordnet10``     MiniLM, WordNet-10 supersense probe, cosine to FP32 embeddings, Python-docs retrieval.
* ``perplexity``    SmolLM2, perplexity on Python-docs text and on the GPL-3 text, next-token agreement with FP32.

The model is an nn.Module (run in torch), an artifact folder (run through its onnxruntime / openvino / tflite
export), or a built-in name ("demo", "efficientnet-lite0", "minilm", "smollm2"). FP32 references (probe heads,
reference outputs) are computed once with the built-in FP32 model and cached under `<cache>/eval/`, keyed by
the sha256 of its weight file and the task options.
"""
from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import ConfigError

TASKS = {
    "digits": "edgekit.eval.digits",
    "fashion-probe": "edgekit.eval.fashion",
    "wordnet10": "edgekit.eval.wordnet",
    "perplexity": "edgekit.eval.perplexity",
}
DEFAULT_MODEL = {"digits": "demo", "fashion-probe": "efficientnet-lite0", "wordnet10": "minilm",
                 "perplexity": "smollm2"}


def task_module(task: str) -> Any:
    """The module implementing a task (imported lazily: most pull in heavy optional packages)."""
    if task not in TASKS:
        raise ConfigError(f"unknown eval task '{task}'; choose one of {', '.join(TASKS)}")
    return importlib.import_module(TASKS[task])


def resolve_model(model: Any) -> Any:
    """An nn.Module or artifact path as given; a built-in name becomes its FP32 nn.Module."""
    from torch import nn

    from ..models.real import BUILTIN, load_builtin

    if isinstance(model, nn.Module):
        return model
    p = Path(model)
    if p.is_dir():
        return p
    if str(model) in BUILTIN:
        return load_builtin(str(model))
    raise ConfigError(f"'{model}' is neither an artifact folder nor a built-in model ({', '.join(BUILTIN)})")


def evaluate(model_or_artifact: Any, task: str, runtime: str | None = None, limit: int | None = None,
             threads: int | None = None, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run `task` on a model/artifact; returns task, runtime, samples, metrics, the FP32 reference, seconds."""
    mod = task_module(task)
    try:
        cfg = mod.Config(**(options or {}))
    except ValidationError as e:
        bad = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        raise ConfigError(f"bad option for task {task} ({bad}); valid options: "
                          f"{', '.join(mod.Config.model_fields) or 'none'}") from None
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1 (got {limit})")
    model = resolve_model(model_or_artifact)
    t0 = time.perf_counter()
    res = mod.run(model, cfg, runtime=runtime, limit=limit, threads=threads)
    res = {"task": task, "model": str(model_or_artifact) if not hasattr(model_or_artifact, "state_dict")
           else type(model_or_artifact).__name__, **res}
    res.setdefault("options", cfg.model_dump())  # a task reports its effective options if it changed them
    res["seconds"] = round(time.perf_counter() - t0, 2)
    return res


__all__ = ["TASKS", "evaluate", "task_module"]
