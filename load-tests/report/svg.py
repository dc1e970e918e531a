"""Hand-written SVG charts for the load-test reports (standard library only).

Three chart kinds, all returning an SVG document as a string:
  bar_chart          grouped bars (categories x series), linear or log y axis, reference lines
  small_multiples    one bar panel per policy (connections per shard), a shared cap line
  line_chart         time series, one line per series, optional dashed series
"""

from __future__ import annotations

import math
from html import escape

PALETTE = ["#4269d0", "#efb118", "#ff725c", "#6cc5b0", "#3ca951", "#ff8ab7", "#a463f2", "#97bbf5"]
FONT = 'font-family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif"'


def _doc(width: int, height: int, title: str, body: list[str]) -> str:
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{escape(title)}" {FONT}>'
    )
    return "\n".join(
        [head, f"<title>{escape(title)}</title>", f'<rect width="{width}" height="{height}" fill="#ffffff"/>']
        + body
        + ["</svg>", ""]
    )


def _text(x: float, y: float, s: str, size: int = 12, anchor: str = "start", fill: str = "#222",
          weight: str = "normal", rotate: float | None = None) -> str:
    rot = f' transform="rotate({rotate} {x:.1f} {y:.1f})"' if rotate is not None else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" fill="{fill}" '
            f'font-weight="{weight}"{rot}>{escape(s)}</text>')


def wrap(label: str, max_chars: int) -> list[str]:
    """Splits a long label after `:` or `,` (policy strings) into lines of about max_chars."""
    parts, cur = [], ""
    for ch in label:
        cur += ch
        if ch in ":," and len(cur) >= max_chars * 0.5:
            parts.append(cur)
            cur = ""
    if cur:
        parts.append(cur)
    lines, line = [], ""
    for part in parts:
        if line and len(line) + len(part) > max_chars:
            lines.append(line)
            line = part
        else:
            line += part
    if line:
        lines.append(line)
    return lines or [label]


def _label(x: float, y: float, s: str, max_chars: int, size: int = 11) -> str:
    lines = wrap(s, max_chars)
    spans = "".join(f'<tspan x="{x:.1f}" dy="{0 if i == 0 else size + 2}">{escape(t)}</tspan>' for i, t in enumerate(lines))
    return f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="middle" fill="#222">{spans}</text>'


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (linear axis)."""
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = [round(start, 10)]
    while ticks[-1] < hi - step * 1e-9:  # the last tick covers hi
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


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


def bar_chart(title: str, categories: list[str], series: list[tuple[str, list[float | None]]],
              y_label: str, log: bool = False, refs: list[tuple[float, str, str]] | None = None,
              value_fmt=fmt_num, width: int = 860, height: int = 420, y_max: float | None = None) -> str:
    """Grouped bars: one group per category, one bar per series. `refs` are horizontal
    reference lines (value, label, colour). None values are drawn as 'n/a'."""
    refs = refs or []
    left, right, top, bottom = 80, 20, 50, 90
    pw, ph = width - left - right, height - top - bottom
    values = [v for _, vs in series for v in vs if v is not None] + [r[0] for r in refs]
    body = [_text(width / 2, 24, title, 16, "middle", weight="bold")]
    if log:
        pos = [v for v in values if v > 0] or [1.0]
        lo_e = math.floor(math.log10(min(pos)))
        hi_e = math.ceil(math.log10(max(pos) * 1.05))
        if hi_e == lo_e:
            hi_e += 1
        ticks = [10.0 ** e for e in range(lo_e, hi_e + 1)]

        def y(v: float) -> float:
            v = max(v, 10.0 ** lo_e)
            return top + ph - (math.log10(v) - lo_e) / (hi_e - lo_e) * ph
        base = top + ph
    else:
        hi = max(values) if values else 1.0
        hi = hi * 1.1 if hi > 0 else 1.0
        ticks = nice_ticks(0, min(hi, y_max) if y_max else hi)

        def y(v: float) -> float:
            return top + ph - (v - ticks[0]) / (ticks[-1] - ticks[0]) * ph
        base = y(0)
    for t in ticks:
        yy = y(t)
        body.append(f'<line x1="{left}" x2="{left + pw}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#e5e5e5"/>')
        body.append(_text(left - 8, yy + 4, value_fmt(t), 11, "end", "#555"))
    body.append(_text(18, top + ph / 2, y_label, 12, "middle", "#333", rotate=-90))
    n_cat, n_ser = len(categories), max(1, len(series))
    group_w = pw / max(1, n_cat)
    bar_w = min(60.0, group_w * 0.8 / n_ser)
    for ci, cat in enumerate(categories):
        gx = left + ci * group_w + (group_w - bar_w * n_ser) / 2
        for si, (_, vs) in enumerate(series):
            v = vs[ci]
            x = gx + si * bar_w
            colour = PALETTE[si % len(PALETTE)] if n_ser > 1 else PALETTE[ci % len(PALETTE)]
            if v is None:
                body.append(_text(x + bar_w / 2, base - 4, "n/a", 10, "middle", "#888"))
                continue
            yy = y(v) if (not log or v > 0) else base
            h = max(0.0, base - yy)
            body.append(f'<rect x="{x + 1:.1f}" y="{yy:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}" fill="{colour}">'
                        f'<title>{escape(cat)}: {escape(value_fmt(v))}</title></rect>')
            body.append(_text(x + bar_w / 2, yy - 4, value_fmt(v), 10, "middle", "#222"))
        body.append(_label(left + ci * group_w + group_w / 2, top + ph + 18, cat, max(8, int(group_w / 6.5))))
    for value, label, colour in refs:
        yy = y(value)
        body.append(f'<line x1="{left}" x2="{left + pw}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="{colour}" '
                    f'stroke-dasharray="6 4" stroke-width="1.5"/>')
        body.append(_text(left + pw - 4, yy - 5, label, 10, "end", colour))
    body.append(f'<line x1="{left}" x2="{left + pw}" y1="{base:.1f}" y2="{base:.1f}" stroke="#333"/>')
    if n_ser > 1:
        lx = left
        for si, (name, _) in enumerate(series):
            body.append(f'<rect x="{lx}" y="{height - 28}" width="12" height="12" fill="{PALETTE[si % len(PALETTE)]}"/>')
            body.append(_text(lx + 16, height - 18, name, 11))
            lx += 28 + 6.2 * len(name)
    return _doc(width, height, title, body)


def small_multiples(title: str, panels: list[tuple[str, list[tuple[str, float]]]], cap: float | None,
                    y_label: str, width: int = 860, panel_h: int = 170) -> str:
    """One bar panel per entry (label, [(bar name, value)]), bars sorted as given, a shared
    y scale and an optional dashed cap line."""
    left, right, top = 80, 20, 44
    pw = width - left - right
    height = top + len(panels) * (panel_h + 48) + 10
    hi = max([v for _, bars in panels for _, v in bars] + [cap or 0, 1])
    ticks = nice_ticks(0, hi * 1.1)
    body = [_text(width / 2, 24, title, 16, "middle", weight="bold")]
    for pi, (label, bars) in enumerate(panels):
        py = top + pi * (panel_h + 48) + 20
        body.append(_text(left, py - 6, label, 12, weight="bold"))
        if bars:
            vals = sorted(v for _, v in bars)
            body.append(_text(left + pw, py - 6, f"max {fmt_num(vals[-1])}, median {fmt_num(vals[len(vals) // 2])}, "
                                                 f"min {fmt_num(vals[0])}", 11, "end", "#555"))

        def y(v: float, py=py) -> float:
            return py + panel_h - v / ticks[-1] * panel_h
        for t in ticks:
            body.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="#eee"/>')
            body.append(_text(left - 8, y(t) + 4, fmt_num(t), 10, "end", "#555"))
        if not bars:
            body.append(_text(left + pw / 2, py + panel_h / 2, "no shard data", 11, "middle", "#888"))
        n = max(1, len(bars))
        bw = pw / n
        colour = PALETTE[pi % len(PALETTE)]
        for bi, (name, v) in enumerate(bars):
            x = left + bi * bw
            body.append(f'<rect x="{x + min(1, bw * 0.1):.1f}" y="{y(v):.1f}" width="{max(0.5, bw - min(2, bw * 0.2)):.1f}" '
                        f'height="{py + panel_h - y(v):.1f}" fill="{colour}"><title>{escape(name)}: {fmt_num(v)}</title></rect>')
            if n <= 24:
                body.append(_text(x + bw / 2, y(v) - 3, fmt_num(v), 9, "middle"))
        if cap:
            body.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(cap):.1f}" y2="{y(cap):.1f}" stroke="#d62728" '
                        f'stroke-dasharray="6 4"/>')
            body.append(_text(left + pw - 4, y(cap) - 4, f"cap {fmt_num(cap)}", 10, "end", "#d62728"))
        body.append(f'<line x1="{left}" x2="{left + pw}" y1="{py + panel_h}" y2="{py + panel_h}" stroke="#333"/>')
        body.append(_text(left + pw, py + panel_h + 14, f"{len(bars)} shard(s), sorted by connections", 10, "end", "#555"))
    body.append(_text(18, height / 2, y_label, 12, "middle", "#333", rotate=-90))
    return _doc(width, height, title, body)


def line_chart(title: str, series: list[tuple[str, list[tuple[float, float]], bool]], x_label: str,
               y_label: str, width: int = 860, height: int = 400) -> str:
    """Lines (name, [(x, y)], dashed). x and y are linear and start at 0."""
    left, right, top, bottom = 80, 20, 50, 80
    pw, ph = width - left - right, height - top - bottom
    xs = [x for _, pts, _ in series for x, _ in pts] or [1]
    ys = [v for _, pts, _ in series for _, v in pts] or [1]
    xt = nice_ticks(0, max(xs) or 1, 8)
    yt = nice_ticks(0, (max(ys) or 1) * 1.05)

    def px(x: float) -> float:
        return left + x / xt[-1] * pw

    def py(v: float) -> float:
        return top + ph - v / yt[-1] * ph
    body = [_text(width / 2, 24, title, 16, "middle", weight="bold")]
    for t in yt:
        body.append(f'<line x1="{left}" x2="{left + pw}" y1="{py(t):.1f}" y2="{py(t):.1f}" stroke="#eee"/>')
        body.append(_text(left - 8, py(t) + 4, fmt_num(t), 11, "end", "#555"))
    for t in xt:
        body.append(_text(px(t), top + ph + 16, fmt_num(t), 11, "middle", "#555"))
    body.append(f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" stroke="#333"/>')
    body.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + ph}" stroke="#333"/>')
    body.append(_text(left + pw / 2, top + ph + 36, x_label, 12, "middle", "#333"))
    body.append(_text(18, top + ph / 2, y_label, 12, "middle", "#333", rotate=-90))
    lx = left
    for si, (name, pts, dashed) in enumerate(series):
        colour = "#777" if dashed else PALETTE[si % len(PALETTE)]
        if pts:
            d = " ".join(f"{'M' if i == 0 else 'L'}{px(x):.1f},{py(v):.1f}" for i, (x, v) in enumerate(pts))
            dash = ' stroke-dasharray="5 4"' if dashed else ""
            body.append(f'<path d="{d}" fill="none" stroke="{colour}" stroke-width="2"{dash}><title>{escape(name)}</title></path>')
        dash = ' stroke-dasharray="5 4"' if dashed else ""
        body.append(f'<line x1="{lx}" x2="{lx + 18}" y1="{height - 22}" y2="{height - 22}" stroke="{colour}" '
                    f'stroke-width="3"{dash}/>')
        body.append(_text(lx + 22, height - 18, name, 11))
        lx += 34 + 7 * len(name)
    return _doc(width, height, title, body)
