"""A fused ONNX Runtime decoder: onnxruntime-genai's model builder lays out the graph, edgekit puts the method's codes in.

edgekit's own KV-cache decoder (genai.decoder) is the plain dynamo export: ~2,000 nodes for SmolLM2, where rotary,
attention and the norms are chains of Transpose/Concat/Mul/Reshape/Expand. Measured by `edgekit profile` on ONNX
Runtime, that glue is more than half of a decode step once the weights are 4-bit. onnxruntime-genai's model builder
writes the same Llama-family decoder as ~340 nodes (GroupQueryAttention with rotary inside, SkipSimplifiedLayerNorm,
MatMulNBits, GatherBlockQuantized for a quantized tied embedding). Rather than re-implement those fusions, this module
uses the builder for the graph (what the library is for) and keeps edgekit's part: the weights.

How: the compressed model's dequantized weights are written as a Hugging Face folder (safetensors + config), the
builder runs on it (`-p int4|int8|fp32 -e cpu`, block size = the method's group size, `last_matmul:int8` when the head
is 8-bit), and then every MatMulNBits initializer it wrote is replaced by the method's own codes and scales
(genai.nbits.pack): the builder's RTN would re-grid a symmetric [-7, 7] code to its own grid, so its numbers are
never used. q/k/v are one packed qkv MatMul there: their codes are concatenated along the output axis. A builder node
with no matching code of the same bit width, or a code left unused, is an error (no silent re-gridding). The tied
embedding reads the head's 8-bit codes through GatherBlockQuantized, so it is exact too. A head with one scale per row
(`head_bits`, per channel) is re-packed at the largest block that divides K (64 for SmolLM2's 576), on the head's
MatMulNBits and the embedding's GatherBlockQuantized alike: the same codes and scales, each scale stored once per
block instead of repeated over the builder's blocks of 32 (SmolLM2: 1.8 MB less).

The file is then validated like every decoder export (check.check_loop: teacher-forced logits and greedy tokens
against transformers on the compressed model; check.check_stack: onnxruntime-genai's own generation).
`accuracy_level` 0 computes in fp32 (the weights-only model); 4 (`--deploy int8`) quantizes activations to int8 per
block on the fly and is judged by check.check_act8.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..errors import ConfigError
from ..quant.codes import WeightCode

# builder initializer stem -> the HF modules whose codes it holds (concatenated along the output axis)
_PARTS = {"attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
          "attn.o_proj": ("self_attn.o_proj",), "mlp.gate_proj": ("mlp.gate_proj",),
          "mlp.up_proj": ("mlp.up_proj",), "mlp.down_proj": ("mlp.down_proj",)}


def available() -> str | None:
    """None when the builder can be used here, else why not (one line)."""
    import importlib.util

    try:
        found = importlib.util.find_spec("onnxruntime_genai.models.builder") is not None
    except Exception:  # noqa: BLE001 - a broken package is the same as none
        found = False
    return None if found else "onnxruntime-genai's model builder is not installed (pip install onnxruntime-genai)"


def _norm(key: str) -> str:
    """A code key (module path + '.weight', maybe under a wrapper) -> 'model.layers.N.xxx' or 'lm_head'."""
    k = key[:-len(".weight")] if key.endswith(".weight") else key
    m = re.search(r"(model\.layers\.\d+\..+|lm_head)$", k)
    return m.group(1) if m else k


def plan(codes: dict[str, WeightCode]) -> dict[str, Any]:
    """Builder precision, block size and head handling for these codes; ConfigError when they have no MatMulNBits
    form (asymmetric or non-integer grids, mixed body bit widths, a group size that is not a power of two >= 16)."""
    body = {k: c for k, c in ((_norm(k), c) for k, c in codes.items()) if k.startswith("model.layers.")}
    head = next((c for k, c in codes.items() if _norm(k) == "lm_head"), None)
    if not body:
        if head is not None:
            raise ConfigError("--fused-decoder: only the head has integer codes; quantize the decoder layers too "
                              "(e.g. --method rtn --set bits=4)")
        return {"precision": "fp32", "block_size": None, "head_bits": None}
    bits = {c.bits for c in body.values()}
    groups = {c.group_size for c in body.values()}
    if len(bits) != 1 or bits - {4, 8}:
        raise ConfigError(f"--fused-decoder: the decoder layers' codes are {sorted(bits)}-bit; the builder's "
                          "MatMulNBits graph takes one width, 4 or 8")
    bad = [k for k, c in codes.items() if c.offset is not None]
    if bad:
        raise ConfigError(f"--fused-decoder: {_norm(bad[0])} has asymmetric codes (an offset); MatMulNBits is "
                          "written symmetric here")
    gs = {g for g in groups if g is not None}
    if len(gs) > 1:
        raise ConfigError(f"--fused-decoder: group sizes {sorted(gs)} differ between layers; use one group_size")
    block = gs.pop() if gs else 32  # a per-channel scale repeats over any block size
    if block < 16 or block & (block - 1):
        raise ConfigError(f"--fused-decoder: group_size {block} is not a power of two >= 16 (MatMulNBits' block)")
    (b,) = bits
    if head is None:
        raise ConfigError("--fused-decoder: the decoder layers have integer codes but lm_head has none, and the "
                          "builder quantizes every MatMul; quantize the head too (e.g. --set head_bits=8)")
    if head.bits not in (b, 8):
        raise ConfigError(f"--fused-decoder: a {head.bits}-bit head with {b}-bit layers; the builder's graph takes "
                          f"the layers' width or an 8-bit head")
    return {"precision": f"int{b}", "block_size": block, "head_bits": head.bits}


def _save_hf(lm: nn.Module, tok_dir: Path, out: Path) -> None:
    lm.save_pretrained(str(out), safe_serialization=True)
    for f in tok_dir.iterdir():
        if f.is_file() and (f.name.startswith("tokenizer") or f.name in ("special_tokens_map.json", "vocab.json",
                                                                            "merges.txt", "generation_config.json")):
            shutil.copy2(f, out / f.name)


def _run_builder(hf: Path, out: Path, cache: Path, p: dict[str, Any], accuracy_level: int) -> None:
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out),
           "-p", p["precision"], "-e", "cpu", "-c", str(cache)]
    if p["precision"] != "fp32":
        # algo_config=rtn: with the default algorithm an 8-bit tied head names its GatherBlockQuantized inputs after the
        # rtn scheme anyway (onnxruntime-genai 0.18), so the file does not load; the weights are replaced below either way
        opts = [f"block_size={p['block_size']}", f"accuracy_level={accuracy_level}", "algo_config=rtn"]
        if p["head_bits"] == 8 and p["precision"] == "int4":
            opts.append("matmul_mixed_precision=last_matmul:int8")
        cmd += ["--extra_options", *opts]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode or not (out / "model.onnx").is_file():
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ConfigError(f"--fused-decoder: onnxruntime-genai's model builder failed on this model ({tail[0][:200]});"
                          " drop --fused-decoder to export edgekit's own decoder graph")


def _codes_kn(parts: list[WeightCode], block: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Concatenated [K, N] codes, [N, blocks] scales and bits of the parts (output axis first in each code)."""
    cs, ss = [], []
    for c in parts:
        codes = c.codes.detach().cpu().numpy().astype(np.int32)  # [out, in]
        k = codes.shape[1]
        blocks = -(-k // block)
        s = c.scale.detach().cpu().numpy().astype(np.float32)
        if c.group_size is not None:
            if c.group_size != block:
                raise ConfigError(f"--fused-decoder: group {c.group_size} != block {block}")
            s2 = s.reshape(codes.shape[0], blocks)
        else:
            s2 = np.repeat(s.reshape(-1, 1), blocks, 1) if s.ndim else np.full((codes.shape[0], blocks), float(s))
        cs.append(codes)
        ss.append(s2)
    return np.concatenate(cs, 0).T, np.concatenate(ss, 0), parts[0].bits


def _set_int_attr(node: Any, name: str, value: int) -> None:
    import onnx

    for a in node.attribute:
        if a.name == name:
            a.i = value
            return
    node.attribute.append(onnx.helper.make_attribute(name, value))


def put_codes(model_path: Path, codes: dict[str, WeightCode], block: int, accuracy_level: int,
              float_head8: bool = False) -> dict[str, Any]:
    """Replace every MatMulNBits weight of the builder's file with the method's codes (module doc); with
    `float_head8` an 8-bit lm_head runs as a float MatMul of its dequantized codes instead (_float_head). Returns the
    report (layers rewritten, their bits)."""
    import onnx
    from onnx import numpy_helper

    from .nbits import _block, pack

    by = {_norm(k): c for k, c in codes.items()}
    m = onnx.load(str(model_path))
    tied8 = _tie_embedding8(m, by.get("lm_head"))
    inits = {i.name: i for i in m.graph.initializer}
    used: set[str] = set()
    layers: dict[str, int] = {}
    for n in m.graph.node:
        if n.op_type != "MatMulNBits":
            continue
        w_name = n.input[1]
        stem = re.sub(r"\.MatMul\.weight_Q\d+(G\d+)?$", "", w_name)
        if stem == "lm_head":
            mods = ["lm_head"]
        else:
            mm = re.match(r"(model\.layers\.\d+)\.(.+)$", stem)
            if not mm or mm.group(2) not in _PARTS:
                raise ConfigError(f"--fused-decoder: the builder wrote a MatMulNBits '{w_name}' edgekit cannot map to "
                                  "a module; drop --fused-decoder")
            mods = [f"{mm.group(1)}.{p}" for p in _PARTS[mm.group(2)]]
        missing = [x for x in mods if x not in by]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if missing:
            raise ConfigError(f"--fused-decoder: {missing[0]} has no integer codes but the builder quantized it; "
                              "quantize every decoder Linear (no skip patterns) or drop --fused-decoder")
        blk = attrs["block_size"]
        if stem == "lm_head" and by["lm_head"].group_size is None:  # one scale per row: the builder's blocks repeat
            blk = max(blk, _block(int(attrs["K"]), None))  # it; the largest block dividing K stores it fewest times
        ckn, s, bits = _codes_kn([by[x] for x in mods], blk)
        if bits != attrs["bits"]:
            raise ConfigError(f"--fused-decoder: {mods[0]} has {bits}-bit codes but the builder wrote {attrs['bits']}")
        b, sc = pack(ckn, s, bits, blk)
        old_b, old_s = inits[n.input[1]], inits[n.input[2]]
        if int(np.prod(old_b.dims)) != b.size or old_b.dims[0] != b.shape[0]:
            raise ConfigError(f"--fused-decoder: {w_name} is {list(old_b.dims)} in the builder's file, edgekit's codes "
                              f"pack to {list(b.shape)}")
        if len(n.input) > 3 and n.input[3]:
            raise ConfigError(f"--fused-decoder: the builder wrote zero points for {w_name}; symmetric codes expected")
        old_b.CopyFrom(numpy_helper.from_array(b, old_b.name))
        old_s.CopyFrom(numpy_helper.from_array(sc.reshape(b.shape[0], -1) if len(old_s.dims) == 2 else sc,
                                               old_s.name))
        if blk != attrs["block_size"]:
            _reblock(m, n, blk)
        _set_int_attr(n, "accuracy_level", accuracy_level)  # the builder omits it when 0
        used.update(mods)
        for x in mods:
            layers[x] = bits
    left = sorted(set(by) - used)
    if left:
        raise ConfigError(f"--fused-decoder: {left[0]} has codes but no MatMulNBits in the builder's graph")
    if float_head8 and by.get("lm_head") is not None and by["lm_head"].bits == 8:
        _float_head(m, by["lm_head"])
    _save(m, model_path)
    return {"layers": len(layers), "bits": sorted(set(layers.values())), "block_size": block,
            "accuracy_level": accuracy_level, **({"tied_embedding": "8-bit head codes (GatherBlockQuantized)"}
                                                 if tied8 else {})}


def _tie_embedding8(m: Any, head: WeightCode | None) -> bool:
    """At int8 precision the builder keeps a tied embedding as a float Gather (its GatherBlockQuantized path is for
    int4 files only): SmolLM2's 49152 x 576 table stays 113 MB of fp32 next to its 8-bit head. When that table is the
    8-bit head's dequantized codes (tied, checked value by value), read it from the head's codes instead, as the
    builder does for an int4 file with an 8-bit head: Reshape([N, blocks, block] -> [N, K]) + GatherBlockQuantized
    (bits 8, gather axis 0, quantize axis 1, the head's scales). The block is the head MatMulNBits' (a later re-pack
    updates both, _reblock). Returns whether it rewrote."""
    from onnx import helper, numpy_helper

    if head is None or head.bits != 8 or head.offset is not None:
        return False
    nodes = list(m.graph.node)
    gather = next((n for n in nodes if n.op_type == "Gather" and n.name.startswith("/model/embed_tokens/")), None)
    mm = next((n for n in nodes if n.op_type == "MatMulNBits" and n.name.startswith("/lm_head/")), None)
    inits = {i.name: i for i in m.graph.initializer}
    if gather is None or mm is None or gather.input[0] not in inits:
        return False
    table = numpy_helper.to_array(inits[gather.input[0]])
    w = head.dequantize().detach().cpu().numpy().astype(np.float32)  # [N, K]
    if table.shape != w.shape or not np.allclose(table, w, rtol=0, atol=1e-6 * max(1.0, float(np.abs(w).max()))):
        return False  # untied, or not the head's codes: keep the builder's float table
    attrs = {a.name: helper.get_attribute_value(a) for a in mm.attribute}
    shape = "edgekit/embed_tokens/codes_shape"
    m.graph.initializer.append(numpy_helper.from_array(np.array(w.shape, np.int64), shape))
    i = nodes.index(gather)
    m.graph.node.remove(gather)
    m.graph.node.insert(i, helper.make_node("Reshape", [mm.input[1], shape], ["/model/embed_tokens/Reshape/output_0"],
                                            name="/model/embed_tokens/Reshape"))
    m.graph.node.insert(i + 1, helper.make_node(
        "GatherBlockQuantized", ["/model/embed_tokens/Reshape/output_0", gather.input[1], mm.input[2]],
        list(gather.output), name="/model/embed_tokens/GatherBlockQuantized", domain="com.microsoft", bits=8,
        block_size=int(attrs["block_size"]), gather_axis=0, quantize_axis=1))
    m.graph.initializer.remove(inits[gather.input[0]])
    return True


def build(lm: nn.Module, codes: dict[str, WeightCode], tok_dir: Path, out_dir: Path, act8: bool = False) -> dict:
    """Write the fused decoder folder `out_dir` (model.onnx + .data, genai_config.json, tokenizer files) for the causal
    LM `lm` (its weights already the dequantized codes); returns the manifest's weights record."""
    why = available()
    if why:
        raise ConfigError(f"--fused-decoder: {why}; install edgekit's genai extra or drop --fused-decoder")
    p = plan(codes)
    if act8 and p["precision"] == "fp32":
        raise ConfigError("--deploy int8 with --fused-decoder needs integer weights; compress with a weight method")
    level = 4 if act8 else 0
    notes = []
    if not act8 and p["precision"] == "int8":
        p = {**p, "precision": "fp32"}
        notes.append(SLOW_INT8)
    with tempfile.TemporaryDirectory(prefix="edgekit-fused-") as tmp:
        hf = Path(tmp) / "hf"
        _save_hf(lm, tok_dir, hf)  # the weights are the dequantized codes: the fp32 form is exact
        _run_builder(hf, out_dir, Path(tmp) / "cache", p, level)
    rep: dict[str, Any] = {"layers": 0, "bits": []}
    if p["precision"] != "fp32":
        rep = put_codes(out_dir / "model.onnx", codes, p["block_size"], level, float_head8=not act8)
        if not act8 and p["head_bits"] == 8:
            notes.append("the 8-bit head runs as a float MatMul of its dequantized codes: " + SLOW_INT8)
    cfg = json.loads((out_dir / "genai_config.json").read_text())
    return {"kind": "fused", "layout": "onnxruntime-genai model builder (GroupQueryAttention, "
            "SkipSimplifiedLayerNormalization, MatMulNBits)", "weights": "edgekit codes" if rep["layers"] else "float",
            "builder_precision": p["precision"], "head_bits": p["head_bits"], **rep, "notes": notes,
            "context_length": cfg.get("model", {}).get("context_length")}


SLOW_INT8 = ("8-bit MatMulNBits with fp32 compute (the exact weights-only form) decodes slower than a float MatMul on "
             "ONNX Runtime's CPU kernels; --deploy int8 runs 8-bit weights with int8 activations")


def _reblock(m: Any, node: Any, block: int) -> None:
    """Give `node` (a MatMulNBits) and every GatherBlockQuantized reading its weight (a tied embedding, through the
    builder's Reshape) the block size `block`; their shared weight and scales were just re-packed at that block."""
    _set_int_attr(node, "block_size", block)
    srcs = {node.input[1]} | {x.output[0] for x in m.graph.node if x.op_type == "Reshape" and x.input[0] == node.input[1]}
    for x in m.graph.node:
        if x.op_type == "GatherBlockQuantized" and x.input[0] in srcs:
            if x.input[2] != node.input[2]:
                raise ConfigError("--fused-decoder: the tied embedding's scales are not the head's; drop "
                                  "--fused-decoder")
            _set_int_attr(x, "block_size", block)


def _float_head(m: Any, code: WeightCode) -> None:
    """Swap the 8-bit lm_head MatMulNBits of the loaded model `m` for a float MatMul of the head's dequantized codes
    (exact); a tied embedding's GatherBlockQuantized keeps reading the 8-bit codes, an untied head's are dropped."""
    from onnx import helper, numpy_helper

    nodes = list(m.graph.node)
    i, n = next((i, n) for i, n in enumerate(nodes) if n.op_type == "MatMulNBits" and n.name.startswith("/lm_head/"))
    w = code.dequantize().detach().cpu().numpy().astype(np.float32).T.copy()  # [K, N]
    m.graph.initializer.append(numpy_helper.from_array(w, "lm_head.MatMul.weight_float"))
    m.graph.node.remove(n)
    m.graph.node.insert(i, helper.make_node("MatMul", [n.input[0], "lm_head.MatMul.weight_float"], list(n.output),
                                            name="/lm_head/MatMul"))
    if not any(j in (n.input[1], n.input[2]) for x in m.graph.node for j in x.input):
        for init in [x for x in m.graph.initializer if x.name in (n.input[1], n.input[2])]:
            m.graph.initializer.remove(init)


def _save(m: Any, model_path: Path) -> None:
    import onnx

    data = model_path.with_name(model_path.name + ".data")
    data.unlink(missing_ok=True)
    onnx.save_model(m, str(model_path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
