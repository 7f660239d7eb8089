"""The report's HTML pieces: tables and embedded figures, shared by the run's page
(`recfunnel.report`) and its experiments section (`recfunnel.experiments.report`).

A leaf module: it imports nothing of the project.
"""
from __future__ import annotations

import base64
import html
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

WORSE_STYLE = "color:#c00;font-weight:bold"     # a stage that makes its input worse


def figure_html(fig, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def table_html(rows: list[tuple], header: tuple | None = None,
               highlight: set[int] = frozenset()) -> str:
    """`highlight`: indices of rows shown in red."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header) if header else ""
    body = "".join((f'<tr style="{WORSE_STYLE}">' if i in highlight else "<tr>")
                   + "".join(f"<td>{cell_text(c)}</td>" for c in row) + "</tr>"
                   for i, row in enumerate(rows))
    return f"<table>{'<tr>' + head + '</tr>' if head else ''}{body}</table>"


def cell_text(value) -> str:
    """A table cell: floats to 4 significant digits, ints with thousands separators."""
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return html.escape(str(value))
