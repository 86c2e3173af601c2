"""Recipes (YAML -> Recipe) and the line-aware YAML loader shared by recipes and target profiles.

A recipe is a ready pipeline: a model source, methods applied in order, exports, and fidelity gates::

    model: demo                      # file, HF folder, artifact or 'demo'
    arch: nets.py:build              # for a state dict (optional), with arch_args: {width: 8}
    allow_class: [mypkg.nets.Net]    # a pickled module's own classes (optional; trust_pickle: true runs its code)
    input_shape: 1x1x8x8             # optional when the source knows it
    steps:
      - method: rtn
        options: {bits: 8}
    targets: [onnxruntime, openvino]  # runtimes or target profiles
    gates: {min_cosine: 0.99, min_top1_agreement: 0.95}
    out: out/recipe
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, Field, ValidationError

from .errors import ConfigError

M = TypeVar("M", bound=BaseModel)
MAX_YAML_BYTES = 1 << 20


class Step(BaseModel, extra="forbid"):
    """One method application."""

    method: str = Field(description="method name (see `edgekit methods`)")
    options: dict[str, Any] = Field(default_factory=dict, description="method options, as with --set")


class Gates(BaseModel, extra="forbid"):
    """Fidelity of the compressed model against the original on random inputs of the input spec."""

    min_cosine: float | None = Field(None, ge=-1, le=1, allow_inf_nan=False,
                                     description="lowest allowed output cosine similarity")
    min_top1_agreement: float | None = Field(None, ge=0, le=1, allow_inf_nan=False,
                                             description="lowest allowed top-1 agreement (classifiers)")
    samples: int = Field(32, ge=1, le=10000, description="random inputs used for the gates")


class Recipe(BaseModel, extra="forbid"):
    """A pipeline: model -> methods -> exports, with gates."""

    model: str = Field(description="model source")
    arch: str | None = Field(None, description="pkg.module:factory or path/to/file.py:factory for state dicts")
    arch_args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the arch factory")
    allow_class: list[str] = Field(default_factory=list, description="pickled classes to trust in model (as "
                                   "--allow-class: classes only, never from dangerous modules)")
    trust_pickle: bool = Field(False, description="unpickle model with arbitrary code execution (as --trust-pickle: "
                               "only for files you made yourself)")
    input_shape: str | None = Field(None, description="e.g. 1x3x224x224[:dtype]")
    data: str | None = Field(None, description="calibration data file, for methods that need it")
    steps: list[Step] = Field(default_factory=list, description="methods in order")
    targets: list[str] = Field(default_factory=list, description="runtimes or target profiles to export to")
    gates: Gates = Field(default_factory=Gates, description="fidelity gates")
    out: str = Field("out/recipe", description="artifact folder")
    keep_program: bool = Field(False, description="also keep model.pt2 (for a later LiteRT export or chaining)")


def load_yaml_model(path: Path, model: type[M], missing_hint: str = "add it") -> M:
    """Parse + validate a YAML file; every error becomes one line 'file:line: field: problem; fix'."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found; pass an existing YAML file")
    if path.stat().st_size > MAX_YAML_BYTES:
        raise ConfigError(f"{path} is {path.stat().st_size:,} bytes; a recipe/target YAML is at most "
                          f"{MAX_YAML_BYTES:,}; pass the right file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text; pass a YAML file") from None
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text)
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested too deeply; simplify it") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else "?"
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}:{line}: malformed YAML ({problem}); fix the syntax at that line") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: expected a YAML mapping of fields ({', '.join(model.model_fields)})")
    try:
        return model(**{str(k): v for k, v in data.items()})
    except ValidationError as e:
        err = sorted(e.errors(), key=lambda x: x["type"] != "extra_forbidden")[0]
        loc = list(err["loc"])
        field = ".".join(str(x) for x in loc) or "(root)"
        line = line_of(root, loc)
        if err["type"] == "extra_forbidden":
            msg = f"unknown field '{field}'; known fields here: {', '.join(known_fields(model, loc[:-1]))}"
        elif err["type"] == "missing":
            msg = f"missing field '{field}'; {missing_hint}"
        else:
            msg = f"field '{field}': {err['msg']}"
        raise ConfigError(f"{path}:{line}: {msg}") from None


def line_of(node: Any, loc: list[Any]) -> int:
    """1-based line of the deepest YAML key/item along a pydantic error location."""
    line = node.start_mark.line + 1 if node is not None else 1
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            hit = next(((k, v) for k, v in node.value if k.value == str(key)), None)
            if hit is None:
                break
            line, node = hit[0].start_mark.line + 1, hit[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            break
    return line


def known_fields(model: type[BaseModel], loc: list[Any]) -> list[str]:
    """Field names of the (nested) model at a location, for 'unknown field' hints."""
    for key in loc:
        if isinstance(key, int):
            continue
        f = model.model_fields.get(str(key))
        ann = getattr(f, "annotation", None)
        args = getattr(ann, "__args__", ()) or (ann,)
        sub = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if sub is None:
            break
        model = sub
    return list(model.model_fields)
