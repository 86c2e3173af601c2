"""Export precision: which validation tolerance an export of a compressed model is judged by (a typed field)."""
from __future__ import annotations

from typing import Literal, get_args

Precision = Literal["fp32", "fp16", "int", "act_quant"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


def loosest(precisions) -> Precision:
    """The loosest precision of a chain of methods (act_quant > int > fp16 > fp32)."""
    ps = set(precisions)
    bad = ps - set(PRECISIONS)
    if bad:
        raise ValueError(f"unknown export precision {sorted(bad)}; choose from {', '.join(PRECISIONS)}")
    return next((p for p in ("act_quant", "int", "fp16") if p in ps), "fp32")
