"""An artifact's FP32 source: what the manifest records about it, and re-loading it as eval's FP32 reference.

manifest["source"] = {"path" (as given), "abs_path" (files and folders), "kind", "sha256" (a file; for a folder the
sha256 over its config.json and *.safetensors names and checksums), "state_dict_sha256" (built-ins and factories,
whose weights are in no file of ours), "arch", "arch_args", "allow_class", "trust_pickle", and for an artifact
source "origin": that artifact's own source, so a chain of compress runs leads back to the FP32 model}.

Re-loading never lets a manifest choose code to run (checksums prove integrity, not origin; README "Security"):
a source built by a factory (a state dict + --arch, or a factory source) is re-built only with the --arch the user
passes again (the recorded --arch-args are reused when it is the recorded --arch, since the user chose that
callable); classes are allowed only by the user's own --allow-class, and --trust-pickle is never implied. The
re-loaded model must match the recorded checksum, so the reference is the model the artifact came from or nothing.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from .errors import ConfigError, ModelLoadError
from .model_io import LoadedModel, SourceOptions, load_model

NEEDS_ARCH = ("state_dict", "factory")


def folder_sha256(path: Path) -> str:
    """sha256 over a model folder's config.json and *.safetensors (what loading reads), by name and checksum."""
    from .artifact import sha256_file

    h = hashlib.sha256()
    for p in sorted([path / "config.json", *path.glob("*.safetensors")]):
        if p.is_file():
            h.update(p.name.encode() + b"\0" + sha256_file(p).encode())
    return h.hexdigest()


def _checksums(loaded: LoadedModel) -> dict[str, str]:
    """The checksum that identifies the source's weights."""
    from .artifact import sha256_file

    p = Path(loaded.source)
    if loaded.kind == "demo":
        from .models.digits_cnn import WEIGHTS

        return {"sha256": sha256_file(WEIGHTS)}
    if loaded.kind in ("builtin", "factory"):
        from .models.real import state_dict_sha256

        return {"state_dict_sha256": state_dict_sha256(loaded.module)}
    if p.is_file():
        return {"sha256": sha256_file(p)}
    if p.is_dir() and loaded.kind == "huggingface":
        return {"sha256": folder_sha256(p)}
    return {}


def source_info(loaded: LoadedModel, opts: SourceOptions | None = None) -> dict[str, Any]:
    """The manifest's `source` entry: enough to re-load the source and check it is the same."""
    opts = opts or SourceOptions()
    p = Path(loaded.source)
    info: dict[str, Any] = {"path": loaded.source, "kind": loaded.kind, **_checksums(loaded)}
    if p.exists():
        info["abs_path"] = str(p.resolve())
    if loaded.kind in NEEDS_ARCH:
        info["arch"] = opts.arch if loaded.kind == "state_dict" else loaded.source
        info["arch_args"] = dict(opts.arch_args)
    if opts.allow_class:
        info["allow_class"] = list(opts.allow_class)
    if opts.trust_pickle:
        info["trust_pickle"] = True
    if loaded.kind == "artifact":
        from .artifact import read_manifest

        info["origin"] = read_manifest(p).get("source")
    return info


def root_source(info: dict[str, Any] | None) -> dict[str, Any]:
    """Follow `origin` from an artifact source back to the model the chain started from."""
    seen = 0
    while isinstance(info, dict) and info.get("kind") == "artifact" and isinstance(info.get("origin"), dict):
        info, seen = info["origin"], seen + 1
        if seen > 64:
            break
    if not isinstance(info, dict) or not info.get("kind"):
        raise ModelLoadError("the artifact's manifest does not record its source; re-create it with this edgekit")
    return info


def _where(info: dict[str, Any], reference: str | Path | None) -> str:
    """Where to re-load from: --reference, else the recorded absolute path, else the path as recorded."""
    if reference is not None:
        return str(reference)
    if info["kind"] in ("demo", "builtin", "factory"):
        return str(info["path"])
    for key in ("abs_path", "path"):
        if info.get(key) and Path(info[key]).exists():
            return str(info[key])
    raise ModelLoadError(f"the FP32 source {info.get('path')} this artifact came from is gone (moved or deleted); "
                         "pass --reference PATH to compare with a copy of it (its checksum is checked)")


def _options(info: dict[str, Any], opts: SourceOptions) -> SourceOptions:
    """The user's options, with the recorded --arch-args reused when the user confirms the recorded --arch."""
    if info["kind"] not in NEEDS_ARCH:
        return opts
    recorded = info.get("arch")
    arch = opts.arch
    if not arch:
        raise ConfigError(f"the FP32 source of this artifact was built by --arch {recorded}; pass --arch {recorded} "
                          "(and its --arch-args) to let eval build it again (edgekit never runs code a manifest "
                          "names)")
    args = opts.arch_args or ((info.get("arch_args") or {}) if arch == recorded else {})
    return SourceOptions(arch, dict(args), opts.allow_class, opts.trust_pickle, opts.input_shape, opts.dynamic)


def reload_source(info: dict[str, Any], opts: SourceOptions | None = None,
                  reference: str | Path | None = None) -> LoadedModel:
    """Re-load the recorded FP32 source (following `origin`), checked against its recorded checksum."""
    opts = opts or SourceOptions()
    info = root_source(info)
    where = _where(info, reference)
    o = _options(info, opts)
    if info["kind"] == "factory" and reference is None:
        loaded = load_model(o.arch, arch_args=o.arch_args)
    else:
        loaded = load_model(where, o.arch if info["kind"] == "state_dict" else None, o.allow_class, o.trust_pickle,
                            o.arch_args if info["kind"] == "state_dict" else None)
    got = _checksums(loaded)
    for key in ("sha256", "state_dict_sha256"):
        if info.get(key) and got.get(key) and got[key] != info[key]:
            what = "was built differently (random initialisation in the factory?)" if info["kind"] == "factory" \
                else "changed since the artifact was made"
            raise ModelLoadError(f"the FP32 source {where} {what}: its {key} is {got[key][:12]}..., the artifact "
                                 f"recorded {info[key][:12]}...; compare with the model the artifact came from")
    return loaded


__all__ = ["folder_sha256", "reload_source", "root_source", "source_info"]
