"""Write a decoder artifact: the KV-cache ONNX graph, per-runtime generation folders, the tokenizer, validation.

Layout::

    ART/model.onnx                          KV-cache decoder (integer weights + DequantizeLinear where a method quantized)
    ART/tokenizer/tokenizer.json ...        Hugging Face tokenizer files (apps encode with the `tokenizers` package)
    ART/exports/onnxruntime/                model.onnx + genai_config.json + tokenizer files (onnxruntime-genai)
    ART/exports/openvino/                   openvino_model.xml/.bin (stateful) + openvino_(de)tokenizer.xml

manifest["decoder"]: layers, heads, kv_heads, head_dim, vocab, past/present names; manifest["tokenizer"]: its folder
and files; manifest["generation"]: the validation prompt and transformers' greedy tokens; each export's
"validation": numpy greedy loop (tokens, per-step logits, cache use) and "genai": the runtime's own stack (tokens).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import nn

from .. import artifact as art
from ..errors import ConfigError
from ..quant.codes import WeightCode, get_codes
from . import check
from .decoder import DecoderInfo, export_decoder, find_causal_lm
from .files import copy_tokenizer, write_genai_config, write_openvino
from .loop import OV_CONFIG

RUNTIMES = ("onnxruntime", "openvino")


def check_runtimes(runtimes: Sequence[str]) -> list[str]:
    """The runtimes a decoder artifact can target, checked before any work (default: onnxruntime)."""
    rts = list(dict.fromkeys(runtimes or ["onnxruntime"]))
    bad = [r for r in rts if r not in RUNTIMES]
    if bad:
        raise ConfigError(f"--kv-cache exports to {' and '.join(RUNTIMES)}; not to {', '.join(bad)} (LiteRT "
                          "generation is not supported yet)")
    return rts


def tokenizer_dir(source: str) -> Path:
    """Where the source model's tokenizer files are: the HF folder itself, or the cached SmolLM2 folder."""
    if source == "smollm2":
        from ..models.real import smollm2_dir

        return smollm2_dir()
    p = Path(source)
    if p.is_dir() and (p / "tokenizer.json").is_file():
        return p
    raise ConfigError(f"{source}: no tokenizer.json found for --kv-cache; pass a Hugging Face folder that holds the "
                      "model and its fast tokenizer, or smollm2")


def _prompt_ids(tok_dir: Path, prompt: str, vocab: int) -> list[int]:
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(tok_dir / "tokenizer.json")).encode(prompt).ids
    if not ids or max(ids) >= vocab:
        raise ConfigError(f"the tokenizer's ids for {prompt!r} do not fit the model's vocabulary of {vocab}; the "
                          "tokenizer does not belong to this model")
    return ids


def _io_specs(info: DecoderInfo) -> tuple[list[dict], list[dict]]:
    """Manifest I/O of a decode step (1 new token after 8 cached): example shapes, dynamic axes named."""
    past = {"name": "", "shape": [1, info.kv_heads, 8, info.head_dim], "dtype": "float32",
            "dynamic": {0: "batch", 2: "past_sequence_length"}, "high": None}
    ins = [{"name": "input_ids", "shape": [1, 1], "dtype": "int64", "dynamic": {0: "batch", 1: "sequence_length"},
            "high": info.vocab},
           {"name": "attention_mask", "shape": [1, 9], "dtype": "int64",
            "dynamic": {0: "batch", 1: "total_sequence_length"}, "high": None},
           {"name": "position_ids", "shape": [1, 1], "dtype": "int64", "dynamic": {0: "batch", 1: "sequence_length"},
            "high": 9}]
    ins += [{**past, "name": n} for n in info.past_names]
    outs = [{"name": "logits", "shape": [1, 1, info.vocab], "dtype": "float32"}]
    outs += [{"name": n, "shape": [1, info.kv_heads, 9, info.head_dim], "dtype": "float32"} for n in info.present_names]
    return ins, outs


ACT8_FORMS = {"onnxruntime": "MatMulNBits accuracy_level 4 (int8 activations per block, 4- and 8-bit weights)",
              "openvino": "OpenVINO dynamic quantization (int8 activations, groups of 32)"}
OV_ACT8 = {**OV_CONFIG, "DYNAMIC_QUANTIZATION_GROUP_SIZE": "32"}


def _act8_deploy(val: dict[str, Any], runtime: str) -> dict[str, Any]:
    """The manifest's deploy record of an int8-activation decoder export (the CLI prints it)."""
    return {"requested": "int8", "form": "int8 activations", "detail": ACT8_FORMS[runtime],
            "why": f"teacher-forced on transformers' tokens: top-1 {val['top1_agreement']:.3f}, worst logit cosine "
                   f"{val['cosine_min']:.4f} (floors {val['floors']['top1_agreement']} / "
                   f"{val['floors']['cosine_min']}); time it with `edgekit profile`"}


def export_ort(root: Path, info: DecoderInfo, tok_files: list[str], prompt: list[int], ref: Any,
               precision: str, config: dict[str, str], act8: bool = False,
               fused: tuple[nn.Module, dict[str, WeightCode], Path] | None = None) -> dict[str, Any]:
    """exports/onnxruntime/: the canonical graph (4-bit weights as MatMulNBits where exact), or with `fused`
    ((causal LM, its codes, tokenizer folder): `--fused-decoder`) onnxruntime-genai's builder layout holding the
    method's codes (genai.fused); validated by the greedy loop and onnxruntime-genai's own generation."""
    from .stacks import ort_genai

    d = root / "exports" / "onnxruntime"
    d.mkdir(parents=True)
    if fused is not None:
        from . import fused as fz

        weights = fz.build(*fused, d, act8=act8)
        for n in tok_files:  # the artifact's tokenizer files win over the builder's copies
            shutil.copy2(root / "tokenizer" / n, d / n)
        loop_cfg: dict[str, str] = {}  # no DequantizeLinear left: nothing for QDQ transforms to touch
        val = (check.check_act8(d / "model.onnx", "onnxruntime", info.to_dict(), prompt, ref, loop_cfg) if act8 else
               check.check_loop(d / "model.onnx", "onnxruntime", info.to_dict(), prompt, ref, precision, loop_cfg))
    else:
        loop_cfg = {"session.disable_quant_qdq": "1"}
        weights, val = _ort_plain(root, d, info, tok_files, prompt, ref, precision, config, act8)
    why = ("onnxruntime-genai cannot set session.disable_quant_qdq, so ONNX Runtime fuses DequantizeLinear + MatMul "
           "into MatMulNBits with int8 activations" if weights.get("kind") == "DequantizeLinear" else "")
    sref, against = _stack_ref(d, info, prompt, ref, loop_cfg, act8)
    stack = check.check_stack(lambda: ort_genai(d, prompt, len(ref.tokens)), sref, "onnxruntime-genai", why, against)
    out = {"file": "exports/onnxruntime/model.onnx", "precision": precision, "validation": val, "weights": weights,
           "genai": {"stack": "onnxruntime-genai", "config": "exports/onnxruntime/genai_config.json", **stack}}
    return {**out, "deploy": _act8_deploy(val, "onnxruntime")} if act8 else out


def _ort_plain(root: Path, d: Path, info: DecoderInfo, tok_files: list[str], prompt: list[int], ref: Any,
               precision: str, config: dict[str, str], act8: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The canonical graph's ONNX Runtime folder: genai_config + tokenizer, weights as MatMulNBits where they fit
    (all integer weights with int8 activations under `act8`); (weights record, validation)."""
    write_genai_config(d, info)
    for n in tok_files:
        shutil.copy2(root / "tokenizer" / n, d / n)
    if act8:
        from .nbits import to_matmulnbits

        rep = to_matmulnbits(root / "model.onnx", d / "model.onnx", bits=(4, 8), accuracy_level=4)
        if not rep["layers"]:
            why = "; ".join(sorted(set(rep["kept"].values()))) or "no integer MatMul weight"
            raise ConfigError(f"--deploy int8: none of this decoder's integer weights can run as MatMulNBits ({why}); "
                              "drop --deploy int8 to keep the weights-only form")
        weights = {"kind": "MatMulNBits", **rep}
        # QDQ transforms on the DequantizeLinear nodes left (the embedding's) cost ~1.5x per decode step here
        # (SmolLM2 RTN W8: 27.1 tok/s with them off, 17.7 on): off, as for the weights-only export
        return weights, check.check_act8(d / "model.onnx", "onnxruntime", info.to_dict(), prompt, ref,
                                         {"session.disable_quant_qdq": "1"})
    return _ort_weights(root / "model.onnx", d / "model.onnx", info, prompt, ref, precision, config)


def _stack_ref(d: Path, info: DecoderInfo, prompt: list[int], ref: Any, config: dict[str, str],
               act8: bool, runtime: str = "onnxruntime", file: str = "model.onnx") -> tuple[Any, str]:
    """What a genai stack's tokens must equal: transformers' greedy tokens, or for an int8-activation file (whose
    logits check_act8 allowed to move) the numpy loop's greedy tokens on that same file with the same settings, so
    the stack is checked to run the validated file as the loop does."""
    if not act8:
        return ref, "transformers' generate"
    from .loop import greedy, open_decoder

    dec = open_decoder(d / file, runtime, info.to_dict(), config=config)
    own = greedy(dec, prompt, len(ref.tokens), eos=info.eos_token_ids)
    return own, "the numpy loop on this int8-activation file"


def _ort_weights(src: Path, dst: Path, info: DecoderInfo, prompt: list[int], ref: Any, precision: str,
                 config: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """4-bit weights as MatMulNBits (genai.nbits: exact, fp32 compute), kept only if the generation check passes;
    8-bit weights, and float graphs, stay as the canonical graph (ONNX Runtime folds weight DequantizeLinear at load).
    Why not 8-bit MatMulNBits: with fp32 compute (the exact form) ORT 1.32 decoded SmolLM2 at 0.17x FP32 here;
    its int8-activation form (accuracy_level 4, 2.0x) is W8A8, not the validated weights-only model
    (benchmarks/results/genai.json)."""
    from ..errors import ExportMismatchError
    from .nbits import to_matmulnbits

    if config.get("session.disable_quant_qdq"):  # integer weights (DequantizeLinear) in the canonical graph
        rep = to_matmulnbits(src, dst, bits=(4,))
        if rep["layers"]:
            try:
                return ({"kind": "MatMulNBits", **rep},
                        check.check_loop(dst, "onnxruntime", info.to_dict(), prompt, ref, precision, config))
            except ExportMismatchError as e:
                rep = {"kind": "DequantizeLinear", "matmulnbits_rejected": str(e)[:300]}
        else:
            rep = {"kind": "DequantizeLinear", "matmulnbits": "no 4-bit MatMul weight (8-bit MatMulNBits with fp32 "
                   "compute is slower than FP32 on ONNX Runtime 1.32)", "kept": rep["kept"]}
    else:
        rep = {"kind": "float"}
    shutil.copy2(src, dst)
    return rep, check.check_loop(dst, "onnxruntime", info.to_dict(), prompt, ref, precision, config)


def export_ov(root: Path, info: DecoderInfo, prompt: list[int], ref: Any, precision: str,
              act8: bool = False) -> dict[str, Any]:
    from .stacks import ov_genai

    d = root / "exports" / "openvino"
    files = write_openvino(root / "model.onnx", d, info, root / "tokenizer")
    if act8:
        val = check.check_act8(d / "openvino_model.xml", "openvino", info.to_dict(), prompt, ref, OV_ACT8)
    else:
        val = check.check_loop(d / "openvino_model.xml", "openvino", info.to_dict(), prompt, ref, precision, OV_CONFIG)
    if isinstance(files.get("tokenizer_ir"), list):
        cfg = OV_ACT8 if act8 else OV_CONFIG  # the pipeline runs with the settings the file was validated with
        sref, against = _stack_ref(d, info, prompt, ref, cfg, act8, "openvino", "openvino_model.xml")
        stack = check.check_stack(lambda: ov_genai(d, prompt, len(ref.tokens), config=cfg), sref, "openvino-genai",
                                  against=against)
    else:
        stack = {"status": "unavailable", "reason": files["tokenizer_ir"]}
    out = {"file": "exports/openvino/openvino_model.xml", "precision": precision, "stateful": True,
           "validation": val, "genai": {"stack": "openvino-genai LLMPipeline", **stack,
                                        "tokenizer_ir": files["tokenizer_ir"]}}
    return {**out, "deploy": _act8_deploy(val, "openvino")} if act8 else out


def write_decoder_artifact(module: nn.Module, out: Path, runtimes: Sequence[str], source: dict[str, Any],
                           tok_dir: Path, *, kind: str = "export", extra: dict[str, Any] | None = None,
                           codes: dict[str, WeightCode] | None = None, precision: str = "fp32",
                           overwrite: bool = False, protect: Sequence[Any] = (),
                           on_step: Callable[[str], None] = lambda s: None, prompt: str = check.PROMPT,
                           new_tokens: int = check.NEW_TOKENS, act8: bool = False, fused: bool = False) -> Path:
    """Export `module`'s causal LM with a KV cache into the artifact `out`, validated against transformers' greedy
    generate on every runtime (and its generation stack where installed); `extra` is merged into the manifest
    (method entries, fidelity...). `act8` (`--deploy int8`): each runtime's export computes with int8 activations,
    judged by check.check_act8 (the canonical model.onnx stays the validated weights-only graph). `fused`
    (`--fused-decoder`): the ONNX Runtime export is onnxruntime-genai's builder layout with the method's codes
    (genai.fused); the canonical model.onnx and the OpenVINO export are unchanged."""
    from ..export.validate import TOLERANCES

    rts = check_runtimes(runtimes)
    lm = find_causal_lm(module)
    codes = get_codes(module) if codes is None else codes
    precision = precision if precision in TOLERANCES and precision != "act_quant" else "int"
    if fused:
        from .fused import available, plan

        why = available() or ("" if "onnxruntime" in rts else "it lays out the onnxruntime export; add --target "
                                                              "onnxruntime")
        if why:
            raise ConfigError(f"--fused-decoder: {why}")
        plan(codes)  # codes it cannot hold are refused before any work
    art.check_output(out, overwrite, protect=protect)
    with art.staging(out, overwrite, protect=protect) as root:
        on_step("export onnx (KV cache)")
        res = export_decoder(lm, root / "model.onnx", codes)
        info: DecoderInfo = res["info"]
        tok_files = copy_tokenizer(tok_dir, root / "tokenizer")
        ids = _prompt_ids(root / "tokenizer", prompt, info.vocab)
        on_step("transformers generate (reference)")
        ref = check.reference(lm, ids, new_tokens, info.eos_token_ids)
        ort_cfg = {"session.disable_quant_qdq": "1"} if res["integer_weights"].get("integer_weights") else {}
        if act8 and not ort_cfg:
            raise ConfigError("--deploy int8 on a decoder runs its integer weights with int8 activations, and this "
                              "model has none; compress with a weight method (e.g. --method rtn --set bits=4)")
        on_step("validate onnx (greedy loop)")
        val = check.check_loop(root / "model.onnx", "onnxruntime", info.to_dict(), ids, ref, precision, ort_cfg)
        exports = {}
        for rt in rts:
            on_step(f"export {rt} + validate generation")
            exports[rt] = (export_ort(root, info, tok_files, ids, ref, precision, ort_cfg, act8,
                                      (lm, codes, tok_dir) if fused else None) if rt == "onnxruntime"
                           else export_ov(root, info, ids, ref, precision, act8))
        ins, outs = _io_specs(info)
        man = {"kind": kind, "source": source, "model": "model.onnx", "inputs": ins, "outputs": outs,
               "decoder": info.to_dict(), "tokenizer": {"dir": "tokenizer", "files": tok_files},
               "generation": {"prompt": prompt, "prompt_tokens": ids, "reference": "transformers generate, greedy",
                              "tokens": ref.tokens, "max_new_tokens": new_tokens},
               "integer_weights": res["integer_weights"], "export_precision": precision,
               "validation": {"onnx": val}, "exports": exports, **(extra or {})}
        art.write_manifest(root, man)
    return Path(out)
