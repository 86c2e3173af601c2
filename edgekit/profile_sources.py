"""`edgekit profile` on any model source `compress` takes, not only artifacts.

A source that is not an artifact (a .pt/.pth/.safetensors with --arch, a factory, a .pt2, a Hugging Face folder, a
built-in name) is first exported in FP32 to every runtime the targets use (`edgekit.api.export`: validated against
PyTorch, fails closed) into a temporary folder edgekit creates and removes afterwards; then it is profiled exactly
as an artifact would be (one artifact: `profile_artifact`; two or more: `compare_artifacts`, one interleaved loop per
target). In the returned document the temporary paths are replaced by the source as the user gave it, and
`sources` says which entries were exported for this run (nothing of them is kept: `edgekit export SRC -o DIR`
keeps an artifact). A `.onnx` file goes the same way for ONNX Runtime and OpenVINO targets; a LiteRT target
needs the PyTorch model and is refused with that fix.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from .model_io import SourceOptions


def _noop(_: str) -> None:
    return None


def _is_artifact(src: str | Path) -> bool:
    from .artifact import is_artifact

    p = Path(src)
    return p.is_dir() and is_artifact(p)


def _export_all(src: str, runtimes: list[str], dest: Path, opts: SourceOptions, step: Callable[[str], None]) -> None:
    """FP32 export of `src` to each runtime into `dest` (the first export creates the artifact)."""
    from . import api

    kw = {k: v for k, v in opts.api_kwargs().items() if v}
    step(f"export {src} (FP32) to {runtimes[0]}")
    api.export(src, runtimes[0], out=dest, **kw)
    for rt in runtimes[1:]:
        step(f"export {src} (FP32) to {rt}")
        api.export(dest, rt)


def _relabel(doc: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """Every temporary artifact path in the document replaced by the source it was exported from."""
    text = json.dumps(doc)
    for tmp, src in sorted(names.items(), key=lambda kv: -len(kv[0])):  # source10 before source1
        text = text.replace(json.dumps(tmp)[1:-1], json.dumps(src)[1:-1])
    return json.loads(text)


def profile_sources(sources: Sequence[str | Path], targets: Sequence[Any], source: SourceOptions | None = None,
                    rounds: int | None = None, out_json: str | Path | None = None,
                    on_step: Callable[[str], None] = _noop) -> dict[str, Any]:
    """Profile one source, or compare 2+ interleaved (ratios to the first), on each target; see the module doc."""
    from .errors import ConfigError
    from .profile import compare_artifacts, profile_artifact, require_runtime
    from .targets import load_target

    if not sources:
        raise ConfigError("pass a model source or artifact to profile")
    if not targets:
        raise ConfigError("no target given; pass --target NAME (see `edgekit targets list`)")
    from .genai.speed import decode_profile, is_decoder_artifact

    dec = [is_decoder_artifact(s) for s in sources]
    if rounds is not None and len(sources) < 2 and not dec[0]:
        raise ConfigError("--rounds applies when comparing two or more artifacts; drop it for one artifact")
    if any(dec):  # KV-cache decoders: generation metrics (TTFT, decode tokens/s), not one forward pass
        if not all(dec):
            raise ConfigError("decoder artifacts (made with --kv-cache) are profiled for generation; profile them "
                              "apart from other sources")
        doc = decode_profile(sources, targets, rounds=rounds, on_step=on_step)
        doc["sources"] = [{"source": str(s), "exported_fp32": False} for s in sources]
        if out_json is not None:
            from .safety import write_own_json

            write_own_json(Path(out_json), doc)
        return doc
    tgts = [load_target(t) for t in targets]  # bad names fail before any export
    for t in tgts:
        require_runtime(t.runtime)
    opts = source or SourceOptions()
    runtimes = list(dict.fromkeys(t.runtime for t in tgts))
    tmp = Path(tempfile.mkdtemp(prefix="edgekit-profile-"))
    try:
        arts, names, exported = [], {}, []
        for i, s in enumerate(sources):
            if _is_artifact(s):
                arts.append(Path(s))
                continue
            dest = tmp / f"source{i}"
            _export_all(str(s), runtimes, dest, opts, on_step)
            arts.append(dest)
            names[str(dest)] = str(s)
            exported.append(str(s))
        on_step("profile")
        doc = compare_artifacts(arts, tgts, rounds=rounds) if len(arts) > 1 else profile_artifact(arts[0], tgts)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # ours: created above
    doc = _relabel(doc, names)
    doc["sources"] = [{"source": str(s), "exported_fp32": str(s) in exported} for s in sources]
    if out_json is not None:
        from .safety import write_own_json

        write_own_json(Path(out_json), doc)
    return doc


__all__ = ["profile_sources"]
