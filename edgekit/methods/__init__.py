"""METHODS table: method name -> module path, imported lazily so a method's heavy imports cost nothing until used.

Each method module defines ``Config`` (pydantic, extra="forbid", every field defaulted and described),
``NEEDS`` ("none" | "calibration" | "training"), ``SUMMARY`` (one line) and
``apply(model, cfg, data) -> (model, MethodReport)``.
"""
from __future__ import annotations

import difflib
import importlib
from types import ModuleType

from ..errors import ConfigError
from ._report import MethodReport

METHODS: dict[str, str] = {
    "rtn": "edgekit.methods.baseline_rtn",
    "magnitude": "edgekit.methods.baseline_magnitude",
    "udfc": "edgekit.methods.udfc",
    "llm_fp4": "edgekit.methods.llm_fp4",
    "optin": "edgekit.methods.optin",
    "structured_ffn": "edgekit.methods.structured_ffn",
    "denseshift": "edgekit.methods.denseshift",
}


def get_method(name: str) -> ModuleType:
    """Import a method module by name; unknown names get a 'did you mean' error."""
    if name not in METHODS:
        close = difflib.get_close_matches(name, METHODS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown method '{name}'.{hint} Known: {', '.join(sorted(METHODS))} (see `edgekit methods`)")
    return importlib.import_module(METHODS[name])


def parse_config(module: ModuleType, values: dict) -> object:
    """Build a method's Config from --set values, turning validation errors into one-line ConfigErrors."""
    from pydantic import ValidationError

    try:
        return module.Config(**values)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"])
        known = ", ".join(module.Config.model_fields)
        raise ConfigError(f"method option '{field}': {err['msg']} (options: {known})") from None


__all__ = ["METHODS", "MethodReport", "get_method", "parse_config"]
