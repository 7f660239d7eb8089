"""The run's HTML report: one self-contained page beside `summary.json`, plots embedded.

Each summary section has a renderer here; a section without one is shown as its JSON, so a new
part of the pipeline appears in the report before it has pictures of its own.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SECTION_ORDER = ("data", "dataset", "models", "evaluation", "serving", "experiments")


def figure_html(fig, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def table_html(rows: list[tuple], header: tuple | None = None) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header) if header else ""
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{'<tr>' + head + '</tr>' if head else ''}{body}</table>"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return html.escape(str(value))


def render_data(section: dict) -> str:
    rows = [("source", section["source"]), ("origin", section["origin"]),
            ("events kept", section["events"]), ("users", section["users"]),
            ("items", section["items"]), ("catalogue items", section.get("catalogue_items")),
            ("time range", " to ".join(section["time_range"])),
            ("rows quarantined", section["quarantined_rows"])]
    parts = [table_html(rows)]
    reasons = section.get("quarantined_by_reason") or {}
    if reasons:
        injected = section.get("bad_rows_injected") or {}
        names = sorted(reasons)
        fig, ax = plt.subplots(figsize=(7, 0.4 * len(names) + 1))
        ax.barh(names, [reasons[n] for n in names], label="quarantined")
        if injected:
            ax.scatter([injected.get(n, 0) for n in names], names, color="black", zorder=3,
                       label="injected by the generator (truth)")
            ax.legend(loc="lower right")
        ax.set_xlabel("rows")
        ax.set_title("Rows set aside by validation, by reason")
        parts.append(figure_html(fig, "quarantined rows by reason"))
        parts.append(table_html(sorted(reasons.items()), ("reason", "rows")))
    else:
        parts.append("<p>No row was quarantined.</p>")
    return "".join(parts)


RENDERERS = {"data": render_data}


def write_report(run_dir: Path, summary: dict) -> Path:
    sections = [s for s in SECTION_ORDER if s in summary] + \
               [s for s in summary if s not in SECTION_ORDER and s != "run"]
    body = []
    for name in sections:
        render = RENDERERS.get(name)
        content = render(summary[name]) if render else \
            f"<pre>{html.escape(json.dumps(summary[name], indent=2, default=str))}</pre>"
        body.append(f'<section id="{name}"><h2>{name}</h2>{content}</section>')
    run = summary.get("run", {})
    timings = ", ".join(f"{k} {v} s" for k, v in run.get("timings_s", {}).items())
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>recfunnel run {html.escape(run.get('name', ''))}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}
img{{max-width:100%}}section{{margin-bottom:2.5em}}h2{{border-bottom:2px solid #76b900}}</style>
</head><body><h1>recfunnel run {html.escape(run.get('name', ''))}</h1>
<p>Started {html.escape(str(run.get('started', '')))}; steps: {html.escape(', '.join(run.get('steps', [])))};
time: {html.escape(timings)}.</p>
<nav>{' · '.join(f'<a href="#{s}">{s}</a>' for s in sections)}</nav>
{''.join(body)}</body></html>"""
    path = Path(run_dir) / "report.html"
    path.write_text(page)
    return path
