"""Decode metrics of decoder artifacts (`edgekit profile ART... --target T` when the artifacts carry a KV-cache decoder):
time to first token for a P-token prompt, decode tokens/s over N new tokens, and the bandwidth floor of a decode step.

What is measured: each artifact's export for the target's runtime, opened once with the settings it was validated with
(the manifest's runtime_config), driven by the numpy greedy loop (`genai.loop`: prefill in one call, then one token
per call on the cache; end-of-sequence ignored so every run decodes N tokens), at the target's thread count capped by
this host's cores. With two or more artifacts the runs are interleaved, the order rotating every round, and each
artifact's decode and TTFT are also given as a ratio to the first artifact's (the median of the per-round ratios, and
their range). The prompt is P token ids drawn from the vocabulary with a fixed seed: decode speed does not depend on
the text, and random ids need no tokenizer run.

The floor: decode reads every weight once per token, so the export's weight bytes divided by this host's memory copy
bandwidth (numpy, one thread; a lower bound of the real bandwidth, so the floor is an upper bound of the true one) is
what no kernel can beat. A decode far above its floor spends its time outside the weight reads (per-op overhead,
attention, cache copies), which the per-op profile of one decode step (ONNX Runtime's profiler) then shows.

Torch-free: numpy and the runtime only.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..artifact import now_iso, read_manifest
from ..errors import ConfigError
from .loop import PastIO, greedy, open_decoder, ort_runner, validated_config

PROMPT_TOKENS = 128
NEW_TOKENS = 128


def is_decoder_artifact(path: str | Path) -> bool:
    """True for an artifact folder whose manifest declares a KV-cache decoder (read unverified: a cheap dispatch test;
    the profile itself verifies the manifest)."""
    m = Path(path) / "manifest.json"
    if not m.is_file():
        return False
    try:
        return "decoder" in json.loads(m.read_text())
    except (OSError, ValueError):
        return False


def _file_bytes(path: Path) -> int:
    """The export's weight bytes: the file plus its OpenVINO .bin or ONNX external data."""
    extra = [path.with_suffix(".bin")] if path.suffix == ".xml" else list(path.parent.glob(path.name + ".data"))
    return path.stat().st_size + sum(p.stat().st_size for p in extra if p.is_file())


def _threads(target: Any) -> int:
    from ..targets.host import usable_cores

    cores = usable_cores()
    return max(1, min(target.threads or cores, cores))


def _open(art: Path, man: dict, runtime: str, threads: int):
    entry = man.get("exports", {}).get(runtime)
    if entry is None:
        raise ConfigError(f"{art} has no {runtime} export (has: {', '.join(man.get('exports', {})) or 'none'}); "
                          f"add one with `edgekit export {art} --target {runtime}`")
    path = art / entry["file"]
    cfg = validated_config(entry.get("validation"), runtime)
    # several decoders stay open and run in turn: ONNX Runtime threads stop spinning when a run ends, or they take
    # the cores from the next decoder's prefill (runtimes.open_session's spin_stop)
    run_cfg = {**cfg, "session.force_spinning_stop": "1"} if runtime == "onnxruntime" else cfg
    return path, cfg, open_decoder(path, runtime, man["decoder"], threads, run_cfg)


def decode_step_ops(path: Path, man: dict, cfg: dict, threads: int, prompt: list[int], runs: int = 8) -> dict:
    """Per-op-type time of one decode step (1 new token on a cache of len(prompt)) in ONNX Runtime's profiler."""
    import onnxruntime as ort

    from ..profile.ops import ort_events_summary

    info = man["decoder"]
    so = ort.SessionOptions()
    for k, v in cfg.items():
        so.add_session_config_entry(k, str(v))
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    dec = PastIO(ort_runner(sess, info["layers"]), info["layers"], info["kv_heads"], info["head_dim"])
    dec.step(prompt)  # the cache of the prompt, computed unprofiled
    past, length = dec.past, dec.length
    with tempfile.TemporaryDirectory(prefix="edgekit-decode-ops-") as tmp:
        so.enable_profiling, so.profile_file_prefix = True, str(Path(tmp) / "ort")
        prof_sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        feeds = {"input_ids": np.asarray([[prompt[-1]]], np.int64),
                 "attention_mask": np.ones((1, length + 1), np.int64),
                 "position_ids": np.asarray([[length]], np.int64)}
        for i in range(info["layers"]):
            feeds[f"past_key_values.{i}.key"], feeds[f"past_key_values.{i}.value"] = past[2 * i], past[2 * i + 1]
        run = ort_runner(prof_sess, info["layers"])
        for _ in range(runs + 1):
            run(feeds)
        events = json.loads(Path(prof_sess.end_profiling()).read_text())
    out = ort_events_summary(events, runs)
    out["nodes_per_step"] = sum(v["count"] for v in out["by_type"].values())
    return out


def decode_profile(arts: Sequence[str | Path], targets: Sequence[Any], rounds: int | None = None,
                   prompt_tokens: int = PROMPT_TOKENS, new_tokens: int = NEW_TOKENS, op_profile: bool = True,
                   on_step: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Decode metrics of decoder artifacts on each target (see the module doc); ratios to the first artifact."""
    from ..profile import host_info
    from ..profile.runinfo import provenance
    from ..targets import load_target
    from ..targets.host import copy_bandwidth_gbs

    paths = [Path(a) for a in arts]
    mans = [read_manifest(a) for a in paths]  # verified: checksums, paths, no symlinks
    for a, m in zip(paths, mans):
        if "decoder" not in m:
            raise ConfigError(f"{a} is not a decoder artifact; profile decoder artifacts (made with --kv-cache) "
                              "apart from other models")
    if len({m["decoder"]["vocab"] for m in mans}) > 1:
        raise ConfigError("these decoder artifacts have different vocabularies; compare variants of one model")
    tgts = [load_target(t) for t in targets]
    for t in tgts:
        if t.runtime not in ("onnxruntime", "openvino"):
            raise ConfigError(f"target {t.name}: decode metrics run on onnxruntime or openvino, not {t.runtime}")
    if rounds is not None and rounds < 1:
        raise ConfigError(f"--rounds {rounds}: pass 1 or more")
    n_rounds = rounds or 3
    ctx = min(m["decoder"]["context_length"] for m in mans)
    if prompt_tokens + new_tokens > ctx:
        raise ConfigError(f"a {prompt_tokens}-token prompt + {new_tokens} new tokens exceed the context of "
                          f"{ctx} tokens")
    vocab = mans[0]["decoder"]["vocab"]
    prompt = np.random.default_rng(0).integers(0, vocab, prompt_tokens).tolist()
    on_step("bandwidth")
    bw = copy_bandwidth_gbs()
    results = []
    for t in tgts:
        threads = _threads(t)
        on_step(f"{t.name}: load")
        opened = [_open(a, m, t.runtime, threads) for a, m in zip(paths, mans)]
        runs: list[dict[str, list]] = [{"ttft": [], "tps": [], "tokens": []} for _ in paths]
        for r in range(n_rounds + 1):  # round 0 warms up (allocations, kernel selection) and is not kept
            order = list(range(len(paths)))
            order = order[r % len(order):] + order[:r % len(order)]
            for i in order:
                on_step(f"{t.name}: round {r}/{n_rounds}, {paths[i].name}")
                g = greedy(opened[i][2], prompt, new_tokens)
                if r:
                    runs[i]["ttft"].append(g.times[0])
                    runs[i]["tps"].append((len(g.times) - 1) / (g.times[-1] - g.times[0]))
                    runs[i]["tokens"] = g.tokens
        files = []
        for i, (a, (path, cfg, _)) in enumerate(zip(paths, opened)):
            tps, ttft = np.asarray(runs[i]["tps"]), np.asarray(runs[i]["ttft"])
            ratio_d, ratio_t = tps / np.asarray(runs[0]["tps"]), ttft / np.asarray(runs[0]["ttft"])
            nbytes = _file_bytes(path)
            same = sum(x == y for x, y in zip(runs[i]["tokens"], runs[0]["tokens"]))
            row = {"artifact": str(a), "file": str(path.relative_to(a)), "precision": mans[i].get("exports", {})
                   .get(t.runtime, {}).get("precision"),
                   "ttft_ms": float(np.median(ttft) * 1e3), "decode_tokens_per_s": float(np.median(tps)),
                   "ms_per_token": float(1e3 / np.median(tps)), "weights_mb": nbytes / 1e6,
                   "floor_ms_per_token": nbytes / (bw * 1e9) * 1e3,
                   "decode_ratio": {"p50": float(np.median(ratio_d)), "range": [float(ratio_d.min()),
                                                                                 float(ratio_d.max())]},
                   "ttft_ratio": {"p50": float(np.median(ratio_t)), "range": [float(ratio_t.min()),
                                                                               float(ratio_t.max())]},
                   "greedy_tokens_equal_to_first": f"{same}/{len(runs[i]['tokens'])}"}
            if op_profile and t.runtime == "onnxruntime":
                on_step(f"{t.name}: decode-step op profile, {a.name}")
                row["decode_step_ops"] = decode_step_ops(path, mans[i], cfg, threads, prompt)
            files.append(row)
        results.append({"target": t.name, "runtime": t.runtime, "threads": threads, "status": "ok",
                        "rounds": n_rounds, "files": files})
    return {"schema": 1, "kind": "decode", "created": now_iso(), "artifacts": [str(a) for a in paths],
            "reference": str(paths[0]), "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
            "bandwidth_gbs_single_thread_copy": bw, "host": host_info(),
            "provenance": provenance(None, threads=max(_threads(t) for t in tgts)), "results": results}


def decode_rows(doc: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Table rows for the CLI: one per target x artifact."""
    head = ["target", "artifact", "TTFT ms", "decode tok/s", "ms/token (floor)", "decode speed vs first",
            "TTFT time vs first",
            "weights MB", "top decode-step ops"]
    rows = []
    for r in doc["results"]:
        for f in r["files"]:
            ops = f.get("decode_step_ops")
            top = ", ".join(f"{o['op_type']} {o['share'] * 100:.0f}%" for o in ops["top"][:3]) if ops else ""
            if ops:
                top += f" ({ops['nodes_per_step']} nodes)"
            rows.append([r["target"], Path(f["artifact"]).name, f"{f['ttft_ms']:.1f}",
                         f"{f['decode_tokens_per_s']:.1f}", f"{f['ms_per_token']:.1f} ({f['floor_ms_per_token']:.1f})",
                         f"{f['decode_ratio']['p50']:.2f}x", f"{f['ttft_ratio']['p50']:.2f}x",
                         f"{f['weights_mb']:.1f}", top])
    return head, rows


__all__ = ["decode_profile", "decode_rows", "decode_step_ops", "is_decoder_artifact"]
