"""The ground floor of model handling: input specs, example inputs and the loaded-model record.

Imported by model loading (model_io), Hugging Face loading (hf), export, eval and profiling; imports nothing of
edgekit but its errors, so none of those modules need each other for these types.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import ConfigError

MAX_INPUT_ELEMENTS = 1 << 27  # 512 MB of float32 per example input
DTYPES = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64, "int32": torch.int32,
           "uint8": torch.uint8, "bool": torch.bool}


@dataclass
class InputSpec:
    """One model input: name, static shape, dtype, dynamic axes and the value range used for example inputs."""

    name: str
    shape: list[int]
    dtype: str = "float32"
    dynamic: dict[int, str] = field(default_factory=dict)
    high: int | None = None  # exclusive upper bound for integer inputs (e.g. vocab size)

    def example(self, gen: torch.Generator) -> torch.Tensor:
        """A random example tensor of this spec (normal floats, integers in [0, high))."""
        dt = DTYPES[self.dtype]
        if dt.is_floating_point:
            return torch.randn(self.shape, generator=gen).to(dt)
        if self.name == "attention_mask":
            return torch.ones(self.shape, dtype=dt)
        if dt == torch.bool:
            return torch.randint(0, 2, self.shape, generator=gen).bool()
        return torch.randint(0, self.high or 100, self.shape, generator=gen, dtype=dt)

    def to_dict(self) -> dict[str, Any]:
        """Manifest form."""
        return asdict(self)


def parse_input_shape(text: str, dynamic: list[str] | None = None) -> list[InputSpec]:
    """'1x3x224x224[:dtype]' (comma-separated for several inputs) -> InputSpecs; --dynamic batch marks axis 0.

    '1,3,224,224' (every part a bare number) is refused: it is one shape written with commas, which would otherwise
    be read as four 1-D inputs and fail deep inside the model."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if len(parts) > 1 and all(p.isdigit() for p in parts):
        raise ConfigError(f"--input-shape '{text}' reads as {len(parts)} one-number inputs; dimensions are joined "
                          f"with x (write {'x'.join(parts)}), commas separate inputs")
    specs = []
    for i, part in enumerate(p for p in text.split(",") if p.strip()):
        shape_s, _, dtype = part.strip().partition(":")
        dtype = dtype or "float32"
        if dtype not in DTYPES:
            raise ConfigError(f"--input-shape '{part}': unknown dtype '{dtype}'; use one of {', '.join(DTYPES)}")
        try:
            shape = [int(d) for d in shape_s.lower().split("x")]
        except ValueError:
            raise ConfigError(f"--input-shape '{part}' is not like 1x3x224x224[:float32]") from None
        if not shape or any(d <= 0 for d in shape):
            raise ConfigError(f"--input-shape '{part}': dimensions must be positive")
        if len(shape) > 8 or math.prod(shape) > MAX_INPUT_ELEMENTS:
            raise ConfigError(f"--input-shape '{part}' has {math.prod(shape):,} elements in {len(shape)} dims; the "
                              f"limit is {MAX_INPUT_ELEMENTS:,} elements and 8 dims (an example input is built in "
                              "memory)")
        specs.append(InputSpec(f"input_{i}" if i else "input", shape, dtype))
    if not specs:
        raise ConfigError("--input-shape is empty; write e.g. 1x3x224x224")
    return mark_dynamic(specs, dynamic)


def mark_dynamic(specs: list[InputSpec], dynamic: list[str] | None) -> list[InputSpec]:
    """Apply --dynamic axes to specs in place (only 'batch', axis 0, is supported)."""
    for d in dynamic or []:
        if d != "batch":
            raise ConfigError(f"--dynamic '{d}' is not supported; only 'batch' is")
        for s in specs:
            s.dynamic[0] = "batch"
    return specs


def example_inputs(specs: list[InputSpec], seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Deterministic example inputs for a list of specs."""
    gen = torch.Generator().manual_seed(seed)
    return tuple(s.example(gen) for s in specs)


@dataclass
class LoadedModel:
    """A loaded model with what we know about its inputs."""

    module: nn.Module
    source: str
    kind: str
    inputs: list[InputSpec] | None = None
