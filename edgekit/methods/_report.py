"""MethodReport: what a method changed, in one structure shared by every method."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class MethodReport:
    """Parameters/FLOPs before and after, bits per weight, touched and skipped layers, timing, extras."""

    method: str
    params_before: int = 0
    params_after: int = 0
    macs_before: int = 0
    macs_after: int = 0
    bits_per_weight: float = 32.0
    layers_touched: list[str] = field(default_factory=list)
    layers_skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict for the manifest."""
        return asdict(self)
