"""The `--kv-cache` paths of `edgekit export` and `edgekit compress` (called from edgekit.api, which stays thin).

- export SRC --kv-cache --target T -o ART: the source's causal LM as a decoder artifact for T (edgekit.genai.build);
- export ART --target T (ART a decoder artifact): add T's generation folder without torch: the reference is the
  artifact's recorded transformers tokens and the per-step logits of its canonical model.onnx on ONNX Runtime (which
  was validated against transformers within the precision's tolerance when the artifact was written);
- compress SRC --method M --kv-cache: the methods' (compressed) model as a decoder artifact, with their reports.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import artifact as art
from ..errors import ConfigError
from .decoder import find_causal_lm
from .build import RUNTIMES, check_runtimes, export_ort, export_ov, tokenizer_dir, write_decoder_artifact

Step = Callable[[str], None]


def is_decoder_artifact(path: Path) -> bool:
    """True for an artifact folder whose manifest records a KV-cache decoder (cheap: no verification here)."""
    p = Path(path) / art.MANIFEST
    if not p.is_file():
        return False
    try:
        return "decoder" in json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False  # verification (later, on use) names the problem


def check_request(runtimes: Sequence[str], deploy: str | None) -> None:
    """--kv-cache options that cannot work, refused before any work."""
    check_runtimes(runtimes)
    if deploy not in (None, "int8"):
        raise ConfigError(f"--deploy {deploy} does not apply to --kv-cache decoders; --deploy int8 runs their integer "
                          "weights with int8 activations (checked against transformers), or drop --deploy")


def compressed_decoder(model: Any, loaded: Any, source: dict[str, Any], out: Path, runtimes: Sequence[str],
                       entries: list[dict[str, Any]], fidelity: dict[str, Any] | None, precision: str,
                       overwrite: bool, protect: Sequence[Any], on_step: Step, act8: bool = False,
                       fused: bool = False) -> Path:
    """`compress ... --kv-cache [--deploy int8]`: write the compressed model as a decoder artifact with the method
    reports (`act8`: the runtimes' exports compute with int8 activations)."""
    find_causal_lm(model)
    wbits = [b for e in entries if (b := (e.get("report") or {}).get("bits_per_weight"))]
    extra = {"method": entries[-1], "methods": entries, "fidelity": fidelity, "bits_per_weight": wbits[-1] if wbits
             else None}
    return write_decoder_artifact(model, Path(out), runtimes, source, tokenizer_dir(loaded.source), kind="compress",
                                  extra=extra, precision=precision, overwrite=overwrite, protect=protect,
                                  on_step=on_step, act8=act8, fused=fused)


def export_kv_cache(src: str | Path, runtime: str, out: Path | None, overwrite: bool, opts: Any,
                    on_step: Step, fused: bool = False) -> Path:
    """`export --kv-cache`: a new decoder artifact from a model source, or one more runtime for a decoder artifact."""
    from ..source import source_info

    check_runtimes([runtime])
    if is_decoder_artifact(Path(src)):
        if fused:
            raise ConfigError("--fused-decoder needs the model's weights (the builder reads them); export the original "
                              "model with --kv-cache --fused-decoder, or compress it with --fused-decoder")
        return add_runtime(Path(src), runtime, Path(out) if out else None, overwrite, on_step)
    if art.is_artifact(Path(src)):
        raise ConfigError(f"{src} is an artifact without a KV cache (its graph takes input_ids only); export the "
                          "original model with --kv-cache (e.g. `edgekit export smollm2 --kv-cache ...`)")
    if out is None:
        raise ConfigError("pass -o DIR for the artifact folder")
    art.check_output(out, overwrite, protect=[src])  # before loading
    on_step("load")
    loaded = opts.load(src)
    find_causal_lm(loaded.module)  # a clear error before looking for a tokenizer
    return write_decoder_artifact(loaded.module, Path(out), [runtime], source_info(loaded, opts),
                                  tokenizer_dir(loaded.source), overwrite=overwrite, protect=[src], on_step=on_step,
                                  fused=fused)


def add_runtime(src: Path, runtime: str, out: Path | None, overwrite: bool, on_step: Step) -> Path:
    """Add `runtime`'s generation folder to a verified decoder artifact (in place, or into `out`)."""
    from .decoder import DecoderInfo
    from .loop import greedy, open_decoder

    man = art.read_manifest(src)
    if runtime not in RUNTIMES:
        raise ConfigError(f"--kv-cache exports to {' and '.join(RUNTIMES)}, not {runtime}")
    dest = out or src
    info = DecoderInfo.from_dict(man["decoder"])
    gen, precision = man["generation"], man.get("export_precision", "fp32")
    with art.staging(dest, overwrite=overwrite or dest.resolve() == src.resolve(), base=src, protect=[src]) as root:
        on_step("reference: canonical model.onnx on ONNX Runtime")
        cfg = man["validation"]["onnx"].get("runtime_config") or {}
        ids = list(gen["prompt_tokens"])
        ref = greedy(open_decoder(root / man["model"], "onnxruntime", man["decoder"], config=cfg), ids,
                     len(gen["tokens"]), keep_logits=True)
        if ref.tokens != gen["tokens"]:
            raise ConfigError(f"{src}: its model.onnx no longer reproduces the recorded tokens; re-create the artifact")
        ref.stopped_at_eos = bool(gen["tokens"]) and gen["tokens"][-1] in info.eos_token_ids
        shutil.rmtree(root / "exports" / runtime, ignore_errors=True)
        on_step(f"export {runtime} + validate generation")
        if runtime == "onnxruntime":
            entry = export_ort(root, info, man["tokenizer"]["files"], ids, ref, precision, cfg)
        else:
            entry = export_ov(root, info, ids, ref, precision)
        entry["validation"]["reference"] = "recorded transformers tokens; logits of model.onnx on ONNX Runtime"
        man.setdefault("exports", {})[runtime] = entry
        art.write_manifest(root, man)
    return dest
