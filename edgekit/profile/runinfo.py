"""Where a figure came from: `provenance(argv=None, threads=None)` and the host load around a measurement.

Every results document (profile.json, bench.json, benchmark results) records the exact command, the git commit
of the edgekit tree that ran (with a dirty flag), library versions, the CPU model and its ISA flags, the cores
this process may use, the threads asked for, the load average and a timestamp. Decisions:

- The commit is that of the repository holding the running edgekit package (benchmarks live in it), not of the
  current directory; an installed wheel has none (null).
- Load: Linux's 1-minute load average counts runnable threads, ours included. "High" means more than
  LOAD_HIGH (0.75) x cores of *other* work: before a run the load is all others'; after it, our own worker's
  threads are subtracted as threads x (1 - exp(-seconds / 60)) (the kernel's 1-minute exponential average), an
  estimate. A high load means absolute latencies are inflated by competition: compare ratios from one
  interleaved run (`edgekit.profile.interleaved`) instead.
"""
from __future__ import annotations

import math
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

LOAD_HIGH = 0.75
SINGLE_RUN_ADVICE = "compare ratios from one interleaved run (edgekit profile A B --target T)"
INTERLEAVED_ADVICE = "the ratios, paired round by round, are less affected"


def load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):  # pragma: no cover - Windows
        return None


def _warning(load: float, cores: int, when: str, advice: str) -> str:
    """The one-line warning shown next to absolute figures."""
    return (f"host load average {load:.2f} on {cores} cores {when} (> {LOAD_HIGH} x cores): other work competed "
            f"for the CPU, absolute latencies are inflated; {advice}")


def host_load(cores: int | None = None, loadavg: Sequence[float] | None = None,
              advice: str = SINGLE_RUN_ADVICE) -> dict[str, Any]:
    """A load snapshot (now, or of a given `loadavg` reading): {"loadavg": [1m, 5m, 15m], "cores", "high",
    "warning"}; taken before a run, all of it is others' load."""
    from ..targets.host import usable_cores

    cores = cores or usable_cores()
    la = list(loadavg) if loadavg is not None else load_average()
    high = bool(la and la[0] > LOAD_HIGH * cores)
    return {"loadavg": la, "cores": cores, "high": high,
            "warning": _warning(la[0], cores, "before the run", advice) if high and la else None}


def load_during(before: dict[str, Any], after: dict[str, Any], threads: int, seconds: float,
                advice: str = SINGLE_RUN_ADVICE) -> dict[str, Any]:
    """Load around one measurement: before/after snapshots, others' load after (estimate), high flag, warning."""
    cores = before["cores"]
    out: dict[str, Any] = {"loadavg_before": before["loadavg"], "loadavg_after": after["loadavg"], "cores": cores,
                           "threads": threads, "seconds": round(seconds, 2), "others_after_est": None,
                           "high": bool(before["high"]), "warning": before["warning"]}
    if after["loadavg"]:
        own = threads * (1 - math.exp(-max(seconds, 0.0) / 60))
        others = max(0.0, after["loadavg"][0] - own)
        out["others_after_est"] = round(others, 2)
        if not out["high"] and others > LOAD_HIGH * cores:
            out["high"] = True
            out["warning"] = _warning(others, cores, "during the run (ours subtracted, estimate)", advice)
    return out


def git_state(root: str | Path | None = None) -> dict[str, Any] | None:
    """{"commit", "dirty"} of the git repository holding `root`, else None. Default: the checkout the running
    edgekit package sits in (its top level must hold the package: an installed wheel inside some other repository,
    e.g. a project's .venv, has no commit of ours)."""
    own = root is None
    root = Path(root) if root else Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return r.stdout if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    top = git("rev-parse", "--show-toplevel")
    if not commit or (own and (not top or Path(top.strip()).resolve() != root.resolve())):
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit.strip(), "dirty": None if status is None else bool(status.strip())}


def provenance(argv: Sequence[str] | None = None, threads: int | None = None) -> dict[str, Any]:
    """The record every results entry carries (module docstring); `argv` defaults to this process's sys.argv."""
    from ..artifact import library_versions, now_iso
    from ..targets.host import parse_cpuinfo, read_cpuinfo, usable_cores

    argv = [str(a) for a in (sys.argv if argv is None else argv)]
    cpu = parse_cpuinfo(read_cpuinfo())
    cores = usable_cores()
    return {"argv": argv, "command": shlex.join(argv), "cwd": os.getcwd(), "git": git_state(),
            "versions": library_versions(), "cpu": cpu["model"] if cpu["model"] != "unknown CPU"
            else (platform.processor() or platform.machine()), "isa": cpu["flags"], "cores": cores,
            "cpu_count": os.cpu_count(), "threads": threads, "load": host_load(cores), "timestamp": now_iso(),
            "python": sys.version.split()[0], "platform": platform.platform()}


__all__ = ["LOAD_HIGH", "git_state", "host_load", "load_average", "load_during", "provenance"]
