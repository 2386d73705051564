"""Turning results into what a page shows: Markdown tables and matplotlib figures.

Pages display only numbers read from a results JSON, through these helpers.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import matplotlib.pyplot as plt


def pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def pct_interval(rec: Mapping[str, Any] | None) -> str:
    """A record's value with its 95% interval, ``81.8% [79.3%, 84.0%]``; the value alone without an interval;
    ``–`` for no record."""
    if rec is None:
        return "–"
    bounds = rec.get("interval")
    return pct(rec["value"]) + (f" [{pct(bounds[0])}, {pct(bounds[1])}]" if bounds else "")


def markdown_table(rows: Iterable[Mapping[str, Any]], columns: Mapping[str, str],
                   formats: Mapping[str, Callable[[Any], str]] | None = None) -> str:
    """A Markdown table: ``columns`` maps row keys to headers; ``formats`` maps keys to formatters."""
    formats = formats or {}
    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [formats.get(k, _default_format)(row.get(k, "")) for k in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _default_format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _field(rec: Mapping[str, Any], key: str) -> Any:
    return rec[key] if key in rec and key != "setting" else rec.get("setting", {}).get(key, "")


def records_table(records: Sequence[Mapping[str, Any]], rows: Sequence[str], column: str,
                  value_format: Callable[[float], str] = pct, with_interval: bool = False,
                  headers: Mapping[str, str] | None = None) -> str:
    """A Markdown pivot of result records: one row per distinct value of the ``rows`` fields (record fields or
    ``setting`` keys), one column per distinct value of ``column``, cells the records' values (``–`` if absent).
    ``with_interval`` adds the 95% interval under each value."""
    headers = dict(headers or {})
    row_keys: list[tuple] = []
    col_keys: list[Any] = []
    cells: dict[tuple, str] = {}
    for rec in records:
        rk, ck = tuple(_field(rec, k) for k in rows), _field(rec, column)
        if rk not in row_keys:
            row_keys.append(rk)
        if ck not in col_keys:
            col_keys.append(ck)
        text = value_format(rec["value"])
        if with_interval and rec.get("interval"):
            lo, hi = rec["interval"]
            text += f" [{value_format(lo)}, {value_format(hi)}]"
        cells[rk, ck] = text
    head = [headers.get(k, k) for k in rows] + [headers.get(str(c), _default_format(c)) for c in col_keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rk in row_keys:
        lines.append("| " + " | ".join([*map(_default_format, rk), *(cells.get((rk, c), "–") for c in col_keys)])
                     + " |")
    return "\n".join(lines)


def duration(seconds: float | None, cached: bool = False) -> str:
    """A duration in a table: ``cached`` (nothing ran), ``–`` (unknown), seconds under two minutes, else minutes."""
    if cached:
        return "cached"
    if seconds is None:
        return "–"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _setting_or_field(rec: Mapping[str, Any], key: str) -> Any:
    return rec[key] if key in rec and key != "setting" else rec.get("setting", {}).get(key)


def _matching(records: Sequence[Mapping[str, Any]], match: Mapping[str, Any]) -> list:
    def same(have, want):
        if isinstance(want, float) and isinstance(have, (int, float)) and not isinstance(have, bool):
            return abs(have - want) <= 1e-9 * max(1.0, abs(want))
        return have == want

    return [r for r in records if all(same(_setting_or_field(r, k), v) for k, v in match.items())]


def record_table(records: Sequence[Mapping[str, Any]], rows: Mapping[str, Mapping[str, Any]],
                 columns: Mapping[str, Mapping[str, Any] | Callable[[list], str]], corner: str = "",
                 cell: Callable[[Mapping[str, Any]], str] = pct_interval) -> str:
    """A Markdown table of result records, each column named once.

    ``rows`` maps a row label to the fields (or setting entries) its records share; ``columns`` maps a header to
    either more fields, whose one matching record is shown with ``cell`` (default: value with its interval, ``–``
    when none matches), or a function of the row's records that returns the cell's text. Several matching
    records are an error: the selectors must say which number is meant."""
    lines = ["| " + " | ".join([corner, *columns]) + " |", "|" + "---|" * (len(columns) + 1)]
    for label, row_match in rows.items():
        mine = _matching(records, row_match)
        cells = []
        for header, selector in columns.items():
            if callable(selector):
                cells.append(selector(mine))
                continue
            found = _matching(mine, selector)
            if len(found) > 1:
                raise ValueError(f"column {header!r} of row {label!r}: {len(found)} records match {selector}")
            cells.append(cell(found[0]) if found else "–")
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines)


def health_tables(rows: Sequence[Mapping[str, Any]], by: Sequence[str] = ("dataset", "model")) -> str:
    """The health rows as one table per group (by default per data set and network), each under a heading that
    names its group, so that a reader never sees two networks' checks in one table."""
    groups: dict[tuple, list] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in by), []).append(row)
    if not groups:
        return "No health checks were run."
    parts = []
    for key, group in groups.items():
        title = " · ".join(f"{k.replace('_', ' ')} `{v}`" for k, v in zip(by, key) if v is not None)
        parts.append((f"**{title}**\n\n" if title else "") + health_markdown(group))
    return "\n\n".join(parts)


def health_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The evaluation-health table; failed checks are marked, never dropped."""
    table = markdown_table(
        [{**r, "status": "✅ pass" if r["passed"] else "❌ **FAIL**"} for r in rows],
        {"check": "check", "measured": "measured", "expected": "expected", "status": "status"})
    failed = [r["check"] for r in rows if not r["passed"]]
    note = (f"\n\n**{len(failed)} check(s) failed:** {'; '.join(failed)}. Treat the robustness numbers above "
            "with the corresponding caution." if failed else "\n\nAll checks passed.")
    return table + note


def plot_curves(curves: Mapping[str, Sequence[Mapping[str, float]]], xlabel: str, ylabel: str = "accuracy",
                title: str = "", ax=None, chance: float | None = None):
    """One line per named curve of ``{"eps": ..., "accuracy": ...}`` points."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    for name, points in curves.items():
        ax.plot([p["eps"] for p in points], [p["accuracy"] for p in points], marker="o", label=name)
    if chance is not None:
        ax.axhline(chance, color="gray", ls=":", lw=1, label="chance")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, ylim=(-0.02, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def show_image(ax, img) -> None:
    """Draw one (C, H, W) image in [0, 1] (grayscale or RGB) without axes."""
    img = img.permute(1, 2, 0).clamp(0, 1).numpy()
    ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
              vmin=0, vmax=1)
    ax.axis("off")


def plot_examples(x, x_adv, labels, preds_clean, preds_adv, names: Sequence[str], n: int = 8, title: str = ""):
    """Rows: clean image, adversarial image, amplified perturbation, for ``n`` samples."""
    n = min(n, len(x))
    fig, axes = plt.subplots(3, n, figsize=(1.4 * n, 4.6))
    for i in range(n):
        delta = (x_adv[i] - x[i])
        scale = float(delta.abs().max()) or 1.0
        for row, (img, caption) in enumerate([
            (x[i], f"{names[int(labels[i])]}\n→ {names[int(preds_clean[i])]}"),
            (x_adv[i], f"→ {names[int(preds_adv[i])]}"),
            (0.5 + 0.5 * delta / scale, f"δ×{0.5 / scale:.0f}"),
        ]):
            show_image(axes[row, i], img)
            axes[row, i].set_title(caption, fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
