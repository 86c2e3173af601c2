"""Ray sweep benchmark (issue 20): the same 6-variant x 2-target bench on a local Ray instance with 1 vs 2 worker
slots, and the local executor for the Ray overhead per task. Public CLI only (`edgekit bench`), one subprocess per
run; every run's exact command, wall-clock seconds and the host's load average before/after are recorded in
benchmarks/results/ray_sweep.json with edgekit's provenance.

    python benchmarks/ray_sweep.py [--repeats 1]

Variants: fp32 + rtn, magnitude, udfc, denseshift (data-free) and llm_fp4 (calibration: a seeded random .npy of the
model's input shape). Targets: x86-avx2-ort and intel-cpu-openvino with a shortened measuring protocol (written as
YAML copies of the bundled profiles), so that the sweep is dominated by the build tasks that Ray spreads. No node of
a local instance advertises a target, so every profile is the fallback on this host (serial, after the builds, in
every run), and only the 6 build tasks are Ray tasks: wall(1 worker) / wall(2 workers) shows what a second worker
buys, and (wall(ray, 1 worker) - wall(local)) / 6 is Ray's overhead per task (start of the instance and workers
included). bench.json's executor.seconds splits each Ray run into start / build / profiles / stop, so the build
phase (the part Ray spreads) has its own 1-vs-2 ratio. On a 2-core shared box the 2-worker figure is bounded by the cores other jobs leave; the load average
is recorded with every run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "ray_sweep.json"
METHODS = "rtn,magnitude,udfc,denseshift,llm_fp4"
TARGETS = ("x86-avx2-ort", "intel-cpu-openvino")


def _targets(tmp: Path) -> list[Path]:
    """YAML copies of the bundled target profiles with a short protocol (same for every run)."""
    import yaml

    from edgekit.targets import load_target

    out = []
    for name in TARGETS:
        t = load_target(name).model_dump()
        t["protocol"].update(warmup=3, min_runs=20, min_seconds=0.3, max_repeats=0, profile_runs=3)
        p = tmp / f"{name}.yaml"
        p.write_text(yaml.safe_dump(t, sort_keys=False))
        out.append(p)
    return out


def _data(tmp: Path) -> Path:
    """Seeded random calibration inputs of the demo model's input shape."""
    import numpy as np

    from edgekit import load_model

    shape = list(load_model("demo").inputs[0].shape)
    p = tmp / "calib.npy"
    np.save(p, np.random.default_rng(0).standard_normal([32] + shape[1:]).astype("float32"))
    return p


def _run(cmd: list[str], out: Path) -> dict:
    """One `edgekit bench` subprocess: wall seconds, load around it, statuses of its rows."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    la0, t0 = os.getloadavg(), time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}): {res.stdout[-2000:]}{res.stderr[-2000:]}")
    doc = json.loads((out / "bench.json").read_text())
    rows = [{"variant": r["variant"], "target": r["target"], "status": r["status"], "p50_ms": r["p50_ms"],
             "fidelity": (r.get("fidelity") or {}).get("value"),
             "profile_mode": ((r.get("placement") or {}).get("profile") or {}).get("mode"),
             "build_pid": ((r.get("placement") or {}).get("build") or {}).get("pid")} for r in doc["rows"]]
    return {"command": " ".join(cmd), "wall_s": round(wall, 2), "loadavg_before": la0, "loadavg_after":
            os.getloadavg(), "rows": rows, "executor": doc.get("executor")}


def _write(res: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmpf = RESULTS.with_suffix(".json.tmp")
    tmpf.write_text(json.dumps(res, indent=1, default=str))
    tmpf.replace(RESULTS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=1)
    a = ap.parse_args()
    from edgekit.profile import provenance

    exe = str(Path(sys.executable).with_name("edgekit"))
    runs: dict[str, list] = {"local": [], "ray_1_worker": [], "ray_2_workers": []}
    with tempfile.TemporaryDirectory(prefix="ray-sweep-") as d:
        tmp = Path(d)
        tg = _targets(tmp)
        data = _data(tmp)
        for i in range(a.repeats):
            for key, extra in (("local", []), ("ray_1_worker", ["--executor", "ray", "--workers", "1"]),
                               ("ray_2_workers", ["--executor", "ray", "--workers", "2"])):
                out = tmp / f"{key}-{i}"
                cmd = [exe, "bench", "demo", "--methods", METHODS, "--data", str(data), "-o", str(out),
                       *[x for p in tg for x in ("--target", str(p))], *extra]
                runs[key].append(_run(cmd, out))
                print(f"{key}: {runs[key][-1]['wall_s']} s (load {runs[key][-1]['loadavg_before'][0]:.1f})",
                      flush=True)
    best = {k: min(r["wall_s"] for r in v) for k, v in runs.items()}
    phases = {k: [(r["executor"] or {}).get("seconds") for r in v] for k, v in runs.items() if k != "local"}
    n_tasks = len(METHODS.split(",")) + 1
    res = {"what": "6-variant x 2-target bench of the demo CNN: local executor vs a local Ray instance with 1 and 2 "
                   "worker slots (all profiles fall back to this host: no device node)",
           "variants": ["fp32", *METHODS.split(",")], "targets": list(TARGETS), "runs": runs, "best_wall_s": best,
           "ratio_1_over_2_workers": round(best["ray_1_worker"] / best["ray_2_workers"], 3),
           "ray_overhead_per_task_s": round((best["ray_1_worker"] - best["local"]) / n_tasks, 2),
           "ray_tasks_per_run": n_tasks, "ray_phase_seconds": phases,
           "build_phase_ratio_1_over_2_workers": round(min(p["build"] for p in phases["ray_1_worker"]) / min(
               p["build"] for p in phases["ray_2_workers"]), 3), "cores": os.cpu_count(),
           "provenance": provenance(threads=1)}
    _write(res)
    print(json.dumps({k: res[k] for k in ("best_wall_s", "ratio_1_over_2_workers", "build_phase_ratio_1_over_2_workers",
                                          "ray_overhead_per_task_s", "ray_phase_seconds")}))


if __name__ == "__main__":
    main()
