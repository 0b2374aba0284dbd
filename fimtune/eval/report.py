"""The eval report on disk: report.json (everything), report.md (tables a person reads) and report.png (a chart)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

MAIN_METRICS = ("exact_match", "edit_similarity")
LABELS = {
    "exact_match": "exact match",
    "edit_similarity": "edit similarity",
}


def label(metric: str) -> str:
    return LABELS.get(metric, metric.replace("_", " "))


def report_paths(out: str | Path) -> tuple[Path, Path, Path, Path]:
    """report.json, and beside it report.md, report.png and report.examples.jsonl (same stem)."""
    path = Path(out).expanduser()
    if path.suffix != ".json":
        path = path.with_name(path.name + ".json")
    return path, path.with_suffix(".md"), path.with_suffix(".png"), path.with_suffix(".examples.jsonl")


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_report(report: Mapping[str, Any], examples: Sequence[Mapping[str, Any]], out: str | Path) -> list[Path]:
    """Write the four files (each atomically); returns their paths."""
    json_path, md_path, png_path, rows_path = report_paths(out)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(json_path, (json.dumps(report, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    _atomic_write(md_path, markdown(report).encode("utf-8"))
    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in examples)
    _atomic_write(rows_path, lines.encode("utf-8"))
    tmp_png = png_path.with_name(png_path.name + ".partial.png")
    chart(report, tmp_png)
    os.replace(tmp_png, png_path)
    return [json_path, md_path, png_path, rows_path]


# --- markdown --------------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], right_from: int = 1) -> list[str]:
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    out += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return out


def metric_names(report: Mapping[str, Any]) -> list[str]:
    """The metrics scored for at least one example, in METRICS order (main ones first)."""
    from fimtune.eval.metrics import METRICS

    return [m for m in METRICS if any(model.get(m) is not None for model in report["models"].values())]


def _groups_table(report: Mapping[str, Any], key: str, title: str) -> list[str]:
    models = list(report["models"])
    groups = sorted({g for m in models for g in report["models"][m][key]})
    if not groups:
        return []
    header = [title, "n"] + [f"{m}: {label(x)}" for m in models for x in MAIN_METRICS]
    rows = []
    for g in groups:
        first = report["models"][models[0]][key].get(g, {})
        row: list[Any] = [g, first.get("n", "")]
        for m in models:
            stats = report["models"][m][key].get(g, {})
            row += [stats.get(x) for x in MAIN_METRICS]
        rows.append(row)
    return [f"## By {title}", "", "Stop rules on.", "", *_table(header, rows), ""]


def markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown: setup, one row per model (with and without stop rules), the base-vs-tuned
    difference with its bootstrap interval, then the breakdowns by span kind and language."""
    corpus, timing = report["corpus"], report["timing"]
    engine, template = report["engine"], report["template"]
    where = (f" on {engine['device']}" if engine.get("device") else "") + (
        f" at {engine['endpoint']}" if engine.get("endpoint") else ""
    )
    lines = [
        "# fimtune eval",
        "",
        f"- corpus: `{corpus['folder']}`, split `{corpus['split']}`: {corpus['examples_evaluated']} of "
        f"{corpus['examples_in_split']} examples (seed {report['settings']['seed']})",
        f"- engine: {engine['name']}{where}",
        f"- template: {template['name']} ({template['source']}), prompt budget {template['budgets']['max_tokens']} "
        f"tokens, at most {report['max_tokens']} generated",
        f"- time: {timing['seconds']:.1f}s in all, {timing['completions']} completions at "
        f"{timing['completions_per_s']:.2f}/s",
        "",
        "## Results",
        "",
        "Scores with the stop rules on (what the editor would insert), and raw (cut only at the end token and the "
        "stop strings). Means over the examples a metric applies to.",
        "",
    ]
    names = metric_names(report)
    header = ["model", "n", *[label(m) for m in names], *[f"{label(m)} (raw)" for m in MAIN_METRICS], "examples/s"]
    rows = []
    for name, model in report["models"].items():
        raw = model["raw"]
        speed = model["timing"]["examples_per_s"]
        rows.append([name, model["n"], *[model.get(m) for m in names], *[raw.get(m) for m in MAIN_METRICS], speed])
    lines += [*_table(header, rows), ""]
    lines += [f"- {name}: {model['description']}" for name, model in report["models"].items()]
    lines.append("")
    comparison = report.get("comparison")
    if comparison:
        a, b = comparison["a"], comparison["b"]
        pct = round(100 * comparison["confidence"])
        lines += [
            f"## {b} vs {a}",
            "",
            f"Difference {b} − {a} on the same examples, with a {pct}% paired bootstrap interval "
            f"({comparison['n_resamples']} resamples, seed {comparison['seed']}). An interval that excludes 0 is a "
            "difference this sample supports.",
            "",
        ]
        crows = []
        for rules in ("rules", "raw"):
            for metric, d in comparison[rules].items():
                crows.append(
                    [
                        label(metric) + (" (raw)" if rules == "raw" else ""),
                        d["n"],
                        d["mean_a"],
                        d["mean_b"],
                        f"{d['diff']:+.3f}",
                        f"[{d['low']:+.3f}, {d['high']:+.3f}]",
                    ]
                )
        lines += [*_table(["metric", "n", a, b, "difference", f"{pct}% interval"], crows), ""]
    lines += _groups_table(report, "by_span_kind", "span kind")
    lines += _groups_table(report, "by_language", "language")
    lines += ["## How completions ended", ""]
    reasons = sorted({r for m in report["models"].values() for r in m["stop_reasons"]})
    cuts = sorted({c for m in report["models"].values() for c in m["cuts"]})
    header = ["model", *[f"stop: {r}" for r in reasons], *[f"cut: {c}" for c in cuts]]
    rows = [
        [name, *[m["stop_reasons"].get(r, 0) for r in reasons], *[m["cuts"].get(c, 0) for c in cuts]]
        for name, m in report["models"].items()
    ]
    lines += [*_table(header, rows), ""]
    return "\n".join(lines)


# --- chart -----------------------------------------------------------------------------------------------------


def chart(report: Mapping[str, Any], path: Path) -> None:
    """Bars of the main metrics per model (stop rules on, raw hatched); with a comparison, a second panel with
    the differences and their bootstrap intervals."""
    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # its font-cache notes are not the user's business
    from matplotlib.figure import Figure

    models = list(report["models"])
    comparison = report.get("comparison")
    fig = Figure(figsize=(11 if comparison else 7, 4.2), dpi=110)
    axes = fig.subplots(1, 2 if comparison else 1, squeeze=False)[0]
    ax = axes[0]
    width = 0.8 / (2 * len(models))
    colors = ["#4C72B0", "#DD8452", "#55A868", "#C44E52"]
    for i, name in enumerate(models):
        model = report["models"][name]
        for j, (scores, hatch) in enumerate(((model, ""), (model["raw"], "//"))):
            xs = [k + (2 * i + j) * width - 0.4 + width / 2 for k in range(len(MAIN_METRICS))]
            ys = [float(scores.get(m) or 0.0) for m in MAIN_METRICS]
            ax.bar(
                xs,
                ys,
                width,
                color=colors[i % len(colors)],
                hatch=hatch,
                edgecolor="white" if not hatch else "black",
                label=f"{name}" + (" (raw)" if hatch else ""),
            )
    ax.set_xticks(range(len(MAIN_METRICS)), [label(m) for m in MAIN_METRICS])
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    n = report["corpus"]["examples_evaluated"]
    ax.set_title(f"{report['corpus']['split']} split, n={n}")
    ax.legend(fontsize=8, loc="upper left")
    if comparison:
        ax2 = axes[1]
        items = [
            (f"{label(m)}{' (raw)' if r == 'raw' else ''}", comparison[r][m])
            for r in ("rules", "raw")
            for m in MAIN_METRICS
            if m in comparison[r]
        ]
        ys = list(range(len(items)))
        diffs = [d["diff"] for _, d in items]
        lows = [d["diff"] - d["low"] for _, d in items]
        highs = [d["high"] - d["diff"] for _, d in items]
        ax2.errorbar(diffs, ys, xerr=[lows, highs], fmt="o", color="#333333", capsize=4)
        ax2.axvline(0.0, color="#999999", linewidth=1)
        ax2.set_yticks(ys, [name for name, _ in items])
        ax2.invert_yaxis()
        pct = round(100 * comparison["confidence"])
        ax2.set_xlabel(f"{comparison['b']} − {comparison['a']} ({pct}% paired bootstrap interval)")
        ax2.set_title(f"{comparison['b']} vs {comparison['a']}")
    fig.tight_layout()
    fig.savefig(str(path), format="png")
