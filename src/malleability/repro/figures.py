"""Figures of the report: small matplotlib (Agg) plotters that take plain numbers and write a
PNG and an SVG copy beside it, so the experiments decide what to plot and these decide only
how. Numbers measured per seed (Estimates with a 95 % ``interval``) get error bars."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .store import atomic_write  # noqa: E402

DPI = 110
PANEL_SIZE = (4.6, 3.3)


@dataclass
class Line:
    """One curve of a line panel; ``style`` goes to ``Axes.plot`` (e.g. ``{"ls": "--"}``)."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    style: dict = field(default_factory=dict)


def _grid(count: int, ncols: int = 2, size: tuple[float, float] = PANEL_SIZE,
          sharey: bool = False):
    ncols = max(1, min(ncols, count))
    nrows = math.ceil(count / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows),
                             squeeze=False, sharey=sharey)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def _save(fig, path: Path, legend: bool = False) -> Path:
    """Lay out, add one legend below the panels (labels merged over panels), write the PNG
    at ``path`` and an SVG copy beside it."""
    fig.tight_layout()
    if legend:
        handles = {}
        for ax in fig.axes:
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                handles.setdefault(label, handle)
        fig.legend(handles.values(), handles.keys(), loc="upper center", fontsize=8,
                   bbox_to_anchor=(0.5, 0.0), ncol=min(4, len(handles)), frameon=False)
    for target, fmt in ((path, "png"), (path.with_suffix(".svg"), "svg")):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, dpi=DPI, bbox_inches="tight" if legend else None)
        atomic_write(target, buffer.getvalue())
    plt.close(fig)
    return path


def _tick_label(value: float) -> str:
    """A compact tick label for round thousands (2k, 60k, 1M); other values as they are."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= scale and value % scale == 0:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def _yerr(values: Sequence[float]) -> np.ndarray | None:
    """Asymmetric error bars (2 × n) from values carrying a 95 % interval (an Estimate over
    seeds), as a reader sees it (``Estimate.shown_interval``: clipped to the quantity's
    range); None when no value has one. Lengths clipped at 0 (round-off around the mean)."""
    bounds = [v.shown_interval() if hasattr(v, "shown_interval") else None for v in values]
    if not any(bounds):
        return None
    return np.maximum(np.array([[float(v) - b[0], b[1] - float(v)] if b else [0.0, 0.0]
                                for v, b in zip(values, bounds, strict=True)]).T, 0.0)


def line_panels(path: Path, panels: dict[str, list[Line]], xlabel: str, ylabel: str,
                logx: bool = False, logy: bool = False) -> Path:
    """One panel per title, each with its curves (non-finite points dropped), one legend
    below all panels; log x axes are ticked at the data's x values."""
    fig, axes = _grid(len(panels))
    for ax, (title, lines) in zip(axes, panels.items(), strict=False):
        for line in lines:
            x, y = np.asarray(line.x, float), np.asarray(line.y, float)
            keep = np.isfinite(y) & (y > 0 if logy else True)
            yerr = _yerr(line.y)
            style = {"marker": "o", "ms": 4, **line.style}
            if yerr is None:
                ax.plot(x[keep], y[keep], label=line.label, **style)
            else:
                ax.errorbar(x[keep], y[keep], yerr=yerr[:, keep], label=line.label, capsize=2,
                            **style)
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        if logy:
            ax.set_yscale("log")
        if logx:
            ax.set_xscale("log")
            ticks = sorted({float(v) for line in lines for v in line.x})
            ax.set_xticks(ticks, [_tick_label(t) for t in ticks])
            if any(b / a < 3 for a, b in zip(ticks, ticks[1:], strict=False) if a > 0):
                ax.tick_params(axis="x", labelrotation=45)  # close ticks: labels would touch
        if logx or logy:
            ax.minorticks_off()  # log minor tick labels dominate drawing time
        ax.grid(alpha=0.3)
    return _save(fig, path, legend=True)


def bar_panels(path: Path, panels: dict[str, dict[str, dict[str, float]]], ylabel: str,
               reference: dict[str, dict[str, dict[str, float]]] | None = None,
               reference_label: str = "paper", sharey: bool = False) -> Path:
    """Grouped bars: ``panels[title][group][series] = value``; ``reference`` (same shape, may
    be partial) is drawn as black diamonds on the matching bars; ``sharey``: one y scale for
    all panels. Long group labels are slanted so they do not overlap."""
    fig, axes = _grid(len(panels), sharey=sharey)
    for ax, (title, groups) in zip(axes, panels.items(), strict=False):
        series = list(dict.fromkeys(s for values in groups.values() for s in values))
        width = 0.8 / max(1, len(series))
        ref = (reference or {}).get(title, {})
        labelled = False
        for j, name in enumerate(series):
            xs = np.arange(len(groups)) + (j - (len(series) - 1) / 2) * width
            ys = [groups[g].get(name, np.nan) for g in groups]
            ax.bar(xs, np.asarray(ys, float), width, label=name, yerr=_yerr(ys), capsize=2)
            refs = [ref.get(g, {}).get(name, np.nan) for g in groups]
            if np.isfinite(refs).any():
                ax.plot(xs, refs, "kD", ms=5, label=None if labelled else reference_label)
                labelled = True
        ax.set_xticks(np.arange(len(groups)), list(groups))
        if max(map(len, groups)) * len(groups) > 28:  # labels would overlap side by side
            plt.setp(ax.get_xticklabels(), rotation=25, ha="right")
        ax.set(title=title, ylabel=ylabel)
        ax.tick_params(axis="y", labelleft=True)
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, path, legend=True)


def complexity_panels(path: Path, panels: dict[str, tuple[Sequence[float], Sequence[float]]]
                      ) -> Path:
    """Per panel: RKHS-norm share bars by influence decile, mean influence on a twin axis."""
    fig, axes = _grid(len(panels))
    for ax, (title, (share, influence)) in zip(axes, panels.items(), strict=False):
        deciles = np.arange(1, len(share) + 1)
        ax.bar(deciles, share, color="tab:blue", alpha=0.7)
        ax.axhline(0, color="k", lw=0.5)
        ax.set(title=title, xlabel="influence decile (1 = lowest $I_i$)", xticks=deciles)
        ax.set_ylabel("share of RKHS norm", color="tab:blue")
        twin = ax.twinx()
        twin.plot(deciles, influence, "o-", color="tab:red", ms=4)
        twin.set_ylabel("mean influence $I_i$", color="tab:red")
        for axis in (ax.yaxis, twin.yaxis):
            axis.set_major_locator(MaxNLocator(5))
    return _save(fig, path)


def landscape_panels(path: Path, rows: dict[str, tuple[Sequence[float], list, list]]) -> Path:
    """Per row: contour maps of the loss on θ* + a·u + b·v for the network and its NTK, on
    one colour scale per row so the two panels compare directly."""
    fig, axes = plt.subplots(len(rows), 2, figsize=(9.0, 3.6 * len(rows)), squeeze=False)
    for (left, right), (title, (grid, network, ntk)) in zip(axes, rows.items(), strict=True):
        both = np.concatenate([np.ravel(network), np.ravel(ntk)]).astype(float)
        lo, hi = float(np.nanmin(both)), float(np.nanmax(both))
        levels = np.linspace(lo, hi if hi > lo else lo + 1e-12, 16)
        for ax, name, surface in ((left, "network", network), (right, "NTK", ntk)):
            # surface[i][j] is the loss at (a, b) = (grid[i], grid[j]); contourf wants [b, a]
            filled = ax.contourf(grid, grid, np.asarray(surface, float).T, levels=levels,
                                 cmap="viridis")
            ax.plot(0, 0, "r+", ms=10)
            bar = fig.colorbar(filled, ax=ax, label="training loss")
            bar.locator = MaxNLocator(5)  # few tick labels: text dominates drawing time
            ends = [grid[0], 0, grid[-1]]
            ax.set(title=f"{title}: {name}", xlabel="a (direction u)", ylabel="b (direction v)",
                   xticks=ends, yticks=ends)
    return _save(fig, path)


def _as_image(array: Sequence) -> tuple[np.ndarray, str | None]:
    image = np.clip(np.asarray(array, float), 0.0, 1.0)
    if image.ndim == 3 and image.shape[0] == 1:
        return image[0], "gray"
    if image.ndim == 3:
        return image.transpose(1, 2, 0), None
    return image, "gray"


def influence_grid(path: Path, rows: dict[str, dict]) -> Path:
    """Per row title: the test image, then the training images in ``row["images"]`` with
    their ``row["captions"]``; ``row["test"]`` = (image, caption) or None to leave blank.
    Drawn as tiles on one axes (one axes per image would cost seconds)."""
    pitch_x, pitch_y = 1.15, 1.45  # tile pitch in tile sizes: room for captions
    ncols = 1 + max(len(r["images"]) for r in rows.values())
    fig, ax = plt.subplots(figsize=(1.3 * ncols, 1.5 * len(rows)))
    for i, (title, row) in enumerate(rows.items()):
        top = -pitch_y * i
        tiles = [(0, *row["test"])] if row["test"] is not None else []
        tiles += [(j + 1, image, caption) for j, (image, caption)
                  in enumerate(zip(row["images"], row["captions"], strict=False))]
        for col, array, caption in tiles:
            image, cmap = _as_image(array)
            left = pitch_x * col
            ax.imshow(image, cmap=cmap, vmin=0, vmax=1, interpolation="nearest",
                      extent=(left, left + 1, top - 1, top))
            ax.text(left + 0.5, top + 0.04, caption, ha="center", va="bottom", fontsize=7,
                    color="tab:blue" if col == 0 else "k")
        ax.text(pitch_x - 0.075, top - 0.5, title, rotation=90, ha="center", va="center",
                fontsize=7)
    ax.set(xlim=(-0.05, pitch_x * ncols), ylim=(-pitch_y * len(rows) + 0.4, 0.3),
           aspect="equal")
    ax.axis("off")
    return _save(fig, path)
