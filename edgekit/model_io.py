"""Safe model loading (untrusted by default), input specs and example inputs.

Sources: a pickled nn.Module in .pt/.pth (torch's weights_only unpickler; classes outside torch.nn/edgekit need
--allow-class or --trust-pickle), a state dict (.pt/.pth/.safetensors) plus --arch pkg.module:factory, a .pt2
ExportedProgram, a Hugging Face folder (local only, never remote code), an artifact, a factory on its own
("pkg.mod:callable" or "path/to/file.py:callable": the model it builds, weights included), or a built-in name: "demo",
"efficientnet-lite0" (or "-features"), "minilm", "smollm2" (the real models of the hf extra).

--arch takes "pkg.mod:callable" or "path/to/file.py:callable" with --arch-args as keyword arguments (edgekit.factory).
`SourceOptions` carries these options (and --allow-class, --trust-pickle, --input-shape, --dynamic) for every verb.
"""
from __future__ import annotations

import importlib
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ConfigError, ModelLoadError, UnsafeModelError
from .specs import DTYPES as _DTYPES
# re-exported: edgekit.model_io.InputSpec etc. stay public names
from .specs import (MAX_INPUT_ELEMENTS, InputSpec, LoadedModel, example_inputs, mark_dynamic,  # noqa: F401
                    parse_input_shape)


@dataclass
class SourceOptions:
    """How to load a model source: the options every verb that takes one shares (compress, export, bench, eval,
    run), so that they are declared and threaded once: --arch, --arch-args, --allow-class, --trust-pickle,
    --input-shape, --dynamic."""

    arch: str | None = None
    arch_args: dict[str, Any] = field(default_factory=dict)
    allow_class: list[str] = field(default_factory=list)
    trust_pickle: bool = False
    input_shape: str | None = None
    dynamic: list[str] | None = None

    def load(self, src: str | Path) -> LoadedModel:
        """load_model with these options."""
        return load_model(src, self.arch, self.allow_class, self.trust_pickle, self.arch_args)

    def api_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of edgekit.api.compress/compress_chain/export."""
        return {"input_shape": self.input_shape, "dynamic": self.dynamic, "arch": self.arch,
                "arch_args": dict(self.arch_args), "allow_class": list(self.allow_class),
                "trust_pickle": self.trust_pickle}


def _import_object(qualname: str) -> Any:
    """Import 'pkg.mod.Class' or 'pkg.mod:factory'."""
    from .safety import is_dangerous

    mod, sep, attr = qualname.partition(":")
    if not sep:
        mod, _, attr = qualname.rpartition(".")
    if is_dangerous(qualname if sep else f"{mod}.{attr}") or not mod or not attr:
        raise ConfigError(f"'{qualname}' is not a model factory edgekit will import (empty, or from a module that "
                          "can run commands or import code); pass your own pkg.module:factory")
    try:
        obj = importlib.import_module(mod)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj
    except (ImportError, AttributeError, ValueError, TypeError) as e:
        raise ConfigError(f"cannot import '{qualname}' ({e}); check the module path and that it is installed") from None


def _auto_allowed(name: str) -> bool:
    """Module classes of torch.nn and edgekit are allowed without asking; functions and other globals are not."""
    if not (name.startswith("torch.nn.") or name.startswith("edgekit.")):
        return False
    try:
        obj = _import_object(name)
    except ConfigError:
        return False
    return isinstance(obj, type) and issubclass(obj, nn.Module)


def _allowed_objects(allow: list[str]) -> dict[str, Any]:
    """--allow-class names -> classes; functions and names from dangerous modules are refused outright."""
    from .safety import check_allowed_class

    out = {}
    for name in allow:
        check_allowed_class(name, None)  # a dangerous name is refused before anything is imported
        obj = _import_object(name)
        check_allowed_class(name, obj)
        out[f"{obj.__module__}.{obj.__qualname__}"] = obj
        out[name.replace(":", ".")] = obj
    if out:
        warnings.warn(f"--allow-class: constructing {', '.join(sorted(set(allow)))} while reading the file; only "
                      "allow classes you trust", stacklevel=3)
    return out


def _scan_globals(path: Path, allowed: dict[str, Any]) -> list[Any]:
    """The globals a zip checkpoint needs, checked: dangerous ones refused, unknown ones need --allow-class."""
    from torch.serialization import get_unsafe_globals_in_checkpoint

    from .safety import is_dangerous

    try:
        found = get_unsafe_globals_in_checkpoint(str(path))
    except Exception as e:  # truncated or not a torch zip file
        raise ModelLoadError(f"{path} is not a readable PyTorch file ({type(e).__name__}: {str(e)[:120]}); "
                             "check the file is complete and was written by torch.save") from None
    danger = sorted(g for g in found if is_dangerous(g))
    if danger:
        raise UnsafeModelError(f"{path} calls {', '.join(danger)} when unpickled, which can run commands or import "
                               "code; refusing it (no option allows these)")
    blocked = sorted(g for g in found if g not in allowed and not _auto_allowed(g))
    if blocked:
        classes = [g for g in blocked if _is_class(g)]
        others = [g for g in blocked if g not in classes]
        hint = ("Allow each trusted class with --allow-class NAME (repeatable), or all with --trust-pickle (runs code "
                "from the file), or save a state dict and pass --arch pkg.module:factory") if not others else \
            (f"{', '.join(others)} {'is' if len(others) == 1 else 'are'} not a class and cannot be allowed; save a "
             "state dict and pass --arch pkg.module:factory")
        raise UnsafeModelError(f"{path} needs globals outside torch.nn/edgekit to unpickle: {', '.join(blocked)}. "
                               + hint)
    return [allowed.get(g) or _import_object(g) for g in found]


def _is_class(name: str) -> bool:
    try:
        return isinstance(_import_object(name), type)
    except ConfigError:
        return False


def _refuse_constructed(obj: Any, path: Path) -> Any:
    """Tensors a pickle built by calling a constructor (not read from the file) are on the meta device: refuse."""
    if isinstance(obj, nn.Module):
        tensors = list(obj.parameters()) + list(obj.buffers())
    elif isinstance(obj, dict):
        tensors = [v for v in obj.values() if isinstance(v, torch.Tensor)]
    else:
        tensors = [obj] if isinstance(obj, torch.Tensor) else []
    if any(t.is_meta for t in tensors):
        raise UnsafeModelError(f"{path} builds tensors by calling constructors while it is read instead of storing "
                               "them; refusing it (re-save it with torch.save, or pass a state dict with --arch)")
    return obj


def _unreadable(path: Path, e: Exception) -> Any:
    msg = str(e).strip()
    raise ModelLoadError(f"{path} could not be loaded safely ({type(e).__name__}: {msg.splitlines()[0][:160] if msg else ''}"
                         "); check the file is complete, or re-save it as a state dict and pass --arch") from None


def _legacy_global(path: Path, e: Exception) -> Any:
    """The global a legacy checkpoint's weights-only load refused: torch.nn/edgekit classes are allowed and
    returned; anything else is refused with the fix."""
    import re

    from .safety import is_dangerous

    g = re.search(r"GLOBAL (\S+) was not an allowed global", str(e))
    if "Only persistent_load of storage" in str(e):
        raise UnsafeModelError(f"{path} is a legacy-format pickled module (it embeds class source), which only a full "
                               "unpickler reads; re-save it as a state dict and pass --arch, or pass --trust-pickle "
                               "if you made it yourself") from None
    if not g:
        _unreadable(path, e)
    name = g.group(1)
    if is_dangerous(name):
        raise UnsafeModelError(f"{path} calls {name} when unpickled, which can run commands; refusing it") from None
    if not _auto_allowed(name):
        raise UnsafeModelError(f"{path} needs {name} to unpickle; allow a trusted class with --allow-class {name}, or "
                               "save a state dict and pass --arch pkg.module:factory") from None
    return _import_object(name)


def _load_pickle(path: Path, allow: list[str], trust: bool) -> Any:
    """torch.load with weights_only; unknown classes need explicit opt-in, dangerous callables are never allowed.

    The load runs under torch.device("meta"): a constructor called by the pickle (e.g. nn.Linear(20000, 20000) from
    a 1 KB file) allocates nothing, and any tensor left on meta proves the file did not store it -> refused.
    Legacy (non-zip) checkpoints go through the same weights-only unpickler; torch names the globals it refuses."""
    from torch.serialization import safe_globals

    if trust:
        warnings.warn(f"--trust-pickle: executing arbitrary code from {path} is possible; only do this for files "
                      "you made yourself", stacklevel=2)
        return torch.load(path, map_location="cpu", weights_only=False)
    allowed = _allowed_objects(allow)
    legacy = not zipfile.is_zipfile(path)
    objs = list(allowed.values()) if legacy else _scan_globals(path, allowed)
    for _ in range(256):  # legacy (non-zip) files cannot be scanned first: torch names one refused global a time
        try:
            with safe_globals(objs), torch.device("meta"):
                obj = torch.load(path, map_location="cpu", weights_only=True)
            break
        except Exception as e:
            objs.append(_legacy_global(path, e) if legacy else _unreadable(path, e))
    else:
        raise ModelLoadError(f"{path} needs too many globals to unpickle; re-save it as a state dict")
    return _refuse_constructed(obj, path)


def _load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from .safetensors or a weights-only .pt."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:
            raise ModelLoadError(f"{path} is not a valid safetensors file ({e}); check the file is complete") from None
    obj = _load_pickle(path, [], False)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{path} holds a {type(obj).__name__}, not a state dict; drop --arch to load a module")
    return obj


def _apply_state_dict(model: nn.Module, sd: dict[str, torch.Tensor], path: Path) -> None:
    """Strict load with missing/unexpected keys and shape mismatches named."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        def _few(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

        parts = ([f"missing keys: {_few(missing)}"] if missing else []) + \
                ([f"unexpected keys: {_few(unexpected)}"] if unexpected else [])
        raise ModelLoadError(f"{path} does not fit the --arch model; {'; '.join(parts)}; check --arch matches the "
                             "checkpoint")
    bad = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own if sd[k].shape != own[k].shape]
    if bad:
        raise ModelLoadError(f"{path}: shape mismatch for {', '.join(bad[:3])}; check --arch and its arguments")
    model.load_state_dict(sd, strict=True)


def load_model(src: str | Path, arch: str | None = None, allow_class: list[str] | None = None,
               trust_pickle: bool = False, arch_args: dict[str, Any] | None = None) -> LoadedModel:
    """Load a model from any supported source into an eval-mode nn.Module (`arch_args`: the factory's kwargs)."""
    from .factory import build_from_factory, is_factory_ref

    if arch_args and not arch and not is_factory_ref(str(src)) and Path(src).is_file():
        raise ConfigError("--arch-args are the arguments of an --arch factory; pass --arch pkg.module:factory too")
    if is_factory_ref(str(src)) and not Path(src).exists():  # the factory builds the model, weights included
        if arch:
            raise ConfigError(f"{src} is a factory already; drop --arch, or pass a weights file with --arch {arch}")
        return LoadedModel(build_from_factory(str(src), arch_args).eval(), str(src), "factory")
    if str(src) == "demo":
        from .models.digits_cnn import INPUT_SHAPE, load_demo_model

        return LoadedModel(load_demo_model(), "demo", "demo", [InputSpec("input", list(INPUT_SHAPE))])
    if str(src) in _REAL:
        return _load_real(str(src))
    path = Path(src)
    if not path.exists():
        raise ModelLoadError(f"{path} does not exist; pass a .pt/.pth/.pt2/.safetensors file, a Hugging Face folder, "
                             "an artifact folder, pkg.module:factory, path/to/file.py:factory or 'demo'")
    if path.is_dir():
        from . import artifact

        if artifact.is_artifact(path):
            return _load_artifact(path)
        if (path / "config.json").is_file():
            from .hf import load_hf_folder

            return load_hf_folder(path)
        raise ModelLoadError(f"{path} is a folder but neither an artifact (manifest.json) nor a Hugging Face model "
                             "(config.json)")
    if path.suffix == ".onnx":
        raise ConfigError(f"{path} is ONNX: it can be exported and profiled (`edgekit export`), not compressed; "
                          "pass the PyTorch model instead")
    if arch:
        model = build_from_factory(arch, arch_args)
        _apply_state_dict(model, _load_state_dict_file(path), path)
        return LoadedModel(model.eval(), str(path), "state_dict")
    if path.suffix == ".pt2":
        module, specs = _load_pt2_with_specs(path, trust_pickle)
        return LoadedModel(module, str(path), "exported_program", specs)
    if path.suffix == ".safetensors":
        raise ConfigError(f"{path} holds only weights; pass --arch pkg.module:factory to build the model")
    if path.suffix not in (".pt", ".pth", ".bin"):
        raise ModelLoadError(f"{path}: unsupported file type '{path.suffix}'; use .pt/.pth/.pt2/.safetensors")
    obj = _load_pickle(path, allow_class or [], trust_pickle)
    if isinstance(obj, dict):
        raise ConfigError(f"{path} holds a state dict; pass --arch pkg.module:factory to build the model")
    if not isinstance(obj, nn.Module):
        raise ModelLoadError(f"{path} holds a {type(obj).__name__}, not an nn.Module")
    return LoadedModel(obj.eval(), str(path), "pickled_module")


_REAL = ("efficientnet-lite0", "efficientnet-lite0-features", "minilm", "smollm2")


def _load_real(name: str) -> LoadedModel:
    """The small real models that install offline (edgekit[hf]), by name, with their input specs."""
    from .models import real

    if name.startswith("efficientnet-lite0"):
        m = real.load_efficientnet_lite0()
        if name.endswith("features"):  # (logits, features): what the fashion-probe eval reads from an artifact
            m = real.EfficientNetWithFeatures(m).eval()
        return LoadedModel(m, name, "builtin", [InputSpec("input", [1, 3, 224, 224])])
    if name == "minilm":
        m, tok = real.load_minilm()
        return LoadedModel(m, name, "builtin", [InputSpec("input_ids", [1, 128], "int64", high=tok.vocab_size),
                                                InputSpec("attention_mask", [1, 128], "int64")])
    lm, tok = real.load_smollm2()
    return LoadedModel(real.CausalLMLogits(lm).eval(), name, "builtin",
                       [InputSpec("input_ids", [1, 128], "int64", high=lm.config.vocab_size)])


class ProgramModule(nn.Module):
    """An ExportedProgram's module as a plain nn.Module: train()/eval() only set a flag (the exported graph has its
    mode baked in and refuses both), so methods and exporters can treat it like any model."""

    def __init__(self, program: nn.Module):
        super().__init__()
        self.program = program

    def train(self, mode: bool = True) -> "ProgramModule":
        self.training = mode
        return self

    def forward(self, *args: Any) -> Any:
        return self.program(*args)


def _load_pt2(path: Path, trust: bool = False) -> nn.Module:
    """A .pt2 checked to be a plain, code-free program (edgekit.safe_pt2), as a runnable module."""
    return _load_pt2_with_specs(path, trust)[0]


def _load_pt2_with_specs(path: Path, trust: bool = False) -> tuple[nn.Module, list[InputSpec] | None]:
    """The program's module and the input specs it was exported with (dynamic dims take their example size)."""
    from .safe_pt2 import load_exported_program

    ep = load_exported_program(path, trust)
    specs: list[InputSpec] | None = []
    rev = {v: k for k, v in _DTYPES.items()}
    names = set(ep.graph_signature.user_inputs)
    for node in ep.graph.nodes:
        if node.op != "placeholder" or node.name not in names:
            continue
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor) or val.dtype not in rev:
            specs = None
            break
        dims = [int(d) if isinstance(d, int) else int(getattr(d.node, "hint", None) or 1) for d in val.shape]
        specs.append(InputSpec(node.name if len(names) > 1 else "input", dims, rev[val.dtype]))
    return ProgramModule(ep.module()), (specs or None)


def _load_artifact(path: Path) -> LoadedModel:
    """The compressed model kept in an artifact (model.pt2), with the artifact's input spec."""
    from .artifact import read_manifest

    man = read_manifest(path)  # verifies checksums, paths and symlinks before any file is read
    pt2 = path / (man.get("torch_program") or "model.pt2")
    if not pt2.is_file():
        raise ModelLoadError(f"artifact {path} has no PyTorch program (model.pt2): compress keeps only what the "
                             "runtimes run; compress the original model again (chain methods in one run), or "
                             "compress with --keep-program")
    try:
        specs = [InputSpec(i["name"], i["shape"], i["dtype"], {int(k): str(v) for k, v in i.get("dynamic", {}).items()},
                           i.get("high")) for i in man["inputs"]]
        bad = [s.dtype for s in specs if s.dtype not in _DTYPES]
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        bad = [f"{type(e).__name__} {e}"]
    if bad or not specs:
        from .errors import ArtifactError

        raise ArtifactError(f"artifact {path}: malformed input spec in manifest.json ({bad[:1] or 'no inputs'}); "
                            "re-create the artifact")
    return LoadedModel(_load_pt2(pt2), str(path), "artifact", specs)
