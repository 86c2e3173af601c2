"""Integer weights as ONNX Runtime's `MatMulNBits` kernel (com.microsoft): block-wise 4- or 8-bit weights that the
CPU kernel reads packed, which is what makes decode (one read of every weight per token) faster than FP32.

The input is an edgekit graph whose method codes became `DequantizeLinear(int4|int8 initializer, per-channel scale)`
feeding a MatMul (export.qdq). A per-output-channel scale is a block-wise scale repeated over the blocks of that
channel, and a symmetric code c is the unsigned code c + 2^(bits-1) with MatMulNBits' default zero point 2^(bits-1);
so the rewrite is exact (the last block is padded with zero codes when K is not a multiple of the block size).
`accuracy_level` 0 computes in fp32 (same numbers as DequantizeLinear + MatMul up to summation order); 4 quantizes the
activations to int8 per block on the fly (int8 dot products: faster on VNNI CPUs, ~1% error per matmul measured
here), so a model run that way is W4A8/W8A8 with dynamic activation ranges, and is validated as such.

Group-wise codes (RTN `group_size`, exported as a blocked DequantizeLinear) map one to one: MatMulNBits' block_size
is the group size (a power of two >= 16) and its [N * blocks] scales are the group scales.

Grids that are not uniform integers (FP4 E2M1 codes, `lut8` tables) have no MatMulNBits form: those layers keep
DequantizeLinear + MatMul and are listed in the report with the reason.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

_INT = {TensorProto.INT4: 4, TensorProto.INT8: 8}


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def pack(codes_kn: np.ndarray, scale_n: np.ndarray, bits: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric codes of a [K, N] MatMul weight and its per-N scale (or [N, blocks] block scales) -> MatMulNBits
    B [N, blocks, blob] uint8 and scales [N * blocks] float32."""
    k, n = codes_kn.shape
    half = 1 << (bits - 1)
    blocks = -(-k // block_size)
    u = (codes_kn.T.astype(np.int32) + half).astype(np.uint8)
    u = np.concatenate([u, np.full((n, blocks * block_size - k), half, np.uint8)], 1).reshape(n, blocks, block_size)
    b = (u[..., 0::2] | (u[..., 1::2] << 4)).astype(np.uint8) if bits == 4 else u
    if scale_n.ndim == 2:
        if scale_n.shape != (n, blocks):
            raise ValueError(f"block scales {scale_n.shape} do not match {n} channels x {blocks} blocks")
        return b, scale_n.astype(np.float32).reshape(-1)
    return b, np.repeat(scale_n.astype(np.float32)[:, None], blocks, 1).reshape(-1)


def _perm(node: onnx.NodeProto) -> list[int]:
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), [])


def _block(k: int, block_size: int | None) -> int:
    """The given block size, or the largest of 128/64/32/16 that divides K (no padded blocks), else 32."""
    if block_size:
        return block_size
    return next((b for b in (128, 64, 32, 16) if k % b == 0), 32)


def to_matmulnbits(src: Path, dst: Path, block_size: int | None = None, accuracy_level: int = 0,
                   bits: tuple[int, ...] = (4, 8)) -> dict:
    """Rewrite every DequantizeLinear(int weight, per-channel scale) -> MatMul pair of `src` into MatMulNBits, save
    to `dst`; returns {"layers": n, "bits": [...], "kept": {name: why}, "block_sizes", "accuracy_level"}.
    block_size None: per layer, the largest power of two <= 128 that divides K (per-channel scales are exact at any
    block size, so the choice only trades padding against scale reads). `bits`: which weight widths to rewrite."""
    if block_size is not None and (block_size < 16 or block_size & (block_size - 1)):
        raise ValueError(f"block_size must be a power of two >= 16, not {block_size}")
    blocks_seen: set[int] = set()
    proto = onnx.load(str(src))
    g = proto.graph
    inits = {i.name: i for i in g.initializer}
    users = _consumers(g)
    new_nodes, drop_nodes, drop_inits, kept, bits_seen = [], set(), set(), {}, set()
    outputs = {o.name for o in g.output}
    for dq in [n for n in g.node if n.op_type == "DequantizeLinear"]:
        q, s = (inits.get(x) for x in dq.input[:2])
        w = dq.output[0]
        mms = [(u, False) for u in users.get(w, []) if u.op_type == "MatMul" and u.input[1] == w]
        tps = [t for t in users.get(w, []) if t.op_type == "Transpose" and _perm(t) == [1, 0]]
        mms += [(u, True, t) for t in tps for u in users.get(t.output[0], [])  # tied heads: MatMul(x, W^T)
                if u.op_type == "MatMul" and u.input[1] == t.output[0]]
        if not mms:
            continue
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        group = next((a.i for a in dq.attribute if a.name == "block_size"), 0)
        why = ("weights are not an integer initializer" if q is None or q.data_type not in _INT else
               f"{_INT[q.data_type]}-bit weights not requested" if _INT[q.data_type] not in bits else
               "has a zero point" if len(dq.input) > 2 and dq.input[2] else
               "not a 2-D weight" if s is None or len(q.dims) != 2 else "")
        transposed = [m[1] for m in mms]
        if not why and any(transposed) != all(transposed):
            why = "used both as W and as W^T"
        elif not why and group:  # blocks run along K: axis 0 of a [K, N] weight, axis 1 of a transposed [N, K] one
            if axis != (1 if transposed[0] else 0):
                why = "blocks do not run along the input axis"
            elif group < 16 or group & (group - 1):
                why = f"group size {group} is not a power of two >= 16 (MatMulNBits block sizes)"
            elif block_size is not None and block_size != group:
                why = f"group size {group} differs from the requested block size {block_size}"
        elif not why and (axis != (0 if transposed[0] else 1) or list(s.dims) != [q.dims[axis]]):
            why = "not one scale per output channel"
        if why:
            kept[w] = why
            continue
        nb = _INT[q.data_type]
        codes = numpy_helper.to_array(q).astype(np.int32)
        codes = codes.T if transposed[0] else codes  # [K, N]
        k, n = codes.shape
        bs = group or _block(k, block_size)
        blocks_seen.add(bs)
        scale = numpy_helper.to_array(s)
        if group:  # [K/g, N] (or [N, K/g] for a transposed weight) -> [N, blocks]
            scale = scale if transposed[0] else scale.T
        b, sc = pack(codes, scale, nb, bs)
        inits_new = [numpy_helper.from_array(b, f"{w}__nbits_B"), numpy_helper.from_array(sc, f"{w}__nbits_s")]
        g.initializer.extend(inits_new)
        for mm, *_ in mms:
            new_nodes.append((mm, helper.make_node(
                "MatMulNBits", [mm.input[0], inits_new[0].name, inits_new[1].name], list(mm.output),
                name=f"{mm.name or w}__nbits", domain="com.microsoft", K=k, N=n, bits=nb, block_size=bs,
                accuracy_level=accuracy_level)))
            drop_nodes.add(id(mm))
        bits_seen.add(nb)
        for t in tps:
            if all(id(u) in drop_nodes for u in users.get(t.output[0], [])) and t.output[0] not in outputs:
                drop_nodes.add(id(t))
        if all(id(u) in drop_nodes for u in users.get(w, [])) and w not in outputs:
            drop_nodes.add(id(dq))
            drop_inits.update(dq.input[:2])
    repl = {id(mm): node for mm, node in new_nodes}
    nodes = [repl.get(id(n), n) for n in g.node if id(n) not in drop_nodes or id(n) in repl]
    del g.node[:]
    g.node.extend(nodes)
    still = {i for n in g.node for i in n.input}
    for name in drop_inits - still:
        g.initializer.remove(inits[name])
    if not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save_model(proto, str(dst))
    return {"layers": len(new_nodes), "bits": sorted(bits_seen), "block_sizes": sorted(blocks_seen),
            "accuracy_level": accuracy_level, "kept": kept}
