"""The load-test reports' charts, drawn with matplotlib and written as SVG beside the report.

Three kinds, each writing one file:
  bar_chart        grouped bars (categories x series), linear or log y axis, dashed reference lines
  small_multiples  one bar panel per policy (connections per shard), a shared y scale and cap line
  line_chart       lines over a linear x axis, optionally dashed
Text stays text in the SVG (svg.fonttype none) and the files carry no date, so a chart only
changes when its numbers do.
"""

from __future__ import annotations

from collections.abc import Callable
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

PALETTE = ["#4269d0", "#efb118", "#ff725c", "#6cc5b0", "#3ca951", "#ff8ab7", "#a463f2", "#97bbf5"]
WIDTH_IN = 9.0
plt.rcParams.update({
    "svg.fonttype": "none",
    "svg.hashsalt": "edge-gateway-load-tests",
    "font.family": "sans-serif",
    "font.size": 9,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e5e5e5",
    "axes.axisbelow": True,
})


def fmt_num(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000 and float(v).is_integer():
        return f"{int(v):,}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}".rstrip("0").rstrip(".")
    return f"{v:.2f}".rstrip("0").rstrip(".")


def wrap(label: str, max_chars: int) -> str:
    """Breaks a long label (a policy string, an operation) after `:`, `,`, `_` or a space
    into lines of about max_chars."""
    lines, line = [], ""
    for part in re.split(r"(?<=[:,_ ])", label):
        if line and len(line) + len(part) > max_chars:
            lines.append(line)
            line = part
        else:
            line += part
    return "\n".join(lines + [line]) if line else "\n".join(lines) or label


def _save(fig, path: Path) -> None:
    fig.savefig(path, format="svg", metadata={"Date": None}, bbox_inches="tight")
    plt.close(fig)


def bar_chart(path: Path, title: str, categories: list[str], series: list[tuple[str, list[float | None]]],
              y_label: str, log: bool = False, refs: list[tuple[float, str, str]] | None = None,
              value_fmt: Callable[[float], str] = fmt_num, y_max: float | None = None) -> None:
    """Grouped bars: one group per category, one bar per series, each labelled with its value
    (n/a for None). `refs` are dashed horizontal lines (value, label, colour)."""
    fig, ax = plt.subplots(figsize=(WIDTH_IN, 4.4))
    n_ser = max(1, len(series))
    width = 0.8 / n_ser
    values = [v for _, vs in series for v in vs if v is not None and (v > 0 or not log)]
    floor = min(values + [r[0] for r in refs or []], default=1) / 2 if log else 0
    for si, (name, vs) in enumerate(series):
        xs = [ci + (si - (n_ser - 1) / 2) * width for ci in range(len(categories))]
        colours = PALETTE[si % len(PALETTE)] if n_ser > 1 else [PALETTE[ci % len(PALETTE)] for ci in range(len(categories))]
        heights = [floor if v is None else max(v, floor) for v in vs]  # n/a sits on the axis
        bars = ax.bar(xs, heights, width * 0.92, color=colours, label=name if n_ser > 1 else None)
        for bar, v in zip(bars, vs):
            ax.annotate("n/a" if v is None else value_fmt(v), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points",
                        color="#888" if v is None else "#222")
    for value, label, colour in refs or []:
        ax.axhline(value, color=colour, linestyle="--", linewidth=1.2)
        ax.annotate(label, (1, value), xycoords=("axes fraction", "data"), ha="right", va="bottom", fontsize=7,
                    color=colour, xytext=(-2, 2), textcoords="offset points")
    if log:
        ax.set_yscale("log")
        ax.set_ylim(bottom=floor)
        # 1-2-5 steps, labelled like the bars: a range of a few decades still gets several labels.
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_minor_formatter(NullFormatter())
    elif y_max is not None:
        ax.set_ylim(0, min(y_max, max(values + [r[0] for r in refs or []] + [1]) * 1.15))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: value_fmt(v)))
    labels = [wrap(c, max(8, int(100 / max(1, len(categories))))) for c in categories]
    ax.set_xticks(range(len(categories)), labels)
    ax.set_ylabel(y_label)
    ax.set_title(title)
    ax.grid(axis="x", visible=False)
    if n_ser > 1:
        below = 0.08 + 0.045 * max(label.count("\n") + 1 for label in labels)  # under the category labels
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -below), ncol=min(4, n_ser), frameon=False, fontsize=8)
    _save(fig, path)


def small_multiples(path: Path, title: str, panels: list[tuple[str, list[tuple[str, float]]]], cap: float | None,
                    y_label: str) -> None:
    """One bar panel per (label, [(bar name, value)]), bars in the order given, a shared y
    scale and an optional dashed cap line."""
    fig, axes = plt.subplots(len(panels) or 1, 1, figsize=(WIDTH_IN, 2.2 * max(1, len(panels)) + 0.6),
                             sharey=True, squeeze=False)
    top = max([v for _, bars in panels for _, v in bars] + [cap or 0, 1]) * 1.12
    for pi, (ax, (label, bars)) in enumerate(zip(axes[:, 0], panels)):
        vals = [v for _, v in bars]
        ax.bar(range(len(bars)), vals, 0.85, color=PALETTE[pi % len(PALETTE)])
        if len(bars) <= 24:
            for x, v in enumerate(vals):
                ax.annotate(fmt_num(v), (x, v), ha="center", va="bottom", fontsize=7, xytext=(0, 1),
                            textcoords="offset points")
        if cap:
            ax.axhline(cap, color="#d62728", linestyle="--", linewidth=1)
            ax.annotate(f"cap {fmt_num(cap)}", (1, cap), xycoords=("axes fraction", "data"), ha="right",
                        va="bottom", fontsize=7, color="#d62728")
        s = sorted(vals)
        stats = f"max {fmt_num(s[-1])}, median {fmt_num(s[len(s) // 2])}, min {fmt_num(s[0])}" if s else "no shard data"
        ax.set_title(f"{label}    ({len(bars)} shard(s); {stats})", fontsize=9, loc="left")
        ax.set_ylim(0, top)
        ax.set_xticks([])
        ax.grid(axis="x", visible=False)
        ax.set_ylabel(y_label)
    fig.suptitle(title, fontweight="bold")
    fig.tight_layout()
    _save(fig, path)


def line_chart(path: Path, title: str, series: list[tuple[str, list[tuple[float, float]], bool]], x_label: str,
               y_label: str) -> None:
    """Lines (name, [(x, y)], dashed) on linear axes starting at 0."""
    fig, ax = plt.subplots(figsize=(WIDTH_IN, 4.2))
    for si, (name, pts, dashed) in enumerate(series):
        xs, ys = [x for x, _ in pts], [y for _, y in pts]
        ax.plot(xs, ys, label=name, linewidth=1.8, linestyle="--" if dashed else "-",
                color="#777" if dashed else PALETTE[si % len(PALETTE)])
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_num(v)))
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title)
    if series:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=min(3, len(series)), frameon=False, fontsize=8)
    _save(fig, path)

