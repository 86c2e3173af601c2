"""Latency and memory of one model file, measured in a fresh subprocess under a target's fixed protocol.

Why a subprocess: the parent has torch and other sessions loaded, which would pollute peak RSS and compete for
cores; a fresh interpreter per measurement gives each runtime the same clean start.

Peak RSS: on Linux the worker reads the kernel's high-water mark (VmHWM in /proc/self/status) and resets it by
writing "5" to /proc/self/clear_refs between phases, so the load peak and the inference peak are exact and
separate, and no sampling thread competes with the timed runs. ru_maxrss cannot be reset, so it could not separate
the phases. Elsewhere a psutil sampling thread (2 ms) stands in, and the result says which method was used.

Noise gate: timing attempts repeat (at most protocol.max_repeats more) while the robust CV
(1.4826 x MAD / median, equal to std/mean for normal noise but blind to rare pre-emption spikes, which show in p99)
exceeds protocol.max_cv; the least noisy attempt is kept; if it is still noisy the result is marked unstable.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..targets import MeasureProtocol

N_QUANTILES = 101
WORKER_TIMEOUT_S = 900


def summarize(samples_ms: list[float] | np.ndarray) -> dict[str, Any]:
    """Latency statistics of one attempt (ms), including the quantiles used for distribution plots."""
    a = np.asarray(samples_ms, dtype=np.float64)
    med = float(np.median(a))
    mean = float(a.mean())
    std = float(a.std(ddof=1)) if a.size > 1 else 0.0
    mad = float(np.median(np.abs(a - med)))
    return {"min": float(a.min()), "p50": med, "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "mean": mean, "std": std,
            "cv": std / mean if mean > 0 else 0.0, "robust_cv": 1.4826 * mad / med if med > 0 else 0.0,
            "runs": int(a.size), "seconds": float(a.sum() / 1e3),
            "quantiles_ms": [round(float(q), 5) for q in np.percentile(a, np.linspace(0, 100, N_QUANTILES))]}


def time_protocol(run: Callable[[], Any], protocol: MeasureProtocol,
                  clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """Warm up, then time attempts of >= min_runs and >= min_seconds until the noise gate passes (bounded)."""
    for _ in range(protocol.warmup):
        run()
    attempts = []
    for _ in range(1 + protocol.max_repeats):
        samples: list[float] = []
        start = clock()
        while len(samples) < protocol.min_runs or clock() - start < protocol.min_seconds:
            t0 = clock()
            run()
            samples.append((clock() - t0) * 1e3)
        attempts.append(summarize(samples))
        if attempts[-1]["robust_cv"] <= protocol.max_cv:
            break
    best = min(attempts, key=lambda s: s["robust_cv"])
    return {"warm": best, "stable": best["robust_cv"] <= protocol.max_cv,
            "attempts": [{k: s[k] for k in ("p50", "cv", "robust_cv", "runs")} for s in attempts]}


class PeakRSS:
    """Peak resident memory of this process per phase: kernel high-water mark if resettable, else sampling."""

    def __init__(self) -> None:
        self.method = "VmHWM+clear_refs" if self._can_reset() else "psutil-sampling-2ms"
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self.method.startswith("psutil"):
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    @staticmethod
    def _status(field: str) -> int:
        """A VmXXX field of /proc/self/status in bytes."""
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(field)

    def _can_reset(self) -> bool:
        """True when the kernel lets us reset the high-water mark (Linux >= 4.0)."""
        try:
            self._status("VmHWM")
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False
        except KeyError:
            return False

    def _sample(self) -> None:
        """Background sampler for platforms without a resettable high-water mark."""
        import psutil

        proc = psutil.Process()
        while not self._stop.is_set():
            self._peak = max(self._peak, proc.memory_info().rss)
            time.sleep(0.002)

    def current_mb(self) -> float:
        """Resident memory now."""
        if self.method.startswith("VmHWM"):
            return self._status("VmRSS") / 2**20
        import psutil

        return psutil.Process().memory_info().rss / 2**20

    def reset(self) -> None:
        """Start a new phase: the peak restarts from the current RSS."""
        if self.method.startswith("VmHWM"):
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        else:
            self._peak = 0

    def peak_mb(self) -> float:
        """Peak resident memory since the last reset."""
        if self.method.startswith("VmHWM"):
            return self._status("VmHWM") / 2**20
        return max(self._peak, int(self.current_mb() * 2**20)) / 2**20

    def close(self) -> None:
        """Stop the sampler thread, if any."""
        self._stop.set()


def host_threads() -> int:
    """Cores this process may use (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


PARENT_ENV = "EDGEKIT_WORKER_PARENT"


def die_with_parent() -> None:
    """Called by the worker itself at start (Linux): get SIGKILL when the parent dies, so a killed `edgekit profile`
    leaves no orphan; exit at once if the parent is already gone. Done in the worker rather than as a subprocess
    `preexec_fn`, which runs Python between fork and exec, where a multithreaded parent (JAX, TensorFlow, torch
    threads) can deadlock the child on a lock another thread held at fork time."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    want = os.environ.get(PARENT_ENV)
    if want and want.isdigit() and os.getppid() != int(want):  # the parent died before prctl took effect
        os._exit(1)


def worker_env() -> dict[str, str]:
    """The environment of a measuring worker: edgekit importable, the parent's pid for die_with_parent."""
    env = dict(os.environ)
    pkg_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env[PARENT_ENV] = str(os.getpid())
    return env


def measure_file(path: Path, runtime: str, *, device: str = "CPU", fallback: str | None = None,
                 threads: int = 1, protocol: MeasureProtocol | None = None, input_hint: list[dict] | None = None,
                 static_shapes: bool = False, timeout_s: float = WORKER_TIMEOUT_S,
                 ov_dynamic_quant: bool = False) -> dict[str, Any]:
    """Run the worker subprocess for one file; returns its JSON result plus the subprocess overhead.
    `ov_dynamic_quant`: open an OpenVINO file with its dynamic activation quantization on (as the artifact was
    validated; edgekit.runtimes.ov_dynamic_quant)."""
    protocol = protocol or MeasureProtocol()
    used_threads = max(1, min(threads, host_threads()))
    spec = {"path": str(Path(path).resolve()), "runtime": runtime, "device": device, "fallback": fallback,
            "threads": used_threads, "threads_requested": threads, "protocol": protocol.model_dump(),
            "input_hint": input_hint or [], "static_shapes": static_shapes, "ov_dynamic_quant": ov_dynamic_quant}
    env = worker_env()
    with tempfile.TemporaryDirectory(prefix="edgekit-measure-") as tmp:
        spec_p, out_p = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_p.write_text(json.dumps(spec))
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, "-m", "edgekit.profile._worker", str(spec_p), str(out_p)],
                                  cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"status": "error", "error": f"measurement exceeded {timeout_s:.0f} s; lower protocol.min_runs "
                    "or min_seconds in the target profile"}
        wall = time.perf_counter() - t0
        if not out_p.is_file():
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()
            return {"status": "error", "error": f"worker crashed (exit {proc.returncode}): "
                    f"{tail[-1] if tail else 'no output'}"}
        res = json.loads(out_p.read_text())
    res["subprocess"] = {"wall_s": wall, "worker_s": res.get("worker_s"),
                         "overhead_s": wall - res["worker_s"] if res.get("worker_s") is not None else None}
    return res
