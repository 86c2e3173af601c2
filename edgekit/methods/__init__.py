"""METHODS table: method name -> module path, imported lazily so a method's heavy imports cost nothing until used.

Each method is a package ``edgekit/methods/<name>/`` whose ``__init__`` defines ``Config`` (pydantic,
extra="forbid", every field defaulted and described), ``NEEDS`` ("none" | "calibration" | "training": the most it
can need), ``SUMMARY`` (one line), ``MODELS`` (the model families it applies to: "cnn", "encoder", "decoder"; the
contract test runs each method on a tiny model of each) and ``apply(model, cfg, data) -> (model, MethodReport)``; an
optional ``needs(cfg)`` says what data that configuration needs (default: NEEDS). Helpers shared by several methods
live in ``common.py``. tests/unit/test_method_contract.py holds every registered method to this.
"""
from __future__ import annotations

import difflib
import importlib
from types import ModuleType

from ..errors import ConfigError
from .common import MethodReport

METHODS: dict[str, str] = {
    "rtn": "edgekit.methods.rtn",
    "magnitude": "edgekit.methods.magnitude",
    "udfc": "edgekit.methods.udfc",
    "llm_fp4": "edgekit.methods.llm_fp4",
    "optin": "edgekit.methods.optin",
    "structured_ffn": "edgekit.methods.structured_ffn",
    "denseshift": "edgekit.methods.denseshift",
    "deft": "edgekit.methods.deft",
    "bipft": "edgekit.methods.bipft",
}


def get_method(name: str) -> ModuleType:
    """Import a method module by name; unknown names get a 'did you mean' error."""
    if name not in METHODS:
        close = difflib.get_close_matches(name, METHODS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown method '{name}'.{hint} Known: {', '.join(sorted(METHODS))} (see `edgekit methods`)")
    return importlib.import_module(METHODS[name])


def needs(module: ModuleType, cfg: object) -> str:
    """The data `cfg` needs ("none" | "calibration" | "training"): the method's needs(cfg), else its NEEDS."""
    fn = getattr(module, "needs", None)
    return fn(cfg) if fn is not None else module.NEEDS


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


__all__ = ["METHODS", "MethodReport", "get_method", "needs", "parse_config"]
