"""Load a `.pt2` ExportedProgram without running code from the file.

`torch.export.load` is not safe on untrusted files: pickled weight/constant payloads and the sample inputs go
through `torch.load(weights_only=False)` (the latter as a fallback), custom objects through `pickle.loads`, the
guards are `exec`'d when the module is built, symbolic-shape expressions are parsed with `sympy.sympify` (which
evaluates Python), and a node's target may name any attribute reachable from `torch` (`torch.os.system`).

So before torch sees the archive we read it once into memory and check it, refusing (UnsafeModelError) unless the
user passed --trust-pickle:
- members: only the plain pt2 layout (version files, models/*.json, raw weight/constant payloads, their JSON
  configs, sample inputs); no AOTInductor libraries, extra files, custom objects, legacy pickled archives;
- payload configs: no pickled tensors; constants are plain tensors;
- the program JSON: node targets only `torch.ops.aten/prims.*` or a fixed set of `_operator`/`math` functions;
  every symbolic expression string is made of sympy constructors, symbol names, numbers and arithmetic;
  guards_code is empty;
- sample inputs load with torch's weights-only unpickler.
The load itself then runs on the same bytes with `torch.load` forced to weights_only=True and `pickle.loads`
disabled in torch's archive reader, as a second wall. Sizes are capped (zip bombs).
"""
from __future__ import annotations

import contextlib
import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any, Iterator

import torch

from .errors import ModelLoadError, UnsafeModelError

MAX_UNCOMPRESSED = 16 << 30  # 16 GiB of members in total
MAX_RATIO = 200  # uncompressed / compressed per member (weights are stored, not deflated)

_MEMBER_RES = [re.compile(p) for p in (
    r"archive_format", r"archive_version", r"byteorder", r"\.data/version", r"\.data/serialization_id",
    r"\.data/\.format_version", r"\.data/\.storage_alignment", r"models/\w+\.json",
    r"data/weights/\w+_weights_config\.json", r"data/weights/weight_\d+",
    r"data/constants/\w+_constants_config\.json", r"data/constants/tensor_\d+",
    r"data/sample_inputs/\w+\.pt",
)]
_OPERATOR_OK = {"getitem", "add", "sub", "mul", "truediv", "floordiv", "mod", "neg", "pow", "eq", "ne", "lt", "le",
                "gt", "ge", "and_", "or_", "not_", "abs", "pos"}
_MATH_OK = {"ceil", "floor", "sqrt", "trunc"}
_SYMPY_NAMES = {"Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Mod", "FloorDiv", "CeilDiv",
                "PythonMod", "ModularIndexing", "CleanDiv", "CeilToInt", "FloorToInt", "IntTrueDiv", "FloatTrueDiv",
                "TruncToInt", "TruncToFloat", "ToFloat", "Max", "Min", "Abs", "floor", "ceiling", "Eq", "Ne", "Lt",
                "Le", "Gt", "Ge", "And", "Or", "Not", "Where", "True", "False", "positive", "integer",
                "nonnegative", "real", "finite", "oo", "Identity", "RoundToInt", "RoundDecimal", "Piecewise"}
_EXPR_CHARS = re.compile(r"^[\w\s(),=+\-*/.<>!'%&|~]*$")


def _refuse(path: Path, why: str) -> UnsafeModelError:
    return UnsafeModelError(f"{path}: {why}; edgekit loads only plain torch.export programs without running code "
                            "from the file. If you made this file yourself, pass --trust-pickle")


def _check_target(path: Path, target: str) -> None:
    """Node targets: ATen/prims ops, or a few harmless operator/math functions (serde would resolve any
    `torch.<attr>...`, e.g. torch.os.system)."""
    if re.fullmatch(r"torch\.ops\.(aten|prims)\.\w+(\.\w+)?", target):
        return
    mod, _, fn = target.partition(".")
    if (mod == "_operator" and fn in _OPERATOR_OK) or (mod == "math" and fn in _MATH_OK):
        return
    raise _refuse(path, f"the program calls '{target}', which is not an ATen operator")


def _check_expr(path: Path, expr: str) -> None:
    """A symbolic-shape expression is evaluated by sympy.sympify: allow only sympy constructors and arithmetic."""
    bad = (not _EXPR_CHARS.match(expr) or "__" in expr or re.search(r"[A-Za-z_)\]]\s*\.\s*[A-Za-z_]", expr)
           or len(expr) > 2000)
    if not bad:
        stripped = re.sub(r"'[A-Za-z_]\w*'", "", expr)
        if "'" in stripped:
            bad = True
        else:
            names = set(re.findall(r"[A-Za-z_]\w*", re.sub(r"\d+(\.\d+)?(e[+-]?\d+)?", "", stripped)))
            bad = any(n not in _SYMPY_NAMES and not re.fullmatch(r"[a-z]+\d+", n) for n in names)
    if bad:
        raise _refuse(path, f"a symbolic-shape expression is not plain arithmetic ({expr[:80]!r})")


def _walk_program(path: Path, node: Any) -> None:
    """Check every target, operator argument and expression string in a serialized program."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("target", "as_operator") and isinstance(v, str):
                _check_target(path, v)
            elif k == "expr_str" and isinstance(v, str):
                _check_expr(path, v)
            elif k in ("as_custom_obj", "as_custom_objs", "as_opaque_obj"):
                raise _refuse(path, "the program holds custom objects")
            elif k == "guards_code" and v:
                raise _refuse(path, "the program carries guard code, which torch runs with exec")
            else:
                _walk_program(path, v)
    elif isinstance(node, list):
        for v in node:
            _walk_program(path, v)


def _check_payload_config(path: Path, raw: bytes, constants: bool) -> None:
    cfg = json.loads(raw)
    for fqn, meta in (cfg.get("config") or {}).items():
        if meta.get("use_pickle"):
            raise _refuse(path, f"'{fqn}' is stored as a pickle")
        if constants and not str(meta.get("path_name", "")).startswith("tensor_"):
            raise _refuse(path, f"constant '{fqn}' is not a plain tensor")


def check_archive(path: Path, data: bytes) -> None:
    """Raise UnsafeModelError/ModelLoadError unless `data` is a plain, code-free pt2 archive."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise ModelLoadError(f"{path} is not a valid .pt2 archive ({e}); re-export it with torch.export.save") from None
    roots = {i.filename.split("/", 1)[0] for i in infos}
    if len(roots) != 1 or not infos:
        raise ModelLoadError(f"{path} is not a torch.export archive (members under {len(roots)} roots)")
    root = roots.pop()
    total = 0
    for i in infos:
        rel = i.filename[len(root) + 1:]
        if i.is_dir() and rel in ("", "models/", "data/", "data/weights/", "data/constants/", ".data/"):
            continue
        if not any(r.fullmatch(rel) for r in _MEMBER_RES):
            raise _refuse(path, f"unexpected member '{rel}' (only plain programs and raw weights are accepted)")
        total += i.file_size
        if total > MAX_UNCOMPRESSED or (i.compress_size and i.file_size / i.compress_size > MAX_RATIO
                                        and i.file_size > (1 << 20)):
            raise ModelLoadError(f"{path}: archive member '{rel}' inflates far beyond its stored size; refusing it")
    names = {i.filename[len(root) + 1:] for i in infos}
    if "archive_format" not in names or zf.read(f"{root}/archive_format").strip() != b"pt2":
        raise ModelLoadError(f"{path} is not a current torch.export archive (old or foreign format); re-export it "
                             "with torch.export.save")
    try:
        for rel in sorted(names):
            if rel.startswith("models/") and rel.endswith(".json"):
                _walk_program(path, json.loads(zf.read(f"{root}/{rel}")))
            elif rel.endswith("_weights_config.json"):
                _check_payload_config(path, zf.read(f"{root}/{rel}"), constants=False)
            elif rel.endswith("_constants_config.json"):
                _check_payload_config(path, zf.read(f"{root}/{rel}"), constants=True)
            elif rel.startswith("data/sample_inputs/"):
                raw = zf.read(f"{root}/{rel}")
                if raw:
                    torch.load(io.BytesIO(raw), weights_only=True, map_location="cpu")
    except UnsafeModelError:
        raise
    except (ValueError, KeyError, AttributeError, RecursionError) as e:
        raise ModelLoadError(f"{path}: malformed program in the archive ({type(e).__name__}); re-export it") from None
    except Exception as e:  # the weights-only unpickler refused the sample inputs
        raise _refuse(path, f"its sample inputs need more than plain tensors ({str(e).splitlines()[0][:120]})") \
            from None


@contextlib.contextmanager
def _no_pickle() -> Iterator[None]:
    """While torch reads the archive: torch.load is weights-only and pickle.loads is unavailable to it."""
    from torch.export.pt2_archive import _package

    real_load = torch.load

    def weights_only_load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return real_load(*args, **kwargs)

    class _NoPickle:
        @staticmethod
        def loads(*_a: Any, **_k: Any) -> Any:
            raise UnsafeModelError("refused to unpickle an object from a .pt2 archive")

        def __getattr__(self, name: str) -> Any:
            import pickle

            return getattr(pickle, name)

    saved_pickle = _package.pickle
    torch.load, _package.pickle = weights_only_load, _NoPickle()
    try:
        yield
    finally:
        torch.load, _package.pickle = real_load, saved_pickle


def load_exported_program(path: Path, trust: bool = False) -> torch.export.ExportedProgram:
    """Read and check a .pt2 (refused unless plain; `trust` skips the checks) and return its ExportedProgram."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(f"{path} is not a valid .pt2 archive (truncated or wrong format); re-export it with "
                             "torch.export.save")
    if trust:
        return torch.export.load(str(path))
    data = path.read_bytes()
    check_archive(path, data)
    try:
        with _no_pickle():
            return torch.export.load(io.BytesIO(data))
    except UnsafeModelError:
        raise
    except Exception as e:
        raise ModelLoadError(f"{path} could not be loaded as an ExportedProgram ({str(e).splitlines()[0][:200]})") \
            from None
