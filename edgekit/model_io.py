"""Safe model loading (untrusted by default), input specs and example inputs.

Sources: a pickled nn.Module in .pt/.pth (torch's weights_only unpickler; classes outside torch.nn/edgekit need
--allow-class or --trust-pickle), a state dict (.pt/.pth/.safetensors) plus --arch pkg.module:factory, a .pt2
ExportedProgram, a Hugging Face folder (local only, never remote code), an artifact, or a built-in name: "demo",
"efficientnet-lite0" (or "-features"), "minilm", "smollm2" (the real models of the hf extra).
"""
from __future__ import annotations

import importlib
import warnings
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ConfigError, ModelLoadError, UnsafeModelError

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64, "int32": torch.int32,
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
        dt = _DTYPES[self.dtype]
        if dt.is_floating_point:
            return torch.randn(self.shape, generator=gen).to(dt)
        if self.name == "attention_mask":
            return torch.ones(self.shape, dtype=dt)
        return torch.randint(0, self.high or 100, self.shape, generator=gen, dtype=dt)

    def to_dict(self) -> dict[str, Any]:
        """Manifest form."""
        return asdict(self)


def parse_input_shape(text: str, dynamic: list[str] | None = None) -> list[InputSpec]:
    """'1x3x224x224[:dtype]' (comma-separated for several inputs) -> InputSpecs; --dynamic batch marks axis 0."""
    specs = []
    for i, part in enumerate(p for p in text.split(",") if p.strip()):
        shape_s, _, dtype = part.strip().partition(":")
        dtype = dtype or "float32"
        if dtype not in _DTYPES:
            raise ConfigError(f"--input-shape '{part}': unknown dtype '{dtype}'; use one of {', '.join(_DTYPES)}")
        try:
            shape = [int(d) for d in shape_s.lower().split("x")]
        except ValueError:
            raise ConfigError(f"--input-shape '{part}' is not like 1x3x224x224[:float32]") from None
        if any(d <= 0 for d in shape):
            raise ConfigError(f"--input-shape '{part}': dimensions must be positive")
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


def _import_object(qualname: str) -> Any:
    """Import 'pkg.mod.Class' or 'pkg.mod:factory'."""
    mod, sep, attr = qualname.partition(":")
    if not sep:
        mod, _, attr = qualname.rpartition(".")
    try:
        obj = importlib.import_module(mod)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj
    except (ImportError, AttributeError, ValueError) as e:
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


def _load_pickle(path: Path, allow: list[str], trust: bool) -> Any:
    """torch.load with weights_only; unknown globals need explicit opt-in."""
    from torch.serialization import get_unsafe_globals_in_checkpoint, safe_globals

    if trust:
        warnings.warn(f"--trust-pickle: executing arbitrary code from {path} is possible; only do this for files "
                      "you made yourself", stacklevel=2)
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        found = get_unsafe_globals_in_checkpoint(str(path))
    except Exception as e:  # truncated or not a torch zip file
        raise ModelLoadError(f"{path} is not a readable PyTorch file ({type(e).__name__}: {e}); "
                             "check the file is complete and was written by torch.save") from None
    blocked = [g for g in found if g not in allow and not _auto_allowed(g)]
    if blocked:
        raise UnsafeModelError(
            f"{path} needs classes outside torch.nn/edgekit to unpickle: {', '.join(sorted(blocked))}. "
            "Allow each trusted one with --allow-class NAME (repeatable), or all with --trust-pickle "
            "(runs code from the file), or save a state dict and pass --arch pkg.module:factory")
    allowed_objs = [_import_object(g) for g in found]
    try:
        with safe_globals(allowed_objs):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelLoadError(f"{path} could not be loaded safely ({str(e).splitlines()[0]}); "
                             "re-save it as a state dict and pass --arch pkg.module:factory") from None


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
               trust_pickle: bool = False) -> LoadedModel:
    """Load a model from any supported source into an eval-mode nn.Module."""
    if str(src) == "demo":
        from .models.digits_cnn import INPUT_SHAPE, load_demo_model

        return LoadedModel(load_demo_model(), "demo", "demo", [InputSpec("input", list(INPUT_SHAPE))])
    if str(src) in _REAL:
        return _load_real(str(src))
    path = Path(src)
    if not path.exists():
        raise ModelLoadError(f"{path} does not exist; pass a .pt/.pth/.pt2/.safetensors file, a Hugging Face folder, "
                             "an artifact folder or 'demo'")
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
        factory = _import_object(arch)
        model = factory()
        if not isinstance(model, nn.Module):
            raise ConfigError(f"--arch {arch} returned {type(model).__name__}, not an nn.Module")
        _apply_state_dict(model, _load_state_dict_file(path), path)
        return LoadedModel(model.eval(), str(path), "state_dict")
    if path.suffix == ".pt2":
        return LoadedModel(_load_pt2(path), str(path), "exported_program")
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


def _load_pt2(path: Path) -> nn.Module:
    """torch.export.load -> runnable module."""
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(f"{path} is not a valid .pt2 archive (truncated or wrong format); re-export it with "
                             "torch.export.save")
    try:
        return torch.export.load(str(path)).module()
    except Exception as e:
        raise ModelLoadError(f"{path} could not be loaded as an ExportedProgram ({str(e).splitlines()[0]})") from None


def _load_artifact(path: Path) -> LoadedModel:
    """The compressed model kept in an artifact (model.pt2), with the artifact's input spec."""
    from .artifact import read_manifest

    man = read_manifest(path)
    pt2 = path / man.get("torch_program", "model.pt2")
    if not pt2.is_file():
        raise ModelLoadError(f"artifact {path} has no PyTorch program (model.pt2); re-run `edgekit compress`")
    specs = [InputSpec(i["name"], i["shape"], i["dtype"], {int(k): v for k, v in i.get("dynamic", {}).items()},
                       i.get("high")) for i in man["inputs"]]
    return LoadedModel(_load_pt2(pt2), str(path), "artifact", specs)
