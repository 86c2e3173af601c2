"""Build-time files next to the decoder that the runtimes' generation stacks read.

- exports/onnxruntime/: model.onnx + genai_config.json + tokenizer files (onnxruntime-genai's model folder);
- exports/openvino/: openvino_model.xml/.bin, the decoder made stateful (KV cache held in OpenVINO variables,
  `beam_idx` input, as optimum-intel writes it) + openvino_tokenizer/detokenizer IRs (openvino-tokenizers), which is
  what openvino-genai's LLMPipeline loads;
- tokenizer/: the Hugging Face tokenizer files (tokenizer.json, ...), read by the numpy loop and apps with the
  `tokenizers` package.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from ..errors import ConfigError, MissingDependencyError
from .decoder import DecoderInfo

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def copy_tokenizer(src: Path, dst: Path) -> list[str]:
    """Copy the tokenizer files that exist in `src` (tokenizer.json is required) into `dst`; their names."""
    src = Path(src)
    if not (src / "tokenizer.json").is_file():
        raise ConfigError(f"{src} has no tokenizer.json; --kv-cache needs a fast (tokenizers) tokenizer next to the "
                          "model so that apps can encode prompts without transformers")
    dst.mkdir(parents=True, exist_ok=True)
    names = []
    for n in TOKENIZER_FILES:
        if (src / n).is_file() and not (src / n).is_symlink():
            shutil.copyfile(src / n, dst / n)
            names.append(n)
    return names


def write_genai_config(dst: Path, info: DecoderInfo, filename: str = "model.onnx") -> Path:
    """onnxruntime-genai's genai_config.json for our decoder (greedy by default; past and present not shared, as the
    graph concatenates the cache)."""
    eos = info.eos_token_ids or [0]
    cfg = {
        "model": {
            "bos_token_id": info.bos_token_id if info.bos_token_id is not None else eos[0],
            "eos_token_id": eos if len(eos) > 1 else eos[0],
            "pad_token_id": eos[0],
            "context_length": info.context_length,
            "type": info.model_type,
            "vocab_size": info.vocab,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": filename, "head_size": info.head_dim, "hidden_size": info.hidden,
                "num_attention_heads": info.heads, "num_hidden_layers": info.layers,
                "num_key_value_heads": info.kv_heads,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
                           "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
            },
        },
        "search": {"do_sample": False, "num_beams": 1, "num_return_sequences": 1, "max_length": info.context_length,
                   "min_length": 0, "past_present_share_buffer": False, "top_k": 1, "top_p": 1.0, "temperature": 1.0,
                   "repetition_penalty": 1.0, "length_penalty": 1.0, "no_repeat_ngram_size": 0,
                   "diversity_penalty": 0.0, "early_stopping": True},
    }
    path = Path(dst) / "genai_config.json"
    path.write_text(json.dumps(cfg, indent=2))
    return path


def make_stateful(model, info: DecoderInfo):
    """Hide past/present in OpenVINO variables: a `beam_idx` input gathers the cache rows (what openvino-genai
    feeds), the states start as zeros of shape (batch, kv_heads, 0, head_dim)."""
    import openvino as ov
    from openvino import opset13
    from openvino._offline_transformations import apply_make_stateful_transformation

    batch = model.input("input_ids").get_partial_shape()[0]
    beam = opset13.parameter(name="beam_idx", dtype=ov.Type.i32, shape=ov.PartialShape([batch]))
    beam.output(0).get_tensor().add_names({"beam_idx"})
    model.add_parameters([beam])
    for name in info.past_names:
        port = model.input(name)
        users = list(port.get_target_inputs())
        gathered = opset13.gather(port, beam, opset13.constant(0))
        for u in users:
            u.replace_source_output(gathered.output(0))
    model.validate_nodes_and_infer_types()
    apply_make_stateful_transformation(model, dict(zip(info.past_names, info.present_names)))
    ids = model.input("input_ids")
    bsz = opset13.gather(opset13.shape_of(ids, output_type="i64"), opset13.constant([0]), opset13.constant(0))
    tail = opset13.constant(np.array([info.kv_heads, 0, info.head_dim], np.int64))
    for op in model.get_ops():
        if op.get_type_name() == "ReadValue":  # initial state: zeros, batch from input_ids, no past positions
            zero = opset13.constant(0.0, dtype=op.get_output_element_type(0))
            op.set_arguments([opset13.broadcast(zero, opset13.concat([bsz, tail], 0))])
    model.validate_nodes_and_infer_types()
    return model


def write_openvino(onnx_path: Path, dst: Path, info: DecoderInfo, tokenizer_dir: Path) -> dict:
    """exports/openvino/: stateful decoder IR (fp32 weights, integer weights stay compressed) + tokenizer IRs when
    openvino-tokenizers is installed (the `genai` extra); returns what was written and what was not, and why."""
    import openvino as ov

    dst.mkdir(parents=True, exist_ok=True)
    model = make_stateful(ov.convert_model(str(onnx_path)), info)
    ov.save_model(model, str(dst / "openvino_model.xml"), compress_to_fp16=False)
    out = {"file": "openvino_model.xml", "stateful": True}
    try:
        import openvino_tokenizers
        from transformers import AutoTokenizer
    except ImportError:
        out["tokenizer_ir"] = "not written: openvino-tokenizers or transformers missing (pip install 'edgekit[genai]')"
        return out
    hf = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    tok, detok = openvino_tokenizers.convert_tokenizer(hf, with_detokenizer=True)
    ov.save_model(tok, str(dst / "openvino_tokenizer.xml"))
    ov.save_model(detok, str(dst / "openvino_detokenizer.xml"))
    out["tokenizer_ir"] = ["openvino_tokenizer.xml", "openvino_detokenizer.xml"]
    return out


def need(module: str, package: str):
    """Import an optional generation package or raise MissingDependencyError naming the `genai` extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(package, "genai") from e
