"""A self-contained HTML page for a recorded run: every plot embedded as a base64 PNG,
so the one file opens anywhere (a browser, an attachment, a CI artifact) with nothing
beside it. The PNGs are also written next to the page (``plots/``) for docs and diffs.
"""

from __future__ import annotations

import base64
import html
import pathlib
from typing import Any

from streamweights.evaluation.trace import RunTrace, load_trace
from streamweights.report.plots import Plot, stream_plots

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px;
       color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .9em; }
td, th { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .9em; color: #555; } .note { color: #8a5a00; }
"""


def _scores_table(summary: dict[str, Any]) -> str:
    scores = summary.get("scores") or {}
    models = scores.get("models") or {}
    if not models:
        return ""
    columns = [c for c in ("log_loss", "brier", "accuracy", "ece", "mse", "mae")
               if c in next(iter(models.values()))]
    rows = [(f"raw {name}", values) for name, values in models.items()]
    if scores.get("raw_best"):
        rows.append((f"raw best ({scores['raw_best']['model']})", scores["raw_best"]))
    rows.append(("adapted", scores["adapted"]))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["forecaster", *columns])
    body = "".join("<tr><td>" + html.escape(name) + "</td>" + "".join(
        f"<td>{values[c]:.4f}</td>" for c in columns) + "</tr>" for name, values in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure(plot: Plot, image_path: str) -> str:
    encoded = base64.b64encode(plot.png).decode("ascii")
    note = f'<p class="note">{html.escape(plot.note)}</p>' if plot.note else ""
    return (f'<figure id="{plot.key}" data-plot="{plot.key}" data-file="{image_path}">'
            f'<img alt="{html.escape(plot.title)}" src="data:image/png;base64,{encoded}">'
            f"<figcaption>{html.escape(plot.title)}</figcaption>{note}</figure>")


def render_page(trace: RunTrace, plots: dict[str, list[tuple[Plot, str]]]) -> str:
    """The page's HTML for a trace and its rendered plots (per stream: plot, file)."""
    meta = trace.meta
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             "<title>streamweights report</title>", f"<style>{STYLE}</style></head><body>",
             "<h1>streamweights report</h1>",
             f"<p>Source: {html.escape(str(meta.get('source', 'unknown')))}. "
             f"{int(meta.get('records', 0)):,} records recorded"
             + (f", from input position {meta['start_position']:,}"
                if meta.get("start_position") else "") + ".</p>"]
    if meta.get("contender"):
        parts.append(f"<p>Chain: {html.escape(meta['contender'])}.</p>")
    for stream in trace.streams:
        info = stream.meta
        chain = " → ".join(spec["type"] for spec in info["chain"])
        parts.append(f"<h2>Stream {html.escape(stream.name)}</h2>")
        parts.append(f"<p>{html.escape(info['task'])}, models "
                     f"{html.escape(', '.join(info['models']))}; chain {html.escape(chain)}; "
                     f"{len(stream.arrays['labels']):,} labelled events recorded; "
                     f"{info['drift_total']} drift alarm(s)"
                     + (f", {len(info['change_points_ts'])} known change point(s)"
                        if info.get("change_points_ts") else "") + ".</p>")
        parts.append(_scores_table(info.get("summary", {})))
        for plot, path in plots[stream.name]:
            parts.append(_figure(plot, path))
    parts.append("</body></html>")
    return "\n".join(parts)


def build_report(run_dir: str | pathlib.Path,
                 output: str | pathlib.Path | None = None) -> tuple[pathlib.Path,
                                                                    dict[str, list[Plot]]]:
    """Render ``run_dir``'s trace to ``output`` (default ``run_dir/report.html``) and
    the PNGs to ``run_dir/plots/``; return the page's path and the plots per stream."""
    trace = load_trace(run_dir)
    folder = pathlib.Path(run_dir)
    plot_dir = folder / "plots"
    plot_dir.mkdir(exist_ok=True)
    rendered: dict[str, list[tuple[Plot, str]]] = {}
    for index, stream in enumerate(trace.streams):
        rendered[stream.name] = []
        for plot in stream_plots(stream, trace.meta.get("samples", {})):
            name = f"plots/{index}-{plot.key}.png"
            (folder / name).write_bytes(plot.png)
            rendered[stream.name].append((plot, name))
    page = pathlib.Path(output) if output is not None else folder / "report.html"
    page.write_text(render_page(trace, rendered), encoding="utf-8")
    return page, {name: [p for p, _ in items] for name, items in rendered.items()}
