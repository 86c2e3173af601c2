"""Artifact folders: manifest.json + model files, written into a temporary sibling folder and renamed into place.

Layout::

    ART/manifest.json
    ART/model.onnx                      canonical ONNX (float, or integer weights + DequantizeLinear)
    ART/model.pt2                       torch.export program of the (compressed) model, for later exports
    ART/exports/onnxruntime/model.onnx
    ART/exports/openvino/model.xml (+ .bin)
    ART/exports/tflite/model.tflite

manifest["exports"][runtime] = {"file": relative path, "precision": ..., "validation": {...}}.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import ConfigError, ModelLoadError

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    """Versions of every library that can touch a model, for the manifest."""
    from importlib import metadata

    out = {}
    for pkg in ("edgekit", "torch", "numpy", "onnx", "onnxruntime", "onnxscript", "onnxslim", "openvino", "nncf",
                "ai-edge-litert", "litert-torch", "safetensors", "transformers"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def is_artifact(path: Path) -> bool:
    """True for a folder that holds a manifest.json."""
    return Path(path).is_dir() and (Path(path) / MANIFEST).is_file()


def read_manifest(art: Path) -> dict[str, Any]:
    """Load an artifact's manifest, with a clear error when the folder is not an artifact."""
    p = Path(art) / MANIFEST
    if not p.is_file():
        raise ModelLoadError(f"{art} is not an edgekit artifact (no manifest.json); pass a folder written by "
                             "`edgekit compress` or `edgekit export`")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{p}: manifest.json is not valid JSON ({e.msg}, line {e.lineno}); re-create the artifact")


def export_file(art: Path, runtime: str) -> Path:
    """Path of an artifact's exported file for a runtime ('onnx' = canonical ONNX)."""
    man = read_manifest(art)
    if runtime == "onnx":
        return Path(art) / man.get("model", "model.onnx")
    ex = man.get("exports", {}).get(runtime)
    if not ex:
        have = ", ".join(man.get("exports", {})) or "none"
        raise ConfigError(f"artifact {art} has no {runtime} export (has: {have}); run "
                          f"`edgekit export {art} --target {runtime}` first")
    return Path(art) / ex["file"]


def now_iso() -> str:
    """UTC timestamp for manifests."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def file_entries(root: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file under root except the manifest."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            out[str(p.relative_to(root))] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    return out


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """Fill in files/versions and write manifest.json."""
    manifest.setdefault("schema_version", SCHEMA_VERSION)
    manifest.setdefault("created", now_iso())
    manifest["versions"] = library_versions()
    manifest["files"] = file_entries(root)
    (Path(root) / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))


def _remove_stale(out: Path) -> None:
    """Delete staging folders left by a killed process (their pid is in the name and no longer alive)."""
    for p in out.parent.glob(f".{out.name}.tmp-*"):
        try:
            pid = int(p.name.split(".tmp-", 1)[1].split("-", 1)[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue


@contextlib.contextmanager
def staging(out: Path, overwrite: bool = False, base: Path | None = None) -> Iterator[Path]:
    """Yield a temporary folder next to `out`; on success it replaces `out` atomically, on any failure it vanishes.

    `base`, if given, is copied into the staging folder first (to extend an existing artifact).
    """
    out = Path(out).resolve()
    if out.exists() and not overwrite and (base is None or out != Path(base).resolve()):
        raise ConfigError(f"output folder {out} already exists; pass --overwrite or choose another -o")
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; an artifact is meant to be shared
    try:
        if base is not None:
            shutil.copytree(base, tmp, dirs_exist_ok=True)
        yield tmp
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
