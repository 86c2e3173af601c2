"""Task metrics and fidelity against FP32: `evaluate(model_or_artifact, task)` -> dict.

Tasks (each offline; see the task module's docstring for its data and subsample):

* ``digits``        bundled demo CNN on its held-out split of scikit-learn's 8x8 digits: accuracy, agreement.
* ``fashion-probe`` EfficientNet-Lite0, Fashion-MNIST linear probe (fixed head fitted on FP32 features) and top-1
  agreement of the ImageNet logits with FP32.
* ``wordnet10``     MiniLM, WordNet-10 supersense probe, cosine to FP32 embeddings, Python-docs retrieval.
* ``perplexity``    SmolLM2, perplexity on Python-docs text and on the GPL-3 text, next-token agreement with FP32.

These four score only their built-in model: an artifact whose recorded source (followed back through chained
artifacts) is another model, or has other weights (checksum), is refused with one line naming the generic tasks.
A model *derived* from the built-in one (fine-tuned, converted, saved as a state dict and compressed from there)
is scored when the caller names that built-in model as `reference` (`--reference efficientnet-lite0`): the fixed
head and FP32 reference stay the built-in model's, and the result says the source check was declared away.
FP32 references (probe heads, reference outputs) are computed once with the built-in FP32 model and cached under
`<cache>/eval/`, keyed by the sha256 of its weight file and the task options.

Generic tasks, driven by your data (--data) and compared with the model's *own* FP32 source (the source recorded
in the artifact's manifest, re-loaded and checked against its checksum; see edgekit.eval._generic):

* ``image-folder``    DIR in ImageFolder layout (labels optional): top-1 agreement, accuracy when labelled.
* ``text-embed``      FILE, one sentence per line: cosine to FP32 embeddings, retrieval top-1 agreement.
* ``perplexity-file`` FILE of text, causal LMs: perplexity vs FP32, next-token agreement.
* ``npz``             FILE.npz of input arrays: cosine / relative L2 / top-1 agreement per output.

The model is an nn.Module (run in torch), an artifact folder (run through its onnxruntime / openvino / tflite
export), a built-in name ("demo", "efficientnet-lite0", "minilm", "smollm2"), or for generic tasks any model source
`compress` takes (loaded with `source`, an edgekit.model_io.SourceOptions).
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
    "image-folder": "edgekit.eval.image_folder",
    "text-embed": "edgekit.eval.text_embed",
    "perplexity-file": "edgekit.eval.perplexity_file",
    "npz": "edgekit.eval.npz",
}
DEFAULT_MODEL = {"digits": "demo", "fashion-probe": "efficientnet-lite0", "wordnet10": "minilm",
                 "perplexity": "smollm2"}
BUILTIN_SOURCES = {"digits": ("demo",), "fashion-probe": ("efficientnet-lite0", "efficientnet-lite0-features"),
                   "wordnet10": ("minilm",), "perplexity": ("smollm2",)}
GENERIC_HINT = ("use a task driven by your data: --task image-folder --data DIR, text-embed --data FILE, "
                "perplexity-file --data FILE or npz --data FILE.npz")


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


def check_builtin_source(task: str, model: Any) -> None:
    """A built-in task scores only its built-in model: refuse an artifact made from anything else (identity and
    checksum of the recorded source) and any model source that is not the built-in name. A manifest without a
    `source` entry (written by hand, not by edgekit) cannot be checked and is taken as the caller says."""
    from torch import nn

    from ..artifact import is_artifact, read_manifest
    from ..source import root_source

    from ..models.real import BUILTIN

    allowed = BUILTIN_SOURCES[task]
    if isinstance(model, nn.Module) or str(model) in allowed:
        return  # an API caller's module is vouched for by the caller
    if not is_artifact(Path(model)) and str(model) not in BUILTIN:
        return  # not a model this task could take at all: resolve_model says so
    what = f"{model}"
    if is_artifact(Path(model)):
        man = read_manifest(Path(model))
        if "source" not in man:
            return  # hand-made manifests (tests, tools) record no source; every edgekit artifact does
        src = root_source(man["source"])
        what = f"{model} (made from {src.get('path')}, {src.get('kind')})"
        if src.get("kind") in ("demo", "builtin") and src.get("path") in allowed:
            if _builtin_checksum_ok(str(src["path"]), src):
                return
            what = f"{model} (made from other weights of {src['path']}: checksum differs)"
    raise ConfigError(f"task {task} scores only the built-in {' / '.join(allowed)} (its FP32 reference is that "
                      f"model), not {what}; {GENERIC_HINT}")


def _builtin_checksum_ok(name: str, src: dict[str, Any]) -> bool:
    """The recorded checksum matches the installed built-in weights (memoised in the cache by weight file)."""
    from ..artifact import sha256_file

    if src.get("sha256"):
        from ..models.digits_cnn import WEIGHTS

        return name == "demo" and src["sha256"] == sha256_file(WEIGHTS)
    if not src.get("state_dict_sha256"):
        return True  # nothing recorded to compare (artifacts from before checksums): identity by name only
    return src["state_dict_sha256"] == _builtin_state_sha(name)


def _builtin_state_sha(name: str) -> str:
    """state_dict_sha256 of a built-in model, cached under <cache>/eval keyed by its weight file's sha256."""
    from ..model_io import load_model
    from ..models import real

    weights = {"efficientnet": real.efficientnet_weights, "minilm": real.minilm_weights,
               "smollm2": real.smollm2_gguf}[name.split("-")[0]]()
    d = real.cache_dir() / "eval"
    d.mkdir(parents=True, exist_ok=True)
    f = d / f"state-sha-{name}-{real.file_sha256(str(weights))[:20]}.txt"
    if f.is_file():
        return f.read_text().strip()
    sha = real.state_dict_sha256(load_model(name).module)
    f.write_text(sha)
    return sha


def evaluate(model_or_artifact: Any, task: str, runtime: str | None = None, limit: int | None = None,
             threads: int | None = None, options: dict[str, Any] | None = None, data: Any = None,
             source: Any = None, reference: Any = None) -> dict[str, Any]:
    """Run `task` on a model/artifact; returns task, runtime, samples, metrics, the FP32 reference, seconds.

    Generic tasks read `data` and compare with the model's own FP32 source (`reference` overrides where it is
    loaded from; its checksum is still checked); `source` (SourceOptions) loads model sources and the reference."""
    mod = task_module(task)
    try:
        cfg = mod.Config(**(options or {}))
    except ValidationError as e:
        bad = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        raise ConfigError(f"bad option for task {task} ({bad}); valid options: "
                          f"{', '.join(mod.Config.model_fields) or 'none'}") from None
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1 (got {limit})")
    if data is not None and not getattr(mod, "GENERIC", False):
        raise ConfigError(f"task {task} uses its own fixed data; --data is read by the generic tasks "
                          "(image-folder, text-embed, perplexity-file, npz)")
    t0 = time.perf_counter()
    if getattr(mod, "GENERIC", False):
        from ._generic import build_ctx

        ctx = build_ctx(model_or_artifact, data, source, reference, runtime, limit, threads)
        res = {**mod.run(ctx, cfg), "fp32_source": ctx.info.get("reference", ctx.reference.source)}
    else:
        derived = None
        if reference is not None:  # "this model derives from the built-in one": the caller vouches (module doc)
            if str(reference) not in BUILTIN_SOURCES[task]:
                raise ConfigError(f"--reference {reference}: task {task} compares with its built-in "
                                  f"{' / '.join(BUILTIN_SOURCES[task])}; name that model to score a model derived "
                                  "from it (fine-tuned, converted), or leave --reference out")
            derived = str(reference)
        else:
            check_builtin_source(task, model_or_artifact)
        model = resolve_model(model_or_artifact)
        res = mod.run(model, cfg, runtime=runtime, limit=limit, threads=threads)
        if derived is not None:
            res["derived_from"] = (f"{derived} (declared by the caller with --reference; the source check was not "
                                   "made)")
    res = {"task": task, "model": str(model_or_artifact) if not hasattr(model_or_artifact, "state_dict")
           else type(model_or_artifact).__name__, **res}
    res.setdefault("options", cfg.model_dump())  # a task reports its effective options if it changed them
    res["seconds"] = round(time.perf_counter() - t0, 2)
    return res


__all__ = ["TASKS", "evaluate", "task_module"]
