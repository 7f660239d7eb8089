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
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=2)
        ax.set_xlabel("rows")
        ax.set_title("Rows set aside by validation, by reason")
        parts.append(figure_html(fig, "quarantined rows by reason"))
        parts.append(table_html(sorted(reasons.items()), ("reason", "rows")))
    else:
        parts.append("<p>No row was quarantined.</p>")
    return "".join(parts)


def render_dataset(section: dict) -> str:
    steps = section["steps"]
    names = ["validated events"] + [s["name"] for s in steps]
    fig, axes = plt.subplots(1, 3, figsize=(12, 0.45 * len(names) + 1.2), sharey=True)
    for ax, what in zip(axes, ("rows", "users", "items")):
        values = [steps[0][f"{what}_before"]] + [s[f"{what}_after"] for s in steps]
        ax.barh(range(len(names)), values, color="#76b900")
        for y, v in enumerate(values):
            ax.text(v, y, f" {v:,}", va="center", fontsize=8)
        ax.set_title(what)
        ax.set_xlim(0, max(values) * 1.3)
    axes[0].set_yticks(range(len(names)), names)
    axes[0].invert_yaxis()
    fig.suptitle("What each step of the dataset build kept (L1.5)")
    parts = [figure_html(fig, "dataset step funnel")]
    parts.append(table_html(
        [(s["name"], s["rows_before"], s["rows_after"], s["users_before"], s["users_after"],
          s["items_before"], s["items_after"], s.get("note", "")) for s in steps],
        ("step", "rows before", "rows after", "users before", "users after", "items before",
         "items after", "note")))
    cut = section["cutoffs"]
    parts.append("<h3>Splits</h3>" + table_html(
        [(name, rows, *section["positives"][name].values()) for name, rows in section["splits"].items()],
        ("split", "rows", *next(iter(section["positives"].values())).keys())))
    parts.append(f"<p>Split: {cut['split']}; training cut-off {cut['train_end']}, validation until "
                 f"{cut['valid_end']}, data end {cut['data_end']}. Checks passed: "
                 f"{'; '.join(section['checks'])}.</p>")
    dup, unsafe, left = section["duplicates"], section["unsafe"], section["left_out_users"]
    rows = [("duplicate copies mapped to a canonical id", dup["copies"]),
            ("unsafe items blocked", unsafe["items_blocked"]),
            ("users left out (served by the fallback)", left["count"])]
    for key in ("precision", "recall"):
        if key in dup:
            rows.append((f"duplicate detection {key} (vs truth)", dup[key]))
        if key in unsafe:
            rows.append((f"unsafe filters {key} (vs truth)", unsafe[key]))
    parts.append(table_html(rows))
    audit = section.get("labels_vs_truth")
    if audit:
        parts.append(_label_plot(audit))
    parts.append("<h3>Embedding tables (L3.1)</h3>" + table_html(
        [(t["column"], t["rows"], t["dim"], t["megabytes"]) for t in section["embedding_tables"]],
        ("column", "rows", "dim", "MB (rows x dim x 4 bytes)")))
    return "".join(parts)


def _label_plot(audit: dict) -> str:
    rates = audit["positive_rate_by_duration"]
    buckets = list(audit["true_relevance_by_duration"])
    fig, ax = plt.subplots(figsize=(9, 3.6))
    for label, style in (("watch_75", "o-"), ("watch_duration_aware", "s-")):
        ax.plot(buckets, [rates[label].get(b, float("nan")) for b in buckets], style, label=label)
    ax.set_ylabel("positive rate of clicked examples")
    ax.set_xlabel("item duration")
    ax2 = ax.twinx()
    ax2.plot(buckets, [audit["true_relevance_by_duration"][b] for b in buckets], "k--",
             label="mean true relevance")
    ax2.set_ylabel("true relevance")
    ax.legend(loc="upper right")
    ax2.legend(loc="lower left")
    ax.set_title("Watch labels by item length (L2.2): the naive label favours short items")
    ax.tick_params(axis="x", rotation=30)
    auc = audit["auc_vs_true_relevance"]
    table = table_html([(k, v) for k, v in auc.items()], ("label", "ROC-AUC vs true relevance"))
    return figure_html(fig, "watch labels by duration") + table


def render_models(section: dict) -> str:
    models = section["models"]
    rows = []
    for name, m in models.items():
        last = m["history"][-1] if m["history"] else {}
        metric = {k: v for k, v in last.items() if k.startswith("val_") and "loss" not in k}
        rows.append((name, m["parameters"], m.get("embedding_megabytes", ""),
                     m.get("train_seconds", ""), m.get("examples_per_second", ""),
                     ", ".join(f"{k[4:]} {v}" for k, v in metric.items())))
    parts = [f"<p>Version <code>{section['version']}</code>: every artifact of this training "
             "carries it, and serving refuses to mix versions.</p>",
             table_html(rows, ("model", "parameters", "embedding MB", "train s", "examples/s",
                               "last epoch, validation"))]
    curves = {n: m for n, m in models.items() if len(m["history"]) > 1 or m["kind"] != "candidate_fallback"}
    if curves:
        fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.2), squeeze=False)
        for ax, (name, m) in zip(axes[0], curves.items()):
            epochs = [h["epoch"] for h in m["history"]]
            for key in sorted({k for h in m["history"] for k in h
                               if k.startswith("val_") and "loss" not in k}):
                ax.plot(epochs, [h.get(key) for h in m["history"]], "o-", label=key[4:])
            ax.set_title(name)
            ax.set_xlabel("epoch")
            ax.legend(fontsize=7)
        fig.suptitle("Validation metrics per epoch")
        fig.tight_layout()
        parts.append(figure_html(fig, "validation metrics per epoch"))
    tables = [(name, t["column"], t["rows"], t["dim"], t["megabytes"])
              for name, m in models.items() for t in m.get("embedding_tables", [])]
    if tables:
        parts.append("<h3>Embedding tables (L3.1)</h3>" + table_html(
            tables, ("model", "column", "rows", "dim", "MB")))
    return "".join(parts)


RENDERERS = {"data": render_data, "dataset": render_dataset, "models": render_models}


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
