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
from typing import Any, Iterator, Sequence

from pydantic import BaseModel, Field, ValidationError
from typing_extensions import Annotated

from .errors import ArtifactError, ConfigError, ModelLoadError
from .safety import check_path_text, check_replaceable, is_edgekit_artifact, output_lock

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1


class FileEntry(BaseModel, extra="forbid"):
    """One file of the artifact: its checksum and size, checked before the file is used."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class InputEntry(BaseModel, extra="forbid"):
    """One model input (edgekit.specs.InputSpec in manifest form)."""

    name: str
    shape: list[Annotated[int, Field(gt=0, lt=1 << 31)]] = Field(max_length=8)
    dtype: str = "float32"
    dynamic: dict[int, str] = Field(default_factory=dict)
    high: int | None = None


class ExportEntry(BaseModel, extra="allow"):
    """manifest["exports"][runtime]: the runtime's file, its precision and how it was validated (and, by kind of
    export, what its weights are, the deploy step's decision, the generation stack...)."""

    file: str
    precision: str | None = None
    validation: dict[str, Any] | None = None


class Manifest(BaseModel, extra="allow"):
    """The one manifest type: every artifact's manifest.json validates against it when written (write_manifest,
    update_manifest: the only writers, both atomic) and when read (verify_artifact). Verb-specific entries (method,
    methods, fidelity, decoder, recipe, ...) ride along as extra keys; what every reader relies on is typed here."""

    schema_version: int
    kind: str = Field(min_length=1)
    created: str | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    files: dict[str, FileEntry]
    inputs: list[InputEntry]
    model: str | None = None
    torch_program: str | None = None
    source: dict[str, Any] | None = None
    exports: dict[str, ExportEntry] = Field(default_factory=dict)


def check_manifest(man: Any, where: str) -> None:
    """ArtifactError naming the first field of `man` that does not fit the Manifest type."""
    try:
        Manifest.model_validate(man)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        raise ArtifactError(f"{where}: manifest.json field '{loc}': {err['msg']}; re-create the artifact") from None


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


def read_manifest(art: Path, verify: bool = True) -> dict[str, Any]:
    """Load an artifact's manifest; by default verify the artifact first (checksums, paths, no symlinks, finite
    validation figures), so no file of a tampered artifact is ever used."""
    if verify:
        return verify_artifact(art)["manifest"]
    return _load_manifest(Path(art))


def _load_manifest(art: Path) -> dict[str, Any]:
    p = Path(art) / MANIFEST
    if not p.is_file():
        raise ModelLoadError(f"{art} is not an edgekit artifact (no manifest.json); pass a folder written by "
                             "`edgekit compress` or `edgekit export`")
    if p.is_symlink():
        raise ArtifactError(f"{p} is a symbolic link; an artifact's files must be its own")
    try:
        man = json.loads(p.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ArtifactError(f"{p}: manifest.json is not UTF-8 text; re-create the artifact") from None
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{p}: manifest.json is not valid JSON ({e.msg}, line {e.lineno}); re-create the "
                            "artifact") from None
    except RecursionError:
        raise ArtifactError(f"{p}: manifest.json is nested too deeply; re-create the artifact") from None
    if not isinstance(man, dict):
        raise ArtifactError(f"{p}: manifest.json is not an object; re-create the artifact")
    return man


def export_file(art: Path, runtime: str) -> Path:
    """Path of an artifact's exported file for a runtime ('onnx' = canonical ONNX). Without an onnxruntime export,
    ONNX Runtime gets the canonical model.onnx when it was validated on ONNX Runtime (a compress artifact)."""
    man = read_manifest(art)
    if runtime == "onnx":
        return Path(art) / man.get("model", "model.onnx")
    ex = man.get("exports", {}).get(runtime)
    if not ex and runtime == "onnxruntime" and (man.get("validation") or {}).get("onnx"):
        return Path(art) / man.get("model", "model.onnx")
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
    manifest.setdefault("kind", "artifact")
    manifest.setdefault("created", now_iso())
    manifest["versions"] = library_versions()
    manifest["files"] = file_entries(root)
    check_manifest(manifest, str(root))
    _atomic_write(Path(root) / MANIFEST, manifest)


def _atomic_write(path: Path, manifest: dict[str, Any]) -> None:
    """Write JSON next to `path` and rename it into place (strict JSON: NaN/Inf become an error, not 'NaN')."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(manifest, indent=2, default=str, allow_nan=False))
        os.replace(tmp, path)
    except ValueError:
        tmp.unlink(missing_ok=True)
        raise ArtifactError(f"a figure for {path.parent} is NaN/Inf; refusing to record it as valid") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def update_manifest(art: Path, patch: dict[str, Any]) -> dict[str, Any]:
    """Add top-level entries to a verified artifact's manifest, atomically (files and checksums unchanged)."""
    with output_lock(Path(art).resolve()):
        man = read_manifest(art)
        man.update(patch)
        check_manifest(man, str(art))
        _atomic_write(Path(art) / MANIFEST, man)
    return man


def _pid_dead(name: str, tag: str) -> bool:
    """True when a hidden staging/backup folder's pid (in its name after `tag`) is no longer running."""
    try:
        pid = int(name.split(tag, 1)[1].split("-", 1)[0])
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (ValueError, IndexError, PermissionError):
        return False
    return False


def _recover(out: Path) -> None:
    """Clean up after a killed process: its staging folders go; a backup of the previous artifact (killed between
    the two renames) is put back when `out` is missing, else removed (the swap had completed)."""
    for p in out.parent.glob(f".{out.name}.tmp-*"):
        if p.is_dir() and not p.is_symlink() and _pid_dead(p.name, ".tmp-"):
            shutil.rmtree(p, ignore_errors=True)
    for p in sorted(out.parent.glob(f".{out.name}.old-*")):
        if not p.is_dir() or p.is_symlink() or not _pid_dead(p.name, ".old-"):
            continue
        if not out.exists():
            os.replace(p, out)
        elif is_edgekit_artifact(p):
            shutil.rmtree(p, ignore_errors=True)


def check_output(out: Path, overwrite: bool = False, protect: Sequence[Path | str] = (),
                 base: Path | None = None) -> bool:
    """Raise unless `out` may be written (called before any work, and again when writing): a valid name; absent,
    or --overwrite and replaceable (an edgekit artifact or empty; not the cwd or an input's folder), or `base`."""
    check_path_text(out)
    res = Path(out).resolve()
    if res.exists() or res.is_symlink():
        if base is not None and res == Path(base).resolve():
            return True
        if not overwrite:
            raise ConfigError(f"output folder {res} already exists; pass --overwrite or choose another -o")
        check_replaceable(res, protect)
    return True


@contextlib.contextmanager
def staging(out: Path, overwrite: bool = False, base: Path | None = None,
            protect: Sequence[Path | str] = ()) -> Iterator[Path]:
    """Yield a temporary folder next to `out`; on success it replaces `out` atomically, on any failure it vanishes.

    Only an edgekit artifact or an empty folder is ever replaced (never the current directory or a folder holding
    one of `protect`, the inputs); one writer per `out` at a time (a lock); a dead run's leftovers are recovered.
    `base`, if given, is a verified artifact copied into the staging folder first (to extend it).
    """
    check_path_text(out)
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(out):
        _recover(out)
        check_output(out, overwrite, protect, base)
        if base is not None:
            verify_artifact(base)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; an artifact is meant to be shared
        try:
            if base is not None:
                shutil.copytree(base, tmp, dirs_exist_ok=True, symlinks=True)
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


def _inside(root: Path, rel: Any, what: str) -> Path:
    """A manifest path must be relative and stay inside the artifact (symlinks are refused by the folder walk)."""
    ok = isinstance(rel, str) and rel and "\x00" not in rel and not Path(rel).is_absolute()
    if not ok or ".." in Path(rel).parts or not (root / rel).resolve().is_relative_to(root.resolve()):
        raise ArtifactError(f"{root}: {what} path {rel!r} leaves the artifact folder; refusing the artifact")
    return root / rel


def _non_finite(obj: Any, where: str = "") -> str | None:
    """Path of the first NaN/Inf number in a JSON-like object, else None."""
    import math

    if isinstance(obj, float) and not math.isfinite(obj):
        return where or "value"
    if isinstance(obj, dict):
        for k, v in obj.items():
            if (bad := _non_finite(v, f"{where}.{k}" if where else str(k))) is not None:
                return bad
    if isinstance(obj, list):
        for i, v in enumerate(obj):
            if (bad := _non_finite(v, f"{where}[{i}]")) is not None:
                return bad
    return None


_VERIFIED: dict[tuple, dict[str, Any]] = {}


def verify_artifact(art: Path) -> dict[str, Any]:
    """Check an artifact before any of its files is used; raise ArtifactError naming the first problem.

    Checks: manifest shape (schema_version, kind, files, inputs); no symbolic link anywhere in the folder; every
    listed file inside the folder, a regular file, with the recorded size and sha256; every file the manifest points
    to (model, torch_program, exports) listed; validation figures finite. Unlisted files are reported, not used.
    Returns {"manifest", "files", "bytes", "unlisted"}. Results are memoised per manifest mtime within a process."""
    root = Path(art)
    if root.is_symlink():
        raise ArtifactError(f"{root} is a symbolic link; pass the artifact folder itself")
    man = _load_manifest(root)
    key = (str(root.resolve()), (root / MANIFEST).stat().st_mtime_ns, (root / MANIFEST).stat().st_size)
    if key in _VERIFIED:
        return _VERIFIED[key]
    check_manifest(man, str(root))
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for n in dirnames + filenames:
            if (Path(dirpath) / n).is_symlink():
                raise ArtifactError(f"{root}: {Path(dirpath, n).relative_to(root)} is a symbolic link; an "
                                    "artifact's files must be its own")
    listed = man["files"]
    total = 0
    for rel, meta in listed.items():
        p = _inside(root, rel, "file")
        if not p.is_file():
            raise ArtifactError(f"{root}: listed file {rel} is missing; re-create the artifact")
        if not isinstance(meta, dict) or p.stat().st_size != meta.get("bytes") or sha256_file(p) != meta.get("sha256"):
            raise ArtifactError(f"{root}: {rel} does not match its checksum in manifest.json (changed or damaged); "
                                "re-create the artifact")
        total += p.stat().st_size
    refs = [("model", man.get("model")), ("torch_program", man.get("torch_program"))]
    exports = man.get("exports", {})
    if not isinstance(exports, dict):
        raise ArtifactError(f"{root}: manifest.json 'exports' is not an object; re-create the artifact")
    refs += [(f"exports.{rt}", e.get("file") if isinstance(e, dict) else e) for rt, e in exports.items()]
    for what, rel in refs:
        if rel is None and what == "torch_program":
            continue
        _inside(root, rel, what)
        if rel not in listed:
            raise ArtifactError(f"{root}: {what} points to {rel!r}, which the manifest does not list with a "
                                "checksum; refusing to use it")
    bad = _non_finite({"validation": man.get("validation"), "exports": exports})
    if bad:
        raise ArtifactError(f"{root}: manifest figure {bad} is NaN or infinite; the artifact did not validate")
    on_disk = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    res = {"manifest": man, "files": len(listed), "bytes": total,
           "unlisted": sorted(on_disk - set(listed) - {MANIFEST})}
    _VERIFIED[key] = res
    return res
