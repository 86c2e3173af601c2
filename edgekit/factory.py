"""--arch factories: "pkg.mod:callable" (imported; "pkg.mod:Class.from_name" works) or "path/to/file.py:callable"
(that one file loaded by path with importlib.util.spec_from_file_location, so no PYTHONPATH is needed; its own
imports resolve as usual, so a file that imports its siblings needs them importable). --arch-args key=value are
passed as keyword arguments; a factory that needs arguments and gets none is a one-line error naming --arch-args
(checked with inspect.signature before the call). Names from dangerous modules are refused (edgekit.safety), by
name before any import and again after resolution. A factory may also be a model source on its own.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from .errors import ConfigError


def is_factory_ref(text: str) -> bool:
    """'pkg.mod:callable' or 'path/to/file.py:callable' (what --arch takes, and what a source may be)."""
    import re

    mod, sep, attr = str(text).partition(":")
    return bool(sep and attr and (mod.endswith(".py") or re.fullmatch(r"[A-Za-z_][\w.]*", mod)))


def import_factory(arch: str) -> Any:
    """The callable named by --arch: 'pkg.mod:callable' is imported; 'path/to/file.py:callable' loads that file as a
    module (importlib.util.spec_from_file_location, registered under a private name so its classes pickle/export).
    Names from dangerous modules are refused before anything is imported, and again after resolution (a file's
    'os.system' attribute is the same function as 'os:system')."""
    from .safety import is_dangerous

    mod, sep, attr = arch.partition(":")
    if sep and mod.endswith(".py"):
        obj = _import_file_object(Path(mod), attr, arch)
    else:
        from .model_io import _import_object

        obj = _import_object(arch)
    owner = getattr(obj, "__module__", None)
    if isinstance(owner, str) and is_dangerous(f"{owner}.{getattr(obj, '__qualname__', '')}"):
        raise ConfigError(f"--arch {arch} resolves to {owner}.{getattr(obj, '__qualname__', '?')}, from a module "
                          "that can run commands or import code; pass your own model factory")
    if not callable(obj):
        raise ConfigError(f"--arch {arch} is a {type(obj).__name__}, not a callable that builds a model")
    return obj


def _import_file_object(path: Path, attr: str, arch: str) -> Any:
    """Load one local module file by path and return its attribute `attr` (dotted for Class.from_name)."""
    import hashlib
    import importlib.util
    import sys

    if not attr:
        raise ConfigError(f"--arch {arch}: name the callable after the colon, e.g. {path}:build")
    if not path.is_file():
        raise ConfigError(f"--arch {arch}: {path} does not exist; pass path/to/file.py:factory or pkg.module:factory")
    tag = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:10]
    name = f"_edgekit_arch_{path.stem.replace('-', '_')}_{tag}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"--arch {arch}: {path} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        obj: Any = module
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj
    except AttributeError as e:
        raise ConfigError(f"--arch {arch}: {path} has no '{attr}' ({e}); check the name after the colon") from None
    except Exception as e:  # the user's module failed at import: one line, -v shows where
        sys.modules.pop(name, None)
        raise ConfigError(f"--arch {arch}: importing {path} failed ({type(e).__name__}: {str(e)[:160]})") from e


def build_from_factory(arch: str, arch_args: dict[str, Any] | None = None) -> nn.Module:
    """Call the --arch factory with --arch-args as keyword arguments; missing or unknown arguments are one line."""
    import inspect

    factory = import_factory(arch)
    kwargs = dict(arch_args or {})
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins/C callables have no signature: just call
        sig = None
    if sig is not None:
        try:
            sig.bind(**kwargs)
        except TypeError as e:
            need = [n for n, p in sig.parameters.items() if p.default is p.empty and n not in kwargs
                    and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
            has_var = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
            unknown = [k for k in kwargs if k not in sig.parameters and not has_var]
            if need:
                raise ConfigError(f"--arch {arch} needs argument{'s' if len(need) > 1 else ''} "
                                  f"{', '.join(need)}; pass {'them' if len(need) > 1 else 'it'} with "
                                  + " ".join(f"--arch-args {n}=VALUE" for n in need)
                                  + (f" (it takes no {', '.join(unknown)})" if unknown else "")) from None
            raise ConfigError(f"--arch-args do not fit {arch}{sig} ({e}); check the names") from None
    try:
        model = factory(**kwargs)
    except Exception as e:  # the user's factory: its failure is a one-line error, -v shows the traceback
        raise ConfigError(f"--arch {arch}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) failed "
                          f"({type(e).__name__}: {str(e)[:160]}); check --arch-args") from e
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--arch {arch} returned {type(model).__name__}, not an nn.Module")
    return model


__all__ = ["build_from_factory", "import_factory", "is_factory_ref"]
