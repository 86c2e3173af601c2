"""Profile / compare / bench JSON -> Markdown table and self-contained HTML (plots embedded as base64 PNG).

`report(dir)` rebuilds both from the JSON alone, so reports can be regenerated without re-measuring. Every
absolute latency is shown with the host load around it, and a high load adds a warning line; a "compare"
document (several artifacts timed interleaved) shows ratios to the first artifact with their spread.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any, Sequence

from ..safety import check_own_file
from ..errors import ConfigError

STEMS = ("bench", "profile")


def _f(x: Any, nd: int = 3) -> str:
    """Compact number formatting; '—' for missing values."""
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.{nd}g}" if abs(x) < 1e-3 or abs(x) >= 1e4 else f"{x:.{nd}f}".rstrip("0").rstrip(".")
    return str(x)


def profile_rows(doc: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header + rows of the profile table (one row per target)."""
    head = ["target", "runtime", "device", "threads", "load ms", "first ms", "p50 ms", "p90 ms", "p99 ms",
            "robust CV", "stable", "host load 1m before/after", "peak MB load/infer", "budget", "roofline ms (est.)",
            "calibrated ms (est.)"]
    rows = []
    for r in doc["results"]:
        if r.get("status") != "ok":
            rows.append([r.get("target", "?"), r.get("runtime", "?"), "error: " + str(r.get("error"))]
                        + [""] * (len(head) - 3))
            continue
        d, w, m = r["device"], r["timing_ms"]["warm"], r["memory_mb"]
        dev = d["used"] + (f" (fallback from {d['requested']})" if d["fallback_used"] else "")
        thr = f"{r['threads']['used']}" + (f" of {r['threads']['requested']}" if r["threads"]["capped_to_host"] else "")
        budget = r.get("memory_budget", {})
        est = r.get("estimate") or {}
        rows.append([r["target"], r["runtime"], dev, thr, _f(r["timing_ms"]["load"]),
                     _f(r["timing_ms"]["first_inference"]), _f(w["p50"]), _f(w["p90"]), _f(w["p99"]),
                     _f(w["robust_cv"], 2), _f(r["stable"]), load_cell(r.get("host_load")),
                     f"{m['load_peak']:.0f}/{m['inference_peak']:.0f}",
                     ("EXCEEDS " if budget.get("exceeds") else "ok ") + _f(budget.get("budget_mb")),
                     _f((est.get("target") or {}).get("roofline_ms")), _f(est.get("calibrated_ms"))])
    return head, rows


def load_cell(hl: dict[str, Any] | None) -> str:
    """'HIGH 5.2/4.9 of 2 cores' from a host-load block ('—' for JSON written before loads were recorded)."""
    if not hl:
        return "—"
    la = [x for x in (hl.get("loadavg_before"), hl.get("loadavg_after")) if x]
    text = "/".join(f"{x[0]:.1f}" for x in la) or "?"
    return ("HIGH " if hl.get("high") else "") + f"{text} of {hl.get('cores', '?')} cores"


def compare_rows(doc: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header + rows of a compare document: one row per (target, artifact), ratios to the first artifact."""
    head = ["target", "runtime", "device", "artifact", "file", "p50 ms", "mean ms", "min ms", "robust CV",
            "ratio vs first (p50)", "ratio 95% CI", "per-round ratio p10-p90", "block ratios min-max",
            "host load 1m before/after"]
    rows = []
    for r in doc["results"]:
        if r.get("status") != "ok":
            rows.append([r.get("target", "?"), r.get("runtime", "?"), "error: " + str(r.get("error"))]
                        + [""] * (len(head) - 3))
            continue
        for f in r["files"]:
            d, w, q = f["device"], f["timing_ms"], f.get("ratio")
            dev = d["used"] + (f" (fallback from {d['requested']})" if d["fallback_used"] else "")
            rows.append([r["target"], r["runtime"], dev, f["artifact"], f["file"], _f(w["p50"]), _f(w["mean"]),
                         _f(w["min"]), _f(w["robust_cv"], 2), "1 (reference)" if q is None else f"{q['p50']:.3f}",
                         "" if q is None else f"{q['ci95'][0]:.3f}-{q['ci95'][1]:.3f}",
                         "" if q is None else f"{q['per_round']['p10']:.3f}-{q['per_round']['p90']:.3f}",
                         "" if q is None else f"{q['block_range'][0]:.3f}-{q['block_range'][1]:.3f}",
                         load_cell(r.get("load"))])
    return head, rows


def bench_rows(doc: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header + rows of the bench matrix (variant x target)."""
    head = ["variant", "target", "status", "size MB", "fidelity", "p50 ms", "speed-up vs fp32", "peak MB",
            "host load 1m before/after", "note"]
    rows = []
    for r in doc["rows"]:
        fid = r.get("fidelity") or {}
        src = fid.get("inputs") or ""
        on = ", your data" if "--data" in src else ", random inputs" if src else ""
        fid_s = f"{_f(fid.get('value'))} ({fid.get('metric')}{on})" if fid.get("value") is not None else "—"
        dep = r.get("deploy") or {}
        variant = r["variant"] + (f" -> {dep['form']}" if dep.get("form") else "")  # what --deploy kept
        rows.append([variant, r["target"], r["status"] + (f": {r['reason']}" if r.get("reason") else ""),
                     _f(r.get("size_mb")), fid_s, _f(r.get("p50_ms")), _f(r.get("speedup"), 2),
                     _f(round(r["peak_mb"], 1) if r.get("peak_mb") is not None else None),
                     load_cell((r.get("profile") or {}).get("host_load")),
                     r.get("slower", {}).get("summary", "") if r.get("slower") else ""])
    if any(r.get("placement") for r in doc["rows"]):  # --executor ray: where each profile ran
        head.append("ran on")
        for row, r in zip(rows, doc["rows"]):
            row.append(ran_on((r.get("placement") or {}).get("profile")))
    return head, rows


def ran_on(p: dict[str, Any] | None) -> str:
    """A Ray row's profile placement: the device node that advertises the target, or this host (fallback)."""
    if not p:
        return "—"
    node = f"{p.get('hostname')} node {(p.get('node_id') or '?')[:8]}"
    return f"device {node}" if p.get("mode") == "device" else f"fallback: driver host {node} (+ estimate)"


def decode_rows(doc: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The table of a decode profile (decoder artifacts: TTFT, tokens/s, floor, decode-step ops)."""
    from ..genai.speed import decode_rows as rows

    return rows(doc)


def _rows(doc: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Pick the table for a document kind."""
    kind = doc.get("kind")
    if kind == "decode":
        return decode_rows(doc)
    return bench_rows(doc) if kind == "bench" else compare_rows(doc) if kind == "compare" else profile_rows(doc)


def provenance_line(doc: dict[str, Any]) -> str:
    """One line: the command, commit, CPU/ISA and load at start (empty for JSON written without provenance)."""
    p = doc.get("provenance")
    if not p:
        return ""
    git = p.get("git") or {}
    commit = f"commit {git['commit'][:12]}{' (dirty)' if git.get('dirty') else ''}" if git.get("commit") else \
        "no git commit"
    la = (p.get("load") or {}).get("loadavg")
    return (f"Command: `{p.get('command', '')}`; {commit}; {p.get('cpu')} ({p.get('cores')} cores, "
            f"{' '.join(p.get('isa') or []) or 'ISA unknown'}); load average at start "
            f"{la[0] if la else '?'}; {p.get('timestamp', '')}.")


def markdown(doc: dict[str, Any]) -> str:
    """GitHub-flavoured Markdown: the table, then per-target top ops; estimates labelled."""
    head, rows = _rows(doc)
    esc = [[c.replace("|", "\\|") for c in row] for row in rows]
    lines = [f"# edgekit {doc.get('kind', 'profile')} ({doc.get('created', '')})", "",
             f"Host: {doc.get('host', {}).get('cpu', '?')}, {doc.get('host', {}).get('cores', '?')} cores. "
             "Latencies are measured on this host with each target's runtime, device (or fallback) and threads; "
             "columns marked (est.) are estimates for the real device.", ""]
    if provenance_line(doc):
        lines += [provenance_line(doc), ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in esc]
    for note in notes(doc):
        lines += ["", note]
    return "\n".join(lines) + "\n"


def notes(doc: dict[str, Any]) -> list[str]:
    """Per-target lines: load warnings, top ops, ops that left the requested device, profiler limits, slow-down
    explanations, and for a compare document what its ratio columns mean."""
    out = []
    if doc.get("kind") == "compare":
        out.append(f"Ratios are to the first artifact ({doc.get('reference')}), all artifacts timed in one "
                   "interleaved loop per target (order rotating each round). 95% CI: paired bootstrap of the ratio "
                   "of medians over rounds; per-round ratio: quantiles of each round's ratio; block ratios: the "
                   "ratio of medians in 5 consecutive chunks of rounds (the run-to-run spread).")
    for r in doc.get("results", []) + [row.get("profile") or {} for row in doc.get("rows", [])]:
        warn = (r.get("host_load") or r.get("load") or {}).get("warning")
        if warn:
            out.append(f"{r.get('target', '?')}: {warn}")
    if doc.get("kind") == "decode":
        out.append(f"Decode: a {doc['prompt_tokens']}-token prompt (seeded random ids), then {doc['new_tokens']} "
                   "greedy tokens on the KV cache (end-of-sequence ignored), by the numpy loop with each export's "
                   "validated settings; ratios to the first artifact, medians over interleaved rounds. Floor = the "
                   "export's weight bytes / this host's one-thread copy bandwidth "
                   f"({doc['bandwidth_gbs_single_thread_copy']:.1f} GB/s): every weight is read once per token.")
        for r in doc.get("results", []):
            for f in r.get("files", []):
                ops = f.get("decode_step_ops") or {}
                if ops.get("top"):
                    out.append(f"{r['target']} {Path(f['artifact']).name}: one decode step, "
                               f"{ops['nodes_per_step']} nodes, {ops['total_ms']:.2f} ms in kernels: " + ", ".join(
                                   f"{o['op_type']} {o['time_ms']:.2f} ms x{o['count']} ({o['share'] * 100:.0f}%)"
                                   for o in ops["top"][:6]))
    for r in doc.get("results", []):
        ops = r.get("ops") or {}
        if ops.get("top"):
            out.append(f"{r['target']} top ops ({ops['source']}): " + ", ".join(
                f"{o['op_type']} {_f(o['time_ms'])} ms ({o['share'] * 100:.0f}%)" for o in ops["top"][:5]))
    for r in doc.get("results", []) + [row.get("profile") or {} for row in doc.get("rows", [])]:
        ops = r.get("ops") or {}
        if ops.get("fallback_ops"):
            out.append(f"{r['target']}: ran off the requested device: {', '.join(ops['fallback_ops'])}. "
                       f"{ops.get('note', '')}".strip())
        elif ops.get("note"):
            out.append(f"{r['target']}: {ops['note']}")
    for e in doc.get("hardware_estimates", []):
        out.append(f"{e['method']}: ESTIMATE, not measured ({e['label']}): {e['summary']}")
    for row in doc.get("rows", []):
        if row.get("slower"):
            out.append(f"{row['variant']} on {row['target']}: {row['slower']['summary']}")
    return list(dict.fromkeys(out))


def pareto_mask(points: Sequence[tuple[float, float, float]]) -> list[bool]:
    """True for points not dominated on (lower latency, lower size, higher fidelity)."""
    def dominates(q: tuple[float, float, float], p: tuple[float, float, float]) -> bool:
        better_eq = q[0] <= p[0] and q[1] <= p[1] and q[2] >= p[2]
        return better_eq and (q[0] < p[0] or q[1] < p[1] or q[2] > p[2])
    return [not any(dominates(q, p) for q in points if q is not p) for p in points]


def _png(fig: Any) -> str:
    """Figure -> base64 PNG (and close it)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _series(doc: dict[str, Any]) -> list[tuple[str, str, list[float]]]:
    """(target, label, quantiles) for every measured result, for distribution plots."""
    out = []
    for r in doc.get("rows", doc.get("results", [])):
        prof = (r.get("profile") if "variant" in r else r) or {}
        q = ((prof.get("timing_ms") or {}).get("warm") or {}).get("quantiles_ms")
        if q:
            out.append((r["target"], r.get("variant", r["target"]), q))
    for r in doc.get("results", []) if doc.get("kind") == "compare" else []:
        for f in r.get("files") or []:
            q = (f.get("timing_ms") or {}).get("quantiles_ms")
            if q:
                out.append((r["target"], f["artifact"], q))
    return out


def plots(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(caption, base64 PNG) pairs: Pareto scatter per target (bench) and latency distributions per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    if doc.get("kind") == "bench":
        for tgt in dict.fromkeys(r["target"] for r in doc["rows"]):
            pts = [r for r in doc["rows"] if r["target"] == tgt and r.get("p50_ms") is not None]
            if not pts:
                continue
            fids = [(r.get("fidelity") or {}).get("value") or 0.0 for r in pts]
            xyz = [(r["p50_ms"], r.get("size_mb") or 0.0, f) for r, f in zip(pts, fids)]
            mask = pareto_mask(xyz)
            fig, ax = plt.subplots(figsize=(5.5, 4))
            sc = ax.scatter([p[1] for p in xyz], [p[0] for p in xyz], c=fids, cmap="viridis", vmin=0, vmax=1, s=60,
                            edgecolors=["black" if m else "none" for m in mask], linewidths=1.5)
            front = sorted((p for p, m in zip(xyz, mask) if m), key=lambda p: p[1])
            ax.plot([p[1] for p in front], [p[0] for p in front], "k--", lw=0.8, label="Pareto front")
            for r, p in zip(pts, xyz):
                ax.annotate(r["variant"], (p[1], p[0]), fontsize=8, xytext=(4, 4), textcoords="offset points")
            fig.colorbar(sc, ax=ax, label="fidelity vs fp32")
            ax.set(xlabel="size (MB)", ylabel="p50 latency (ms)", title=f"{tgt}: latency vs size vs fidelity")
            ax.legend(fontsize=8)
            out.append((f"{tgt}: latency vs size, colour = fidelity, outlined = Pareto-optimal", _png(fig)))
    by_target: dict[str, list[tuple[str, list[float]]]] = {}
    for tgt, label, q in _series(doc):
        by_target.setdefault(tgt, []).append((label, q))
    for tgt, series in by_target.items():
        fig, ax = plt.subplots(figsize=(5.5, 3.2))
        for label, q in series:
            ax.plot(q, [i / (len(q) - 1) for i in range(len(q))], label=label)
        ax.set(xlabel="latency (ms)", ylabel="fraction of runs", title=f"{tgt}: warm latency distribution")
        ax.set_xscale("log")
        ax.legend(fontsize=8)
        out.append((f"{tgt}: cumulative distribution of warm latencies", _png(fig)))
    return out


def html_page(doc: dict[str, Any]) -> str:
    """One self-contained HTML file: table, notes and embedded plots."""
    head, rows = _rows(doc)
    table = "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows) + "</table>"
    figs = "".join(f"<figure><img src='data:image/png;base64,{b64}'><figcaption>{html.escape(cap)}</figcaption>"
                   "</figure>" for cap, b64 in plots(doc))
    note_html = "".join(f"<p>{html.escape(n)}</p>" for n in notes(doc))
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 6px}th{background:#eee}figure{display:inline-block}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>edgekit {doc.get('kind')}</title>"
            f"<style>{style}</style></head><body><h1>edgekit {html.escape(str(doc.get('kind')))}</h1>"
            f"<p>{html.escape(str(doc.get('created', '')))}; host {html.escape(str(doc.get('host', {}).get('cpu')))}."
            " Columns marked (est.) are estimates, not measurements.</p>"
            f"<p>{html.escape(provenance_line(doc))}</p>"
            f"{table}{note_html}{figs}</body></html>")


def write_reports(doc: dict[str, Any], out_dir: Path, stem: str | None = None) -> list[Path]:
    """Write STEM.json, STEM.md and STEM.html into out_dir."""
    stem = stem or doc.get("kind", "profile")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.md", out_dir / f"{stem}.html"]
    for p in paths:  # never overwrite a file edgekit did not write
        check_own_file(p)
    paths[0].write_text(json.dumps(doc, indent=1, default=str))
    paths[1].write_text(markdown(doc))
    paths[2].write_text(html_page(doc))
    return paths


def report(path: str | Path) -> list[Path]:
    """Rebuild Markdown + HTML from bench.json / profile.json in a folder (or from a JSON file)."""
    p = Path(path)
    files = [p] if p.is_file() else [p / f"{s}.json" for s in STEMS if (p / f"{s}.json").is_file()]
    if not files:
        raise ConfigError(f"{p}: no bench.json or profile.json found; pass the -o folder of `edgekit bench` "
                          "or `edgekit profile`")
    out = []
    for f in files:
        try:
            doc = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{f}:{e.lineno}: not valid JSON ({e.msg}); re-run the measurement") from None
        stem = f.stem
        for q in (f.parent / f"{stem}.md", f.parent / f"{stem}.html"):
            check_own_file(q)
        (f.parent / f"{stem}.md").write_text(markdown(doc))
        (f.parent / f"{stem}.html").write_text(html_page(doc))
        out += [f.parent / f"{stem}.md", f.parent / f"{stem}.html"]
    return out
