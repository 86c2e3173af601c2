"""MethodReport: what a method changed, in one structure shared by every method."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..quant.precision import Precision


@dataclass
class MethodReport:
    """Parameters/FLOPs before and after, bits per weight, touched and skipped layers, timing, extras.

    `export_precision` picks the validation tolerance of every export (act_quant for quantized activations).
    """

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
    export_precision: Precision = "fp32"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict for the manifest."""
        return asdict(self)
