"""Interleaved A/B/C timing of several model files in one worker subprocess: `interleaved(files, rounds, warmup)`.

Why: on a shared host the same file measured 15.6 ms and 39.0 ms in two separate profile runs (issue 21), so a
comparison of two separate runs mostly measures the load. Timing the files in one loop makes a load change hit
every file alike, and the per-round ratio cancels it.

Protocol, in one fresh worker (`edgekit.profile._worker`, spec kind "interleaved"; the parent holds torch):
1. open every file with its runtime, device (or fallback) and threads (capped to this host's cores), ONNX Runtime
   sessions with `spin_stop` (their threads stop spinning when a run ends: otherwise each session's spinning
   threads slow the next file's run, 2.4x on EfficientNet-Lite0 here; runtimes.open_session); inputs are
   the given arrays (matched by name, else by position) or seeded random feeds from the runtime's input specs,
   with dynamic dims from the file's input hint (a manifest's "inputs");
2. first inference, then `warmup` untimed runs of each file, file after file;
3. `rounds` rounds (more while the loop has run less than `min_seconds`, at most `max_rounds`); every round runs
   each file once, the order rotating by one per round (A B C, B C A, C A B, ...) so no file always runs first
   or always after the same neighbour;
4. the load average is read just before the first and after the last timed round.

Statistics (parent): per file `measure.summarize` (min, p50, p90, p99, mean, std, robust CV, quantiles). Ratio of
each file to the first: "p50" (ratio of medians, the headline), "mean", "min"; its spread: quantiles of the
per-round ratios t_i[r] / t_0[r] (paired, so drift cancels), "ci95" = 2.5/97.5 percentiles of the ratio of
medians over `n_boot` paired bootstrap resamples of the rounds (seeded), and "blocks" = the ratio of medians in
`blocks` consecutive chunks of rounds: the run-to-run spread that shorter separate comparisons would show.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ConfigError
from .measure import WORKER_TIMEOUT_S, host_threads, summarize, worker_env

RUNTIMES = ("onnxruntime", "openvino", "tflite")
FileSpec = Sequence[Any] | Mapping[str, Any]


def _file_spec(f: FileSpec, k: int, hints: Sequence[Any] | None) -> dict[str, Any]:
    """(path, runtime, device, threads) or a dict (also: fallback, input_hint, label, ov_dynamic_quant) -> checked
    spec; bad input is a one-line ConfigError before any worker starts."""
    from ..runtimes import runtime_for_file

    d = dict(f) if isinstance(f, Mapping) else dict(zip(("path", "runtime", "device", "threads"), f))
    if "path" not in d:
        raise ConfigError(f"interleaved: file {k} has no path; pass (path, runtime, device, threads)")
    path = Path(d["path"])
    if not path.is_file():
        raise ConfigError(f"interleaved: model file {path} not found; pass an existing .onnx/.xml/.tflite file")
    runtime = d.get("runtime") or runtime_for_file(path)
    if runtime not in RUNTIMES:
        raise ConfigError(f"interleaved: unknown runtime '{runtime}' for {path}; choose one of {', '.join(RUNTIMES)}")
    threads = int(d.get("threads") or 1)
    if threads < 1:
        raise ConfigError(f"interleaved: threads={threads} for {path}; pass 1 or more")
    hint = d.get("input_hint", hints[k] if hints and k < len(hints) else None)
    return {"path": str(path.resolve()), "runtime": runtime, "device": d.get("device") or "CPU",
            "fallback": d.get("fallback"), "threads": min(threads, host_threads()), "threads_requested": threads,
            "input_hint": hint or [], "label": str(d.get("label") or path.name),
            "ov_dynamic_quant": bool(d.get("ov_dynamic_quant", False))}


def interleaved(files: Sequence[FileSpec], rounds: int = 50, warmup: int = 5, *, min_seconds: float = 0.0,
                max_rounds: int | None = None, feeds: Mapping[str, np.ndarray] | Sequence[np.ndarray] | None = None,
                input_hints: Sequence[Any] | None = None, seed: int = 0, blocks: int = 5, n_boot: int = 2000,
                with_provenance: bool = True, timeout_s: float = WORKER_TIMEOUT_S) -> dict[str, Any]:
    """Time `files` interleaved in one worker (module docstring); ratios are to the first file.

    `files`: (path, runtime, device, threads) tuples or dicts with those keys (runtime None: from the suffix) plus
    optional fallback, input_hint, label, ov_dynamic_quant. `feeds`: arrays for every file (dict by input name,
    or a list by position); default seeded random inputs. Returns {"status": "ok" | "error", ...}; a file that
    fails to load or run makes the whole result an error (one line), never a partial comparison.
    """
    if not files:
        raise ConfigError("interleaved: no files given; pass at least one (path, runtime, device, threads)")
    if rounds < 2 or warmup < 0 or min_seconds < 0 or blocks < 1:
        raise ConfigError(f"interleaved: rounds={rounds}, warmup={warmup}, min_seconds={min_seconds}, "
                          f"blocks={blocks}; need rounds >= 2, warmup >= 0, min_seconds >= 0, blocks >= 1")
    specs = [_file_spec(f, k, input_hints) for k, f in enumerate(files)]
    spec = {"kind": "interleaved", "files": specs, "rounds": int(rounds), "warmup": int(warmup),
            "min_seconds": float(min_seconds), "max_rounds": int(max_rounds or 20 * rounds), "seed": int(seed)}
    with tempfile.TemporaryDirectory(prefix="edgekit-interleave-") as tmp:
        if feeds is not None:
            names = list(feeds) if isinstance(feeds, Mapping) else []
            arrays = list(feeds.values()) if isinstance(feeds, Mapping) else list(feeds)
            np.savez(Path(tmp) / "feeds.npz", **{f"a{i}": np.asarray(a) for i, a in enumerate(arrays)})
            spec["feeds"] = {"file": str(Path(tmp) / "feeds.npz"), "names": names, "n": len(arrays)}
        t0 = time.perf_counter()
        raw = _spawn(spec, Path(tmp), timeout_s)
        wall = time.perf_counter() - t0
    out = summarize_interleaved(raw, specs, blocks=blocks, n_boot=n_boot, seed=seed)
    out["subprocess"] = {"wall_s": round(wall, 3), "worker_s": raw.get("worker_s")}
    if any(s["runtime"] == "onnxruntime" for s in specs):
        out["onnxruntime_sessions"] = "session.force_spinning_stop=1 (threads stop spinning when a run ends)"
    if with_provenance:
        from .runinfo import provenance

        out["provenance"] = provenance(threads=max(s["threads"] for s in specs))
    return out


def _spawn(spec: dict[str, Any], tmp: Path, timeout_s: float) -> dict[str, Any]:
    """Run the worker on spec; its JSON result, or {"status": "error"} with one line."""
    env = worker_env()
    spec_p, out_p = tmp / "spec.json", tmp / "result.json"
    spec_p.write_text(json.dumps(spec))
    try:
        proc = subprocess.run([sys.executable, "-m", "edgekit.profile._worker", str(spec_p), str(out_p)], cwd=tmp,
                              env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"status": "error", "error": f"interleaved timing exceeded {timeout_s:.0f} s; lower rounds"}
    if not out_p.is_file():
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()
        return {"status": "error", "error": f"worker crashed (exit {proc.returncode}): "
                f"{tail[-1] if tail else 'no output'}"}
    return json.loads(out_p.read_text())


def ratio_spread(ref_ms: Sequence[float], ms: Sequence[float], blocks: int = 5, n_boot: int = 2000,
                 seed: int = 0) -> dict[str, Any]:
    """Ratio of `ms` to `ref_ms` (paired by round) with its spread (module docstring)."""
    a, b = np.asarray(ref_ms, dtype=np.float64), np.asarray(ms, dtype=np.float64)
    n = min(a.size, b.size)
    a, b = a[:n], b[:n]
    per_round = b / a
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    boot = np.median(b[idx], axis=1) / np.median(a[idx], axis=1)
    chunks = [c for c in np.array_split(np.arange(n), min(blocks, n)) if c.size]
    q = np.percentile(per_round, [10, 25, 50, 75, 90])
    block = [float(np.median(b[c]) / np.median(a[c])) for c in chunks]
    return {"p50": float(np.median(b) / np.median(a)), "mean": float(b.mean() / a.mean()),
            "min": float(b.min() / a.min()), "ci95": [float(x) for x in np.percentile(boot, [2.5, 97.5])],
            "per_round": dict(zip(("p10", "p25", "p50", "p75", "p90"), (float(x) for x in q))),
            "blocks": block, "block_range": [min(block), max(block)], "rounds": int(n), "n_boot": int(n_boot)}


def summarize_interleaved(raw: dict[str, Any], specs: list[dict[str, Any]], blocks: int = 5, n_boot: int = 2000,
                          seed: int = 0) -> dict[str, Any]:
    """Worker result -> per-file statistics, ratios to the first file and the load around the loop."""
    from .runinfo import INTERLEAVED_ADVICE, host_load, load_during

    base = {"rounds": None, "order": "rotating", "reference": specs[0]["label"],
            "files": [{k: s[k] for k in ("label", "path", "runtime")} for s in specs]}
    if raw.get("status") != "ok":
        return {**base, "status": "error", "error": raw.get("error") or "worker failed", "trace": raw.get("trace")}
    cores = host_threads()
    threads = max(s["threads"] for s in specs)
    load = load_during(host_load(cores, raw["loadavg_before"], INTERLEAVED_ADVICE),
                       host_load(cores, raw["loadavg_after"]), threads, raw["loop_seconds"], INTERLEAVED_ADVICE)
    ref = raw["files"][0]["samples_ms"]
    files = []
    for s, r in zip(specs, raw["files"]):
        files.append({"label": s["label"], "path": s["path"], "runtime": s["runtime"],
                      "device": r["device"], "threads": {"requested": s["threads_requested"], "used": s["threads"]},
                      "load_ms": r["load_ms"], "first_inference_ms": r["first_ms"],
                      "timing_ms": summarize(r["samples_ms"]),
                      "ratio": None if r is raw["files"][0] else ratio_spread(ref, r["samples_ms"], blocks, n_boot,
                                                                              seed),
                      "samples_ms": [round(x, 5) for x in r["samples_ms"]]})
    return {**base, "status": "ok", "error": None, "rounds": raw["rounds"], "warmup": raw["warmup"],
            "loop_seconds": raw["loop_seconds"], "files": files, "load": load, "versions": raw.get("versions", {})}


def _feeds_for(sess: Any, given: tuple[list[str], list[np.ndarray]] | None, hint: list[Any],
               seed: int) -> dict[str, np.ndarray]:
    """The inputs one session gets: given arrays by name (all present) or by position, else random feeds."""
    from ..runtimes import random_feeds, session_inputs

    if given is None:
        return random_feeds(session_inputs(sess), hint, seed=seed)
    names, arrays = given
    if names and all(n in names for n in sess.input_names):
        return {n: arrays[names.index(n)] for n in sess.input_names}
    if len(arrays) < len(sess.input_names):
        raise ValueError(f"{len(arrays)} input arrays given, the model takes {len(sess.input_names)} "
                         f"({', '.join(sess.input_names)})")
    return dict(zip(sess.input_names, arrays))


def run_interleaved(spec: dict[str, Any]) -> dict[str, Any]:
    """Worker side (inside `edgekit.profile._worker`): open, warm up, then the rotating timed loop."""
    from ._worker import _versions
    from .runinfo import load_average
    from ..runtimes import open_session

    given = None
    if spec.get("feeds"):
        with np.load(spec["feeds"]["file"]) as z:
            given = (spec["feeds"]["names"], [z[f"a{i}"] for i in range(spec["feeds"]["n"])])
    sessions, feeds, info = [], [], []
    for f in spec["files"]:
        t0 = time.perf_counter()
        try:
            s = open_session(Path(f["path"]), f["runtime"], threads=f["threads"], device=f["device"],
                             fallback=f["fallback"], ov_dynamic_quant=f["ov_dynamic_quant"], spin_stop=True)
            load_ms = (time.perf_counter() - t0) * 1e3
            fd = _feeds_for(s, given, f["input_hint"], spec["seed"])
            t0 = time.perf_counter()
            s.run(fd)
        except Exception as e:  # noqa: BLE001 - one line naming the file; no partial comparison
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            return {"status": "error", "error": f"{f['label']}: {type(e).__name__}: {msg}"}
        info.append({"load_ms": load_ms, "first_ms": (time.perf_counter() - t0) * 1e3,
                     "device": {"requested": f["device"], "used": s.device,
                                "fallback_used": bool(s.info.get("fallback_used", False))}})
        sessions.append(s)
        feeds.append(fd)
    for s, fd in zip(sessions, feeds):
        for _ in range(spec["warmup"]):
            s.run(fd)
    n = len(sessions)
    times: list[list[float]] = [[] for _ in range(n)]
    before = load_average()
    start = time.perf_counter()
    r = 0
    while r < spec["rounds"] or (time.perf_counter() - start < spec["min_seconds"] and r < spec["max_rounds"]):
        for j in range(n):
            i = (r + j) % n
            run, fd = sessions[i].run, feeds[i]
            t0 = time.perf_counter()
            run(fd)
            times[i].append((time.perf_counter() - t0) * 1e3)
        r += 1
    loop_s = time.perf_counter() - start
    return {"status": "ok", "error": None, "rounds": r, "warmup": spec["warmup"], "loop_seconds": loop_s,
            "loadavg_before": before, "loadavg_after": load_average(),
            "files": [{**i, "samples_ms": t} for i, t in zip(info, times)],
            "versions": {rt: _versions(rt) for rt in dict.fromkeys(f["runtime"] for f in spec["files"])}}


__all__ = ["interleaved", "ratio_spread", "summarize_interleaved"]
