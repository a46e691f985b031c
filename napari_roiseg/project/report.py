"""Export a volume's review: one self-contained HTML page plus CSV tables.

Files written to ``out_dir`` (each atomically)::

    review.html              summary, plots (PNG embedded as base64), the tables below
    review_slices.csv        slice, rank, score, main reason, each component's z, review mark,
                             corrected dice
    review_corrections.csv   every correction: slice, version, who, when, areas, dice,
                             precision, recall
    review_versions.csv      every model version: parent, created, locked-set dice / precision /
                             recall, gate decision (and override: who, when, why)

No napari or Qt; matplotlib (Agg, no pyplot) draws the plots.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from .history import CorrectionHistory
from ..review import COMPONENTS, ReviewScores, draw_scores

__all__ = ["export_report"]


def _png(draw, size=(8, 2.6)) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    draw(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _write_text_atomic(path: Path, text: str) -> None:
    from ..io.writers import atomic_path

    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def _csv_text(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[f"{v:.4f}" if isinstance(v, float) else ("" if v is None else v)
                       for v in row] for row in rows])
    return buf.getvalue()


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return html.escape(f"{v:.3f}" if isinstance(v, float) else ("" if v is None else str(v)))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _version_rows(history: CorrectionHistory | None) -> tuple[list[str], list[list[Any]]]:
    header = ["version", "parent", "created", "current", "locked_dice", "locked_precision",
              "locked_recall", "gate", "gate_vs", "override_who", "override_when", "override_why"]
    if history is None:
        return header, []
    project = history.project
    decisions = {d["candidate"]: d for d in history.decisions}  # the latest per candidate
    rows = []
    for name, info in project.versions.items():
        m = history.state["version_metrics"].get(name) or {}
        d = decisions.get(name)
        verdict = ("" if d is None else "accepted" if d["passed"] else
                   "overridden" if d["accepted"] else "rejected")
        o = (d or {}).get("override") or {}
        rows.append([name, info.get("parent"), info.get("created"),
                     "yes" if name == project.current_version else "", m.get("dice"),
                     m.get("precision"), m.get("recall"), verdict, (d or {}).get("current"),
                     o.get("who"), o.get("when"), o.get("why")])
    return header, rows


def export_report(out_dir: str | os.PathLike, *, scores: ReviewScores | None = None,
                  history: CorrectionHistory | None = None, name: str = "volume",
                  current: int | None = None) -> dict[str, Path]:
    """Write the review report of one volume; returns ``{"html", "slices", "corrections",
    "versions"}`` -> path.

    ``scores``: the review queue (:func:`review.score_slices`); ``history``: the project's
    correction history (marks, corrections, locked set, version metrics, gate decisions).
    Either may be None; the report then says so.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    marks = history.marks if history is not None else {}
    latest = history.latest_by_slice() if history is not None else {}
    records = history.records if history is not None else []

    names = list(COMPONENTS)
    s_header = ["slice", "rank", "score", "reason", *[f"z_{n}" for n in names], "mark",
                "corrected_dice"]
    s_rows: list[list[Any]] = []
    if scores is not None:
        ranks = np.empty(scores.n_slices, int)
        ranks[scores.order] = np.arange(1, scores.n_slices + 1)
        for k in range(scores.n_slices):
            s_rows.append([k, int(ranks[k]), float(scores.score[k]), scores.reason(k),
                           *[float(scores.z[n][k]) for n in names], marks.get(k, ""),
                           latest[k]["dice"] if k in latest else None])
    c_header = ["id", "slice", "version", "who", "when", "prediction_area", "correction_area",
                "dice", "precision", "recall"]
    c_rows = [[r[h] for h in c_header] for r in records]
    v_header, v_rows = _version_rows(history)

    paths = {"slices": out / "review_slices.csv", "corrections": out / "review_corrections.csv",
             "versions": out / "review_versions.csv", "html": out / "review.html"}
    _write_text_atomic(paths["slices"], _csv_text(s_header, s_rows))
    _write_text_atomic(paths["corrections"], _csv_text(c_header, c_rows))
    _write_text_atomic(paths["versions"], _csv_text(v_header, v_rows))

    parts = [f"<h1>Review of {html.escape(name)}</h1>"]
    n_reviewed = len(marks)
    dices = [r["dice"] for r in latest.values()]
    summary = [("slices", scores.n_slices if scores is not None else "?"),
               ("slices reviewed (marked)", n_reviewed),
               ("slices corrected", len(latest)),
               ("corrections recorded", len(records)),
               ("mean dice of the model's output vs the correction",
                f"{np.mean(dices):.3f}" if dices else "–"),
               ("locked set", (", ".join(map(str, history.locked)) or "not locked")
                if history is not None else "–"),
               ("current version",
                history.project.current_version if history is not None else "–")]
    parts.append(_table(["", ""], [list(row) for row in summary]))
    if scores is not None:
        png = _png(lambda fig: draw_scores(fig, scores, current, marks,
                                           "review score per slice (stacked components)"))
        parts.append('<h2>Review queue</h2><img alt="review scores" '
                     f'src="data:image/png;base64,{png}">')
        top = sorted(s_rows, key=lambda r: r[1])[:20]
        parts.append("<p>Top of the queue (score = sum of robust z-scores of the components; "
                     "see the README):</p>" + _table(s_header, top))
    if v_rows:
        def draw_versions(fig: Any) -> None:
            ax = fig.add_subplot(1, 1, 1)
            xs = [r[0] for r in v_rows]
            for col, label in ((4, "dice"), (5, "precision")):
                ax.plot(xs, [np.nan if r[col] is None else r[col] for r in v_rows], "o-",
                        label=f"locked-set {label}")
            ax.set_ylim(-0.02, 1.02)
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
            fig.tight_layout()

        png = _png(draw_versions, (6, 2.4))
        parts.append('<h2>Model versions</h2><img alt="versions" '
                     f'src="data:image/png;base64,{png}">'
                     + _table(v_header, v_rows))
    if c_rows:
        parts.append("<h2>Corrections</h2>" + _table(c_header, c_rows))
    style = ("body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;"
             "font-size:12px;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px}"
             "img{max-width:100%}")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Review of "
            f"{html.escape(name)}</title><style>{style}</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")
    _write_text_atomic(paths["html"], page)
    return paths
