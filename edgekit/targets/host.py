"""The `host` target: this machine's profile, detected when loaded (/proc/cpuinfo, core count), never hard-coded.

Why: a bundled YAML describing "this host" claimed Zen 3 / AVX2 / no AVX-512 while the machine it ran on had
AVX-512 VNNI and AMX; kernels (and so every host-calibrated estimate) depend on what the CPU really has.

Peak figures are **estimates** (the YAML `source` says so), from the detected ISA:

    fp32 GFLOP/s = lanes x 2 (FMA = 2 FLOP) x 2 FMA pipes x cores x GHz
    lanes        = SIMD width / 32: 16 with AVX-512F, 8 with AVX2 (or AVX), 4 with SSE or NEON
    int8 GOP/s   = 4 x fp32 with VNNI (avx512_vnni / avx_vnni / ARM dotprod: 4 int8 MACs per 32-bit lane),
                   else 2 x fp32 (AVX2 vpmaddubsw + vpmaddwd)
    bf16         = 2 x fp32 when avx512_bf16 (vdpbf16ps) is present
    GHz          = the "@ x.xxGHz" of the model name (nominal base clock), else "cpu MHz" of /proc/cpuinfo (the
                   kernel's reading: nominal in a VM, the current, possibly idle, clock on bare metal), else a
                   nominal 2.0 (the source string says which)

Decisions: two FMA pipes is what current server cores (Zen 3/4, Xeon Gold/Platinum, Neoverse) have; Zen 4 runs
AVX-512 as 2 x 256 bit, so its fp32 peak is overstated 2x. AMX is listed in `isa` but not counted in the peak:
the runtimes use it only for some int8/bf16 kernels, and counting it would make every int8 estimate memory-bound.
Memory bandwidth is measured at load (best of 5 single-thread numpy copies of 32 MiB, read + write bytes; a
lower bound of what several cores reach), once per process.
The core count is the cores this process may use (affinity), which is what a measurement here gets.
"""
from __future__ import annotations

import functools
import os
import re
import time
from pathlib import Path
from typing import Any

from . import HOST_NAME
# ISA flags that change kernel choice, in report order (x86, then ARM)
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
             "avx_vnni", "amx_bf16", "amx_int8", "amx_tile", "asimd", "asimddp", "i8mm", "sve", "sve2")
_LABEL = {"sse4_2": "SSE4.2", "avx": "AVX", "avx2": "AVX2", "fma": "FMA", "avx512f": "AVX-512F",
          "avx512bw": "AVX-512BW", "avx512_vnni": "AVX-512 VNNI", "avx512_bf16": "AVX-512 BF16",
          "avx512_fp16": "AVX-512 FP16", "avx_vnni": "AVX-VNNI", "amx_bf16": "AMX-BF16", "amx_int8": "AMX-INT8",
          "amx_tile": "AMX-TILE", "asimd": "NEON", "asimddp": "dotprod", "i8mm": "i8mm", "sve": "SVE", "sve2": "SVE2"}
NOMINAL_GHZ = 2.0
FMA_PIPES = 2


def read_cpuinfo() -> str:
    """The text of /proc/cpuinfo, or '' where there is none (non-Linux)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """Model name, vendor, clock (MHz or None), the ISA flags we track (in ISA_FLAGS order) and the arch family."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            fields.setdefault(k.strip().lower(), v.strip())  # the first processor's block
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    model = fields.get("model name") or fields.get("hardware") or fields.get("cpu model") or ""
    if not model and "cpu part" in fields:
        model = f"ARM CPU part {fields['cpu part']}"
    mhz = None
    try:
        mhz = float(fields["cpu mhz"]) if fields.get("cpu mhz") else None
    except ValueError:
        pass
    arm = bool(flags & {"asimd", "neon", "fp"}) and "sse2" not in flags
    return {"model": model or "unknown CPU", "vendor": fields.get("vendor_id", ""), "mhz": mhz,
            "flags": [f for f in ISA_FLAGS if f in flags], "arch": "arm64" if arm else "x86-64"}


def isa_label(info: dict[str, Any]) -> str:
    """e.g. 'x86-64 AVX2 FMA AVX-512F AVX-512 VNNI AMX-INT8' (what Hardware.isa holds)."""
    return " ".join([info["arch"]] + [_LABEL[f] for f in info["flags"]])


def simd_lanes(flags: list[str]) -> int:
    """fp32 lanes of the widest vector unit the flags show."""
    if "avx512f" in flags:
        return 16
    if "avx2" in flags or "avx" in flags:
        return 8
    return 4


def clock_ghz(info: dict[str, Any]) -> tuple[float, str]:
    """(GHz, where it came from): the model name's '@ x GHz' (stable base clock), else cpuinfo's MHz, else nominal."""
    m = re.search(r"@\s*([\d.]+)\s*GHz", info.get("model", ""))
    if m:
        return float(m.group(1)), "GHz in the model name"
    if info.get("mhz"):
        return info["mhz"] / 1e3, "cpu MHz in /proc/cpuinfo"
    return NOMINAL_GHZ, f"nominal {NOMINAL_GHZ} GHz (no clock in /proc/cpuinfo)"


def peak_gflops(flags: list[str], cores: int, ghz: float) -> dict[str, float]:
    """Estimated peaks (module docstring formula), per precision."""
    fp32 = simd_lanes(flags) * 2 * FMA_PIPES * cores * ghz
    vnni = bool({"avx512_vnni", "avx_vnni", "asimddp"} & set(flags))
    out = {"fp32": round(fp32, 1), "int8": round(fp32 * (4 if vnni else 2), 1)}
    if "avx512_bf16" in flags:
        out["bf16"] = round(fp32 * 2, 1)
    return out


@functools.lru_cache(maxsize=1)
def copy_bandwidth_gbs(mib: int = 32, repeats: int = 5) -> float:
    """Best-of-`repeats` numpy copy bandwidth (read + write bytes), GB/s."""
    import numpy as np

    a = np.ones(mib * 2**20 // 8)
    b = np.empty_like(a)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t0)
    return round(2 * a.nbytes / best / 1e9, 1)


def _mem_total_mb() -> float:
    """MemTotal of /proc/meminfo in MB (4096 where unknown): the host's memory budget."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024, 0)
    except (OSError, ValueError, IndexError):
        pass
    return 4096.0


def usable_cores() -> int:
    """Cores this process may use (affinity-aware; os.cpu_count() elsewhere)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def host_profile(cpuinfo: str | None = None, cores: int | None = None,
                 mem_bandwidth_gbs: float | None = None) -> Any:
    """TargetProfile `host` for this machine (or for the given cpuinfo text / cores / bandwidth, for tests)."""
    from . import TargetProfile

    info = parse_cpuinfo(read_cpuinfo() if cpuinfo is None else cpuinfo)
    cores = cores or usable_cores()
    ghz, ghz_src = clock_ghz(info)
    bw = mem_bandwidth_gbs or copy_bandwidth_gbs()
    peaks = peak_gflops(info["flags"], cores, ghz)
    isa = isa_label(info)
    return TargetProfile(
        name=HOST_NAME, description=f"This machine, detected at load: {info['model']}, {cores} cores, {isa}; "
        "ONNX Runtime", runtime="onnxruntime", device="CPU", threads=cores,
        precisions=[p for p in ("fp32", "bf16", "int8") if p in peaks], memory_budget_mb=_mem_total_mb(),
        round_to=simd_lanes(info["flags"]),
        hardware={"name": info["model"], "cores": cores, "isa": isa, "peak_gflops": peaks,
                  "mem_bandwidth_gbs": bw,
                  "source": f"detected from /proc/cpuinfo at load; peaks are estimates: lanes x 2 x {FMA_PIPES} "
                            f"FMA pipes x {cores} cores x {ghz:.2f} GHz ({ghz_src}), int8 x4 with VNNI else x2; "
                            f"bandwidth {bw} GB/s from a single-thread numpy copy at load (a lower bound)"})


__all__ = ["HOST_NAME", "ISA_FLAGS", "copy_bandwidth_gbs", "host_profile", "isa_label", "parse_cpuinfo",
           "peak_gflops", "read_cpuinfo", "simd_lanes", "usable_cores"]
