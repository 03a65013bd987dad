"""`compare --report`: one self-contained HTML page with the runs' loss curves overlaid, the
benchmark table, the pick and the sample answers.

The chart is inline SVG written here. Why by hand: the page must open anywhere with no network
and no script (no JS chart library from a CDN), and the one plotting library that writes SVG
without a browser, matplotlib, is a 40 MB dependency for two line plots; an SVG polyline per
run, a circle per validation point, ticks and a legend are a few dozen lines. Every text from a
run (names, prompts, answers, config values) is escaped. Imports no mlx, torch or textual.
"""

from __future__ import annotations

import html
import math
import time
from pathlib import Path

from mlxlora.atomic import atomic_write_text
from mlxlora.experiments import Comparison, Pick, metric_text, setting_text, shown_metrics
from mlxlora.outputs import permissions_from_umask
from mlxlora.runview import downsample

# Distinct on white and for the common colour blindnesses (Okabe-Ito), one per run.
COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
WIDTH, HEIGHT = 880, 420
LEFT, RIGHT, TOP, BOTTOM = 64, 180, 20, 48  # plot margins: the legend sits on the right
CURVE_POINTS = 400  # a long run's smoothed train loss is drawn from this many means

STYLE = """
body { font-family: -apple-system, "Hiragino Sans", "Noto Sans CJK JP", "Yu Gothic",
  "Segoe UI", sans-serif; margin: 24px; color: #222; }
table { border-collapse: collapse; margin: 12px 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.pick { background: #eef7ee; border-left: 4px solid #009E73; padding: 8px 12px;
  white-space: pre-wrap; }
.answer { white-space: pre-wrap; margin: 2px 0 10px 16px; }
svg text { font-size: 12px; fill: #333; }
"""


def color(i: int) -> str:
    return COLORS[i % len(COLORS)]


def write(path: Path, comparison: Comparison, chosen: Pick | None = None) -> None:
    """The page written to `path` whole (readers never see half of it), with the permissions
    the umask gives: the page is for sharing, not private like its temporary file (0600)."""
    atomic_write_text(path, render(comparison, chosen))
    permissions_from_umask(Path(path))


def render(comparison: Comparison, chosen: Pick | None = None) -> str:
    """The whole page as text (UTF-8 HTML)."""
    names = ", ".join(r.name for r in comparison.runs)
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8">',
        f"<title>{html.escape(f'mlxlora compare: {names}')}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(names)}</h1>",
        f"<p>mlxlora compare, {html.escape(time.strftime('%Y-%m-%d %H:%M'))}</p>",
        "<h2>Loss curves</h2>",
        chart(comparison),
        "<p>Lines: training loss (smoothed); dots: validation loss.</p>",
        "<h2>Benchmark</h2>",
        table(comparison),
    ]
    if chosen is not None:
        parts += ["<h2>Pick</h2>", f'<p class="pick">{html.escape(chosen.reason)}</p>']
    parts += ["<h2>Sample answers</h2>", answers(comparison), "</body></html>"]
    return "\n".join(parts)


def chart(comparison: Comparison) -> str:
    """The runs' smoothed training loss (lines) and validation loss (dots) on one set of axes."""
    curves = []
    for r in comparison.runs:
        xs, ys = downsample(r.view.smooth.x, r.view.smooth.y, CURVE_POINTS)
        curves.append((xs, ys, list(r.view.val.x), list(r.view.val.y)))
    xs_all = [x for c in curves for x in c[0] + c[2]]
    ys_all = [y for c in curves for y in c[1] + c[3] if math.isfinite(y)]
    if not xs_all or not ys_all:
        return "<p>No losses recorded yet.</p>"
    x_ticks, y_ticks = ticks(min(xs_all), max(xs_all)), ticks(min(ys_all), max(ys_all))
    sx = _scale(x_ticks[0], x_ticks[-1], LEFT, WIDTH - RIGHT)
    sy = _scale(y_ticks[0], y_ticks[-1], HEIGHT - BOTTOM, TOP)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="loss curves">',
        f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
    ]
    out += _axes(x_ticks, y_ticks, sx, sy)
    for i, (xs, ys, vx, vy) in enumerate(curves):
        line = [(x, y) for x, y in zip(xs, ys, strict=True) if math.isfinite(y)]
        points = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in line)
        out.append(
            f'<polyline class="train" fill="none" stroke="{color(i)}" stroke-width="3" '
            f'points="{points}"/>'
        )
        out += [
            f'<circle class="val" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="5" fill="{color(i)}"/>'
            for x, y in zip(vx, vy, strict=True)
            if math.isfinite(y)
        ]
    out += _legend([r.name for r in comparison.runs])
    out.append("</svg>")
    return "\n".join(out)


def ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) covering lo..hi."""
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(lo / step) * step
    n = math.ceil((hi - first) / step - 1e-9)
    return [round(first + k * step, 12) for k in range(n + 1)]


def _scale(lo: float, hi: float, out_lo: float, out_hi: float):
    span = (hi - lo) or 1.0
    return lambda v: out_lo + (v - lo) / span * (out_hi - out_lo)


def _axes(x_ticks, y_ticks, sx, sy) -> list[str]:
    x0, x1, y0, y1 = sx(x_ticks[0]), sx(x_ticks[-1]), sy(y_ticks[0]), sy(y_ticks[-1])
    out = ['<g stroke="#bbb" stroke-width="1">']
    out += [f'<line x1="{x0}" y1="{sy(t):.1f}" x2="{x1}" y2="{sy(t):.1f}"/>' for t in y_ticks]
    out += [f'<line x1="{sx(t):.1f}" y1="{y0}" x2="{sx(t):.1f}" y2="{y1}"/>' for t in x_ticks]
    out.append("</g>")
    out += [
        f'<text x="{x0 - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{t:g}</text>' for t in y_ticks
    ]
    out += [
        f'<text x="{sx(t):.1f}" y="{y0 + 18}" text-anchor="middle">{t:g}</text>' for t in x_ticks
    ]
    out.append(f'<text x="{(x0 + x1) / 2}" y="{HEIGHT - 8}" text-anchor="middle">step</text>')
    out.append(
        f'<text x="14" y="{(y0 + y1) / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {(y0 + y1) / 2})">loss</text>'
    )
    return out


def _legend(names: list[str]) -> list[str]:
    x = WIDTH - RIGHT + 16
    out = []
    for i, name in enumerate(names):
        y = TOP + 10 + 22 * i
        out.append(
            f'<line x1="{x}" y1="{y}" x2="{x + 24}" y2="{y}" stroke="{color(i)}" stroke-width="3"/>'
        )
        out.append(f'<text x="{x + 30}" y="{y + 4}">{html.escape(name)}</text>')
    return out


def table(comparison: Comparison) -> str:
    rows = comparison.runs
    metrics = shown_metrics([r.metrics for r in rows])
    head = ["run", "status", *(title for _, title, _ in metrics), *comparison.differences]
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for i, r in enumerate(rows):  # the numbers first: a differing list can be wide
        cells = [r.name, r.status]
        cells += [metric_text(r.metrics.get(key), spec) for key, _, spec in metrics]
        cells += [setting_text(values[i]) for values in comparison.differences.values()]
        name = f'<td style="color:{color(i)};font-weight:bold">{html.escape(cells[0])}</td>'
        out.append("<tr>" + name + "".join(f"<td>{html.escape(c)}</td>" for c in cells[1:]))
    out.append("</table>")
    return "\n".join(out)


def answers(comparison: Comparison) -> str:
    """eval.json's answers (prompt, reference, tuned, base) per run, else the sample answers
    the run's events hold (before and after training)."""
    out = []
    for i, r in enumerate(comparison.runs):
        out.append(f'<h3 style="color:{color(i)}">{html.escape(r.name)}</h3>')
        found = r.evaluation.get("answers")
        if isinstance(found, list) and found:
            for a in (a for a in found if isinstance(a, dict)):
                out.append(f"<p><b>{html.escape(str(a.get('prompt', '')))}</b></p>")
                for label in ("reference", "tuned", "base"):
                    if a.get(label) is not None:
                        out.append(_answer(label, str(a[label])))
        elif r.view.samples:
            for sample in r.view.samples.values():
                out.append(f"<p><b>{html.escape(sample.prompt)}</b></p>")
                out.append(_answer(f"{sample.when} training", sample.answer))
        else:
            out.append("<p>No answers recorded (run `mlxlora eval` for held-out answers).</p>")
    return "\n".join(out)


def _answer(label: str, text: str) -> str:
    return f'<div class="answer"><i>{html.escape(label)}</i>: {html.escape(text)}</div>'
