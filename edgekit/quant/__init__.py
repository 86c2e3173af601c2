"""The quantization contract between methods and export (below both; imports neither).

- `codes`: weight codes and storage kinds (a weight on its integer grid + scale/offset/axis, int8/int4 storage).
- `fp`: ExMy floating-point formats as integer codes times a unit (FP4/FP8 grids).
- `act`: activation-quantizer records for integer MatMul export.
- `precision`: the typed export precision that picks the validation tolerance.

Methods write these; exporters read them and never know which method produced them.
"""
from __future__ import annotations

from .act import ActQ, act_records, attach_act_records, int_matmul_records
from .codes import (WeightCode, attach_codes, clear_codes, get_codes, load_codes, save_codes,
                    symmetric_per_channel)
from .precision import PRECISIONS, Precision, loosest

__all__ = ["ActQ", "PRECISIONS", "Precision", "WeightCode", "act_records", "attach_act_records", "attach_codes",
           "clear_codes", "get_codes", "int_matmul_records", "load_codes", "loosest", "save_codes",
           "symmetric_per_channel"]
