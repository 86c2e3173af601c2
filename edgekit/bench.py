"""Bench matrix: variants (fp32 + each method) x targets -> status, size, fidelity, latency, speed-up, memory.

Every latency ratio compares two measurements of the same run on the same target (ANCHORS: absolute times drift,
ratios repeat). A compressed variant slower than fp32 by more than SLOWER_TOLERANCE is flagged with the ratio and
the op types whose total time grew most, from the runtime's per-op profile.
Writes OUT/bench.json (+ .md, .html) and keeps each (variant, target) artifact under OUT/artifacts/.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import ConfigError, EdgekitError, ExportMismatchError
from .targets import TargetProfile, load_target

SCHEMA = "edgekit.bench/1"
SLOWER_TOLERANCE = 0.05  # ratios repeat within about +-0.05 here (ANCHORS.md); smaller gaps are noise
N_FIDELITY = 16
PASSED, MISMATCH, EXPORT_FAILED = "passed", "exported but failed validation", "export failed"
COMPRESS_FAILED, MEASURE_FAILED = "compress failed", "measure failed"


def _export_target(spec: Any, t: TargetProfile) -> str:
    """What to pass to api.export: the user's name/path, or the runtime for in-memory profiles."""
    return str(spec) if isinstance(spec, (str, Path)) else t.runtime


def _runtime_file(art: Path, runtime: str) -> Path | None:
    """The exported file of a runtime in an artifact, if the export exists."""
    from .profile import artifact_file
    from .artifact import read_manifest

    try:
        f = artifact_file(art, read_manifest(art), runtime)
    except EdgekitError:
        return None
    return f if f.is_file() else None


def _size_mb(f: Path) -> float:
    """File size incl. an OpenVINO .bin next to the .xml."""
    return (f.stat().st_size + sum(p.stat().st_size for p in f.parent.glob(f.stem + ".bin"))) / 1e6


def _build(model_src: Any, variants: list[str], tgts: list[TargetProfile], specs: Sequence[Any], root: Path,
           input_shape: Any, method_options: dict[str, dict]) -> dict[tuple[str, str], dict[str, Any]]:
    """Compress each variant once and export it per target; every failure becomes a cell status with its reason."""
    from . import api

    cells: dict[tuple[str, str], dict[str, Any]] = {}
    for v in variants:
        base: Any = model_src
        if v != "fp32":
            try:
                base = api.compress(model_src, v, method_options.get(v, {}), root / v / "_compressed",
                                    input_shape=input_shape, overwrite=True)
            except EdgekitError as e:
                for t in tgts:
                    cells[v, t.name] = {"status": COMPRESS_FAILED, "reason": str(e), "art": None}
                continue
        for t, spec in zip(tgts, specs):
            dst = root / v / t.name
            shutil.rmtree(dst, ignore_errors=True)  # never measure a stale artifact from an earlier bench
            cell: dict[str, Any] = {"status": PASSED, "reason": None, "art": dst}
            try:
                cell["art"] = Path(api.export(base, _export_target(spec, t), out=dst, input_shape=input_shape,
                                              overwrite=True))
            except ExportMismatchError as e:
                cell.update(status=MISMATCH, reason=str(e))
            except Exception as e:  # noqa: BLE001 - any exporter crash is a cell result, not a bench failure
                cell.update(status=EXPORT_FAILED, reason=str(e).strip().splitlines()[0] if str(e).strip() else
                            type(e).__name__)
            if cell["art"] is None or not (Path(cell["art"]) / "manifest.json").is_file() or \
                    _runtime_file(Path(cell["art"]), t.runtime) is None:
                cell["art"] = None
            cells[v, t.name] = cell
    return cells


def _outputs(f: Path, t: TargetProfile, hint: list[dict] | None, n: int) -> list[np.ndarray]:
    """First output for n seeded random inputs, run in the target's runtime (same inputs for every variant)."""
    from .profile.measure import host_threads
    from .profile.runners import open_session, random_feeds, session_inputs

    sess = open_session(f, t.runtime, threads=min(t.threads, host_threads()), device=t.device, fallback=t.fallback)
    specs = session_inputs(sess)
    return [np.asarray(sess.run(random_feeds(specs, hint, seed=1000 + i))[0], dtype=np.float64) for i in range(n)]


def fidelity(ref: list[np.ndarray], out: list[np.ndarray]) -> dict[str, Any]:
    """Top-1 agreement for logits-shaped outputs ([batch, classes]), else mean cosine; cosine always reported."""
    cos = [float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))
           for a, b in zip(ref, out)]
    res = {"cosine": float(np.mean(cos)), "n": len(ref)}
    if ref and ref[0].ndim == 2 and ref[0].shape[-1] > 1:
        agree = np.concatenate([a.argmax(-1) == b.argmax(-1) for a, b in zip(ref, out)])
        return {"metric": "top1_agreement", "value": float(agree.mean()), **res}
    return {"metric": "cosine", "value": res["cosine"], **res}


def slower_note(ratio: float, ref_ops: dict[str, Any], ops: dict[str, Any]) -> dict[str, Any]:
    """Explain a slow-down by the op types whose per-inference time grew most (variant minus fp32)."""
    a, b = ref_ops.get("by_type") or {}, ops.get("by_type") or {}
    diff = []
    for op in set(a) | set(b):
        ta, tb = (a.get(op) or {}).get("time_ms"), (b.get(op) or {}).get("time_ms")
        if ta is None and tb is None:
            continue
        ta, tb = ta or 0.0, tb or 0.0
        diff.append({"op_type": op, "fp32_ms": ta, "variant_ms": tb, "delta_ms": tb - ta})
    grew = sorted((d for d in diff if d["delta_ms"] > 0), key=lambda d: -d["delta_ms"])[:3]
    why = (", ".join(f"{d['op_type']} +{d['delta_ms']:.3g} ms" for d in grew) if grew
           else "no per-op timing for this runtime" if not diff else "no op type grew; overhead is outside ops")
    return {"ratio": ratio, "op_diff": grew, "summary": f"{ratio:.2f}x the fp32 latency (slower); time grew in: {why}"}


def _row(v: str, t: TargetProfile, cell: dict[str, Any], prof: dict[str, Any] | None) -> dict[str, Any]:
    """One matrix row before the fp32-relative columns."""
    f = _runtime_file(cell["art"], t.runtime) if cell["art"] else None
    ok = prof is not None and prof.get("status") == "ok"
    status = cell["status"]
    reason = cell["reason"]
    if prof is not None and not ok:
        status, reason = MEASURE_FAILED, prof.get("error")
    return {"variant": v, "target": t.name, "runtime": t.runtime, "status": status, "reason": reason,
            "artifact": str(cell["art"]) if cell["art"] else None, "size_mb": _size_mb(f) if f else None,
            "p50_ms": prof["timing_ms"]["warm"]["p50"] if ok else None, "stable": prof.get("stable") if ok else None,
            "peak_mb": prof["memory_mb"]["model_peak"] if ok else None, "fidelity": None, "speedup": None,
            "slower": None, "profile": prof}


def bench(model_src: Any, targets: Sequence[Any], methods: Sequence[str], out_dir: str | Path,
          input_shape: Any = None, method_options: dict[str, dict] | None = None) -> dict[str, Any]:
    """Run the matrix and write bench.json/.md/.html into out_dir; returns the JSON document."""
    from .artifact import now_iso, read_manifest
    from .methods import METHODS
    from .profile import host_info, profile_artifact, require_runtime
    from .profile.report import write_reports

    if not targets:
        raise ConfigError("no targets given; pass --targets a,b (see `edgekit targets list`)")
    tgts = [load_target(t) for t in targets]
    for t in tgts:
        require_runtime(t.runtime)
    for m in methods:
        if m not in METHODS:
            from .methods import get_method

            get_method(m)  # raises the 'did you mean' ConfigError
    out_dir = Path(out_dir)
    variants = ["fp32"] + [m for m in methods if m != "fp32"]
    cells = _build(model_src, variants, tgts, targets, out_dir / "artifacts", input_shape, method_options or {})
    rows = []
    for t in tgts:  # measure per target, variants back to back, so ratios come from one stretch of time
        for v in variants:
            cell = cells[v, t.name]
            prof = profile_artifact(cell["art"], [t])["results"][0] if cell["art"] else None
            rows.append(_row(v, t, cell, prof))
    for t in tgts:
        trow = {r["variant"]: r for r in rows if r["target"] == t.name}
        ref = trow["fp32"]
        hint = read_manifest(Path(ref["artifact"])).get("inputs") if ref["artifact"] else None
        ref_out = _outputs(_runtime_file(Path(ref["artifact"]), t.runtime), t, hint, N_FIDELITY) \
            if ref["artifact"] else None
        for r in trow.values():
            if ref_out is not None and r["artifact"]:
                try:
                    r["fidelity"] = fidelity(ref_out, _outputs(_runtime_file(Path(r["artifact"]), t.runtime), t,
                                                               hint, N_FIDELITY))
                except Exception as e:  # noqa: BLE001 - shown in the row, the matrix goes on
                    r["fidelity"] = {"metric": "error", "value": None, "error": str(e).splitlines()[0]}
            if r["p50_ms"] and ref["p50_ms"]:
                r["speedup"] = ref["p50_ms"] / r["p50_ms"]
                ratio = r["p50_ms"] / ref["p50_ms"]
                if r["variant"] != "fp32" and ratio > 1 + SLOWER_TOLERANCE:
                    r["slower"] = slower_note(ratio, ref["profile"].get("ops") or {}, r["profile"].get("ops") or {})
                    if not (r["stable"] and ref["stable"]):
                        r["slower"]["summary"] += " (a measurement was unstable: the ratio may be noise)"
    doc = {"schema": SCHEMA, "kind": "bench", "created": now_iso(), "host": host_info(), "model": str(model_src),
           "input_shape": input_shape, "targets": [t.name for t in tgts], "variants": variants,
           "slower_tolerance": SLOWER_TOLERANCE, "rows": rows}
    write_reports(doc, out_dir, "bench")
    return doc


__all__ = ["bench", "fidelity", "slower_note"]
