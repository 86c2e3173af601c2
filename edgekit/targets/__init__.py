"""Target hardware profiles: YAML data (bundled next to this file, or any user path) -> validated `TargetProfile`.

A profile says how to run a model for a device on this host (runtime, device, fallback, threads), what the device
can do (precisions, static shapes, memory budget, hardware figures for estimates, a channel-multiple hint) and how
to measure (`MeasureProtocol`). Errors name the file, the line and the field in one line.

`host` is not a YAML: it is this machine, detected from /proc/cpuinfo when loaded (`edgekit.targets.host`), and
the default calibration point of host-calibrated estimates (`host_target()`).
"""
from __future__ import annotations

import difflib
import functools
import os
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, model_validator

from ..errors import ConfigError

HOST_NAME = "host"

Runtime = Literal["onnxruntime", "openvino", "tflite"]
Device = Literal["CPU", "NPU", "GPU"]
Precision = Literal["fp32", "fp16", "bf16", "int8", "int4"]
HOST_ENV = "EDGEKIT_HOST_TARGET"
DEFAULT_HOST = "host"  # detected at load (edgekit.targets.host), never a hard-coded ISA


class MeasureProtocol(BaseModel):
    """How latency is measured, so that every number in a report comes from the same fixed procedure."""

    model_config = ConfigDict(extra="forbid")
    warmup: int = Field(10, ge=0, le=100_000, description="untimed runs after the first inference")
    min_runs: int = Field(50, ge=3, le=1_000_000, description="timed runs per attempt, at least")
    min_seconds: float = Field(2.0, ge=0, le=3600, allow_inf_nan=False, description="timed seconds per attempt, at least")
    max_cv: float = Field(0.10, gt=0, le=10, allow_inf_nan=False, description="robust coefficient of variation above which an attempt is noisy")
    max_repeats: int = Field(2, ge=0, le=100, description="extra attempts when noisy, before marking the result unstable")
    profile_runs: int = Field(20, ge=0, le=100_000, description="runs under the per-op profiler (separate from timing); 0 = off")


class Hardware(BaseModel):
    """Published figures of the real device, used only for labelled estimates."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="device / SoC name")
    cores: int = Field(ge=1, le=100_000, description="cores (or compute engines) of the device")
    isa: str = Field(description="instruction set / accelerator generation")
    peak_gflops: dict[Precision, FiniteFloat] = Field(description="peak GFLOP/s (GOP/s for int) at the profile's threads")
    mem_bandwidth_gbs: float = Field(gt=0, allow_inf_nan=False, description="peak DRAM bandwidth in GB/s")
    source: str = Field(description="where the figures come from (details in the YAML comment)")

    @model_validator(mode="after")
    def _positive_peaks(self) -> "Hardware":
        """A zero or missing peak would make every estimate infinite."""
        if not self.peak_gflops or any(v <= 0 for v in self.peak_gflops.values()):
            raise ValueError("peak_gflops needs at least one precision with a positive value")
        return self


class TargetProfile(BaseModel):
    """One deployment target: runtime + device on this host, device figures, and the measuring protocol."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$",
                      description="profile name, as used on the command line (also a folder name in bench)")
    description: str = Field(description="one line shown by `edgekit targets list`")
    runtime: Runtime = Field(description="runtime that executes the model")
    device: Device = Field("CPU", description="device requested from the runtime")
    fallback: Device | None = Field(None, description="device used when `device` is absent (reported as fallback)")
    threads: int = Field(ge=1, le=4096, description="inference threads on the target")
    precisions: list[Precision] = Field(min_length=1, description="compute precisions the target supports")
    static_shapes: bool = Field(False, description="the device compiler needs fully static input shapes")
    memory_budget_mb: float = Field(gt=0, allow_inf_nan=False, description="memory a model may use (measured peak RSS above baseline)")
    round_to: int = Field(1, ge=1, le=1024, description="channel multiple that maps well to the SIMD width / MAC array")
    hardware: Hardware
    protocol: MeasureProtocol = Field(default_factory=MeasureProtocol)

    @model_validator(mode="after")
    def _device_for_runtime(self) -> "TargetProfile":
        """Only OpenVINO picks devices; LiteRT and ONNX Runtime profiles run on CPU here."""
        if self.runtime != "openvino" and self.device != "CPU":
            raise ValueError(f"runtime {self.runtime} runs on CPU only here; set device: CPU")
        return self


def _bundled() -> dict[str, Path]:
    """Bundled profile name -> YAML path."""
    root = resources.files(__name__)
    return {Path(str(p)).stem: Path(str(p)) for p in root.iterdir() if str(p).endswith(".yaml")}


def list_targets() -> list[TargetProfile]:
    """All bundled profiles plus the detected `host`, sorted by name."""
    return sorted([_load_file(p) for p in _bundled().values()] + [_host()], key=lambda t: t.name)


def target_names() -> list[str]:
    """Names of the bundled profiles and `host`."""
    return sorted([*_bundled(), HOST_NAME])


@functools.lru_cache(maxsize=1)
def _detected_host() -> TargetProfile:
    """This machine's profile, detected once per process (the bandwidth measurement takes ~50 ms)."""
    from .host import host_profile

    return host_profile()


def _host() -> TargetProfile:
    """A copy of the detected host profile (callers may model_copy/update it)."""
    return _detected_host().model_copy(deep=True)


def load_target(name_or_path: str | Path | TargetProfile) -> TargetProfile:
    """A profile by bundled name or YAML path; unknown names get 'did you mean' and the list."""
    if isinstance(name_or_path, TargetProfile):
        return name_or_path
    s = str(name_or_path)
    if s == HOST_NAME:
        return _host()
    bundled = _bundled()
    if s in bundled:
        return _load_file(bundled[s])
    p = Path(s)
    if p.suffix in (".yaml", ".yml") or os.sep in s:
        if not p.is_file():
            raise ConfigError(f"target file {p} not found; pass a bundled name ({', '.join(sorted(bundled))}) "
                              "or an existing .yaml path")
        return _load_file(p)
    known = sorted([*bundled, HOST_NAME])
    close = difflib.get_close_matches(s, known, n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"unknown target '{s}'.{hint} Known: {', '.join(known)} "
                      "(or pass a .yaml path; see `edgekit targets list`)")


def host_target() -> TargetProfile:
    """The profile describing this host: env EDGEKIT_HOST_TARGET (a name or .yaml), default `host`, detected from
    /proc/cpuinfo at load so it never claims an ISA the machine lacks (edgekit.targets.host)."""
    return load_target(os.environ.get(HOST_ENV, DEFAULT_HOST))


def _load_file(path: Path) -> TargetProfile:
    """Parse + validate one YAML file; every error becomes 'file:line: field: problem; fix' (edgekit.config)."""
    from ..config import load_yaml_model

    return load_yaml_model(path, TargetProfile,
                           missing_hint=f"see a bundled profile, e.g. `edgekit targets show {DEFAULT_HOST}`")


__all__ = ["Hardware", "MeasureProtocol", "TargetProfile", "host_target", "list_targets", "load_target",
           "target_names"]
