"""Compare artifacts on targets: `compare_artifacts(arts, targets, out_json=None, rounds=None)` -> kind "compare".

Two artifacts profiled in two runs are two samples of the host's load, not a comparison (issue 21). Here, per
target, every artifact's file for that target's runtime is timed in ONE interleaved loop in one worker
(`edgekit.profile.interleave`) and reported as a ratio to the first artifact, with the spread of that ratio.
The target's protocol sets the loop: warm-up = protocol.warmup runs of each file, rounds = protocol.min_runs
(or `rounds`), extended while the loop ran less than protocol.min_seconds. No per-op or memory figures here:
`edgekit profile ART` (one artifact) gives those.

JSON ("edgekit.profile/1", kind "compare")::

    {"schema", "kind": "compare", "created", "artifacts": [paths], "reference": first path, "host": host_info(),
     "provenance": provenance(argv), "results": [{
        "target", "runtime", "status", "error", "protocol", "rounds", "threads": {requested, used},
        "device": {requested, used, fallback_used}, "load": {loadavg_before, loadavg_after, others_after_est,
        high, warning}, "versions", "files": [{"artifact", "file", "file_bytes", "load_ms", "first_inference_ms",
        "timing_ms": {min, p50, p90, p99, mean, std, cv, robust_cv, runs, seconds, quantiles_ms},
        "ratio": null for the first, else {p50, mean, min, ci95, per_round {p10..p90}, blocks, block_range}}]}]}
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError


def _size(f: Path) -> int:
    """File bytes, with an OpenVINO .bin beside its .xml."""
    return f.stat().st_size + sum(p.stat().st_size for p in f.parent.glob(f.stem + ".bin")) if f.is_file() else 0


def compare_target(arts: list[Path], manifests: list[dict[str, Any]], target: Any,
                   rounds: int | None = None) -> dict[str, Any]:
    """One target: the artifacts' files timed interleaved; the result entry of the module docstring."""
    from ..runtimes import ov_dynamic_quant
    from . import artifact_file
    from .interleave import interleaved

    p = target.protocol
    files = [artifact_file(a, m, target.runtime) for a, m in zip(arts, manifests)]
    specs = [{"path": f, "runtime": target.runtime, "device": target.device, "fallback": target.fallback,
              "threads": target.threads, "input_hint": m.get("inputs"), "label": str(a),
              "ov_dynamic_quant": ov_dynamic_quant(m.get("exports", {}).get(target.runtime))}
             for a, m, f in zip(arts, manifests, files)]
    res = interleaved(specs, rounds=rounds or p.min_runs, warmup=p.warmup, min_seconds=p.min_seconds,
                      with_provenance=False)
    entry: dict[str, Any] = {"target": target.name, "runtime": target.runtime, "status": res["status"],
                             "error": res.get("error"), "protocol": p.model_dump(), "rounds": res.get("rounds"),
                             "order": res.get("order"), "reference": str(arts[0])}
    if res["status"] != "ok":
        entry["files"] = [{"artifact": str(a), "file": str(f.relative_to(a))} for a, f in zip(arts, files)]
        return entry
    first = res["files"][0]
    entry.update(threads=first["threads"], device=first["device"], load=res["load"], versions=res["versions"],
                 loop_seconds=res["loop_seconds"])
    entry["files"] = [{"artifact": str(a), "file": str(f.relative_to(a)), "file_bytes": _size(f),
                       **{k: r[k] for k in ("device", "load_ms", "first_inference_ms", "timing_ms", "ratio")}}
                      for a, f, r in zip(arts, files, res["files"])]
    return entry


def compare_artifacts(arts: Sequence[str | Path], targets: Sequence[Any], out_json: str | Path | None = None,
                      rounds: int | None = None, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Time 2+ artifacts interleaved on each target (name, YAML path or TargetProfile); ratios to the first."""
    from ..artifact import now_iso, read_manifest
    from ..targets import load_target
    from . import SCHEMA, artifact_file, host_info, require_runtime
    from .runinfo import provenance

    if len(arts) < 2:
        raise ConfigError("compare needs two or more artifacts (the first is the reference); "
                          "for one artifact use `edgekit profile ART --target T`")
    if not targets:
        raise ConfigError("no target given; pass --target NAME (see `edgekit targets list`)")
    if rounds is not None and rounds < 2:
        raise ConfigError(f"--rounds {rounds}: pass 2 or more")
    tgts = [load_target(t) for t in targets]
    paths = [Path(a) for a in arts]
    manifests = [read_manifest(a) for a in paths]
    for t in tgts:  # every runtime and file present before anything is timed
        require_runtime(t.runtime)
        for a, m in zip(paths, manifests):
            artifact_file(a, m, t.runtime)
    doc = {"schema": SCHEMA, "kind": "compare", "created": now_iso(), "artifacts": [str(a) for a in paths],
           "reference": str(paths[0]), "host": host_info(),
           "provenance": provenance(argv, threads=max(t.threads for t in tgts)),
           "results": [compare_target(paths, manifests, t, rounds) for t in tgts]}
    if out_json is not None:
        from ..safety import write_own_json

        write_own_json(Path(out_json), doc)
    return doc


__all__ = ["compare_artifacts", "compare_target"]
