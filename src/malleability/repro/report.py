"""The reproduction report: every finished cell of a run folder → ``OUT/report.md``,
``OUT/report.html`` (same content) and figures (PNG and SVG) under ``OUT/figures/``.

A report is a list of blocks (headings, paragraphs, tables, images). Each experiment builds
its own section (``section(records, figures)``) beside the paper's numbers for it; this module
holds the block types, the formatting of numbers, the renderers and the run summary. Sections
whose experiment has no results say "not run"."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

from ..intervals import NO_SPREAD, TOO_FEW_SEEDS
from .blocks import Block, Heading, Table, Text, fmt
from .claims import experiment_cells, section_records, with_claims
from .experiments import EXPERIMENTS
from .files import atomic_write, clean_temp_files
from .loading import Run, load_run, planned_seeds
from .seeds import CI_METHOD, CLIPPED, LOG_SCALE
from .store import SETTINGS_FILE, log

#: Settings every network experiment has, shown in their own tables of the run summary.
SHARED_SETTINGS = ("tasks", "model", "train", "influence", "attack")

# --- run summary --------------------------------------------------------------------------------


def _flatten(settings: Any, prefix: str = "") -> list[str]:
    """Nested settings as ``key=value`` strings (``model.width=256``)."""
    if isinstance(settings, dict):
        return [item for key, value in settings.items()
                for item in _flatten(value, f"{prefix}{key}.")]
    if isinstance(settings, list):
        settings = ",".join(str(v) for v in settings) or "[]"
    return [f"{prefix.rstrip('.')}={settings}"]


#: Settings shown per experiment in the run summary (the unstated ones the preset calibrates).
CALIBRATED = ("train.l2_to_init", "train.l2_convention", "model.init_scale", "model.width",
              "model.dtype", "train.epochs", "tasks.n_train", "tasks.n_influence", "tasks.n_test",
              "influence.ridge", "attack.eps")


#: How a task size stored as None (the whole split) is shown.
WHOLE_SPLIT = {"n_train": "full", "n_influence": "all n_train"}


def _get(settings: dict | None, key: str) -> Any:
    """A dotted setting of an experiment's settings dict (tasks: the first task's), or None."""
    value: Any = settings
    for part in key.split("."):
        if isinstance(value, list):
            value = value[0] if value else None
        value = value.get(part) if isinstance(value, dict) else None
    if key.startswith("tasks.n_") and value is None and settings and settings.get("tasks"):
        return WHOLE_SPLIT.get(key.removeprefix("tasks."))
    return value


def _seeds_line(run: Run) -> str:
    """The run's seeds from settings.json (with the experiments that have their own), or
    without it the seeds its cells hold."""
    if "seeds" in run.settings:
        own = run.settings.get("experiment_seeds") or {}
        others = "".join(f"; {name}: {', '.join(map(str, seeds))}"
                         for name, seeds in sorted(own.items()) if name in run.cells)
        return f"Seeds: {', '.join(map(str, run.settings['seeds']))}{others}."
    found = sorted({str(r["cell"].get("seed", "—")) for cells in run.cells.values()
                    for r in cells})
    return (f"Seeds: unknown, no valid {SETTINGS_FILE} (the cells hold seeds "
            f"{', '.join(found) or 'none'}).")


def planned_cells(run: Run, name: str) -> int | None:
    """How many cells the run's plan has for experiment ``name`` (its cells × its seeds), or
    None when settings.json does not say."""
    seeds = planned_seeds(run.settings, name)
    experiment = EXPERIMENTS.get(name)
    if seeds is None or experiment is None or not isinstance(run.settings.get(name), dict):
        return None
    try:
        settings = experiment.SETTINGS.from_dict(run.settings[name], name)
        return len(list(experiment.cells(settings))) * len(seeds)
    except (KeyError, TypeError, ValueError):  # settings of another version
        return None


def _cells_line(run: Run, names: list[str]) -> str:
    """Cells used (of the plan's), left out and unchecked, and the seeds missing from the
    plan."""
    used = sum(len(run.cells.get(name, [])) for name in names)
    planned = [planned_cells(run, name) for name in names]
    of = "" if None in planned else f" of {sum(planned)} planned"
    gaps = "; ".join(f"{name} {', '.join(map(str, seeds))}"
                     for name, seeds in run.missing_seeds.items())
    unchecked = (f", {len(run.unchecked)} used without a checksum (a run that predates them)"
                 if run.unchecked else "")
    return (f"Cells: {used} used{of}; files left out: {len(run.skipped)}{unchecked}. "
            f"Seeds missing from the plan: {gaps or 'none'}.")


def summary_section(run: Run, names: list[str]) -> list[Block]:
    """Settings, versions, device, wall time and cell counts of the experiments ``names``."""
    records = [r for cells in run.cells.values() for r in cells]
    seconds = sum(r["timing"]["seconds"] for r in records)
    devices = sorted({str(r["device"]) for r in records})
    versions = run.versions or (records[0]["versions"] if records else {})
    experiments = {k: v for k, v in run.settings.items()
                   if k not in ("seeds", "experiment_seeds")}
    own = [[name, str(len(run.cells.get(name, []))),
            fmt(sum(r["timing"]["seconds"] for r in run.cells.get(name, []))),
            "; ".join(_flatten({k: v for k, v in (experiments.get(name) or {}).items()
                                if k not in SHARED_SETTINGS})) or "—"]
           for name in names]
    shared: dict[str, list[str]] = {}  # network settings → experiments using them
    for name, settings in experiments.items():
        key = "; ".join(_flatten({k: settings[k] for k in SHARED_SETTINGS[1:]
                                  if k in settings}))
        if key:
            shared.setdefault(key, []).append(name)
    tasks = {json.dumps(t, sort_keys=True): t for s in experiments.values()
             for t in s.get("tasks", [])}
    columns = ("dataset", "classes", "n_train", "n_influence", "n_test", "seed")
    task_rows = [[WHOLE_SPLIT.get(k, "—") if t.get(k) is None else fmt(t[k]) for k in columns]
                 for t in tasks.values()]
    calibrated = [[name, ", ".join(map(str, sorted({r["cell"].get("seed", 0)
                                                     for r in run.cells.get(name, [])}))) or "—",
                   *(fmt(_get(experiments.get(name), key)) for key in CALIBRATED)]
                  for name in names if "train" in (experiments.get(name) or {})]
    return [Text("What was run: the resolved preset from settings.json, the software versions, "
                 "the device and the cells finished per experiment."),
            Text(f"Device: {', '.join(devices) or '—'}. {_seeds_line(run)} "
                 f"{_cells_line(run, names)} Total cell wall time {fmt(seconds)} s "
                 f"({fmt(seconds / 60)} min)."),
            *([Table(["file", "why it was left out"], [list(s) for s in run.skipped],
                     "Files left out of this report.")] if run.skipped else []),
            Text(f"Every measured number is the mean over seeds with a confidence interval: "
                 f"{CI_METHOD}; figures draw it as error bars; a run with one seed shows plain "
                 "values. A verdict is agrees / disagrees only when that interval decides "
                 f"it, else inconclusive. {CLIPPED} Positive quantities spanning decades (κ, "
                 f"width thresholds, kernel distances; captions say where) are the "
                 f"{LOG_SCALE}."),
            Table(["experiment", "seeds run", *CALIBRATED], calibrated,
                  "The training settings the paper does not state (λ_reg and its convention, "
                  "init scale, n_train, epochs) and the sizes measured on, per experiment "
                  "(first task's sizes; every task in the tasks table)."),
            Table(["package", "version"], [[k, str(v)] for k, v in versions.items()],
                  "Versions."),
            Table(["experiment", "cells", "wall time s", "settings"], own,
                  "Cells, wall time and each experiment's own settings."),
            Table(["experiments", "network, training, influence and attack settings"],
                  [[", ".join(names), key] for key, names in shared.items()],
                  "Network, training, influence and attack settings."),
            Table(list(columns), task_rows, "Tasks (n_train full: the whole training split).")]


# --- building and rendering ---------------------------------------------------------------------


def build_report(run: Run, figures: Path) -> list[Block]:
    """All blocks of the report; figures are written under ``figures``."""
    blocks: list[Block] = [Heading("Reproduction report: arXiv 2603.13085", 1),
                           Text("Linearized Attention Cannot Enter the Kernel Regime at Any "
                                "Practical Width. Measured values from the run in "
                                f"{run.out.name}/, the paper's reported values beside them "
                                "where it has the task."),
                           Heading("1. Run summary")]
    # the preset's experiments (settings.json), or every experiment for a folder without them
    names = [n for n in EXPERIMENTS if n in run.settings] or list(EXPERIMENTS)
    blocks += summary_section(run, names)
    for number, name in enumerate(names, start=2):
        experiment = EXPERIMENTS[name]
        blocks += [Heading(f"{number}. {experiment.TITLE}"), Text(experiment.INTRO)]
        blocks += _section(name, run.cells.get(name) and experiment_cells(run, name), figures)
    return with_claims(run, blocks)


def _section(name: str, records: list[dict] | None, figures: Path) -> list[Block]:
    """The blocks of experiment ``name`` from its cells: "not run" without any, and a line
    saying why (with a warning) when the cells lack what this version reads."""
    if not records:
        return [Text(f"Not run: no results under {name}/ in this run.")]
    experiment, count = EXPERIMENTS[name], len(records)
    try:
        records = section_records(experiment, records)
        return experiment.section(records, figures)
    except (KeyError, IndexError, TypeError, ValueError) as err:
        why = f"{type(err).__name__}: {err}"
        log.warning("%s/: this section cannot be built from its %d cells (%s); written by "
                    "another version? A reproduce run on this folder recomputes them", name,
                    count, why)
        return [Text(f"Not built: the cells under {name}/ lack what this version of the report "
                     f"reads ({why}); they were written by another version.")]


def _md(text: str) -> str:
    """Plain text for markdown: ``*`` and ``|`` escaped, on one line."""
    return text.replace("*", "\\*").replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list[Block]) -> str:
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Text):
            parts.append(_md(block.text))
        elif isinstance(block, Table):
            lines = [f"*{_md(block.caption)}*", ""] if block.caption else []
            lines += ["| " + " | ".join(map(_md, block.header)) + " |",
                      "|" + "---|" * len(block.header)]
            lines += ["| " + " | ".join(map(_md, row)) + " |" for row in block.rows]
            parts.append("\n".join(lines))
        else:
            caption = _md(block.caption)
            parts.append(f"![{caption}]({block.path})\n\n*{caption}*")
    return "\n\n".join(parts) + "\n"


def to_text(table: Table) -> str:
    """A table as aligned plain text (for a terminal)."""
    cells = [table.header, *table.rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(table.header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w)
                       for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(([table.caption] if table.caption else []) + lines)


STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em;line-height:1.4}"
         ".scroll{overflow-x:auto;max-width:100%}"
         "table{border-collapse:collapse;margin:0 0 1em;font-size:90%}"
         "th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}"
         "td{min-width:3em}td.num{text-align:right;white-space:nowrap}"
         "td.agrees{background:#e6f4e6}td.disagrees{background:#fbe4e4}"
         "td.undecided{background:#f3f3f3;color:#555}"
         "th{background:#f0f0f0}p.caption{font-style:italic;margin:1em 0 0.3em}"
         "img{max-width:100%}figcaption{font-style:italic}")


#: A cell that is a number (with its interval or unit): right-aligned, as numbers are read.
NUMBER = re.compile(r"^[−+-]?[\d.,]+(e[−+-]?\d+)?( ?%)?( \[[^\]]*\])?$")
#: A cell that is a verdict: shaded by it (green agrees, red disagrees, grey undecided).
VERDICTS = {"agrees": "agrees", "disagrees": "disagrees", "inconclusive": "undecided",
            TOO_FEW_SEEDS: "undecided", NO_SPREAD: "undecided"}


#: A text cell is at least as wide as this many of its characters (0.6 em each), so
#: that a wide table scrolls in its box instead of squeezing its text into tall narrow columns;
#: longer text wraps.
WIDE_CHARS = 26


def _cell(text: str) -> str:
    """One table cell: a number right-aligned on one line, a verdict shaded, text at least
    min(its length, WIDE_CHARS) characters wide."""
    esc = html.escape(text)
    if NUMBER.match(text):
        return f'<td class="num">{esc}</td>'
    width = f' style="min-width:{0.6 * min(len(text), WIDE_CHARS):.1f}em"'
    shade = f' class="{VERDICTS[text]}"' if text in VERDICTS else ""
    return f"<td{shade}{width}>{esc}</td>"


def to_html(blocks: list[Block], title: str = "Reproduction report: arXiv 2603.13085") -> str:
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html><head><meta charset="utf-8">',
             f"<title>{esc(title)}</title>",
             f"<style>{STYLE}</style></head><body>"]
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"<h{block.level}>{esc(block.text)}</h{block.level}>")
        elif isinstance(block, Text):
            parts.append(f"<p>{esc(block.text)}</p>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{esc(h)}</th>" for h in block.header)
            body = "".join("<tr>" + "".join(map(_cell, row)) + "</tr>" for row in block.rows)
            # the caption above the scroll box, so that it wraps at the page's width
            caption = f'<p class="caption">{esc(block.caption)}</p>' if block.caption else ""
            parts.append(f'{caption}<div class="scroll"><table>'
                         f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")
        else:
            parts.append(f'<figure><img src="{esc(block.path)}" alt="{esc(block.caption)}">'
                         f"<figcaption>{esc(block.caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(out: Path) -> Path:
    """Write ``out/report.md``, ``out/report.html`` and ``out/figures/*`` from the cell
    results under ``out``; return the path of report.md. Cell files that fail their checks
    are left out with a warning; a folder that holds no run is refused before anything is
    written; temporary files of a killed report are removed."""
    out = Path(out)
    run = load_run(out)
    for temp in [*clean_temp_files(out / "figures"), *clean_temp_files(out, "report.md"),
                 *clean_temp_files(out, "report.html")]:
        log.info("removed %s, left by a killed report", temp.relative_to(out))
    for rel, why in run.skipped:
        log.warning("%s: %s; left out of the report (a reproduce run on this folder moves it "
                    "aside and recomputes it)", rel, why)
    for rel in run.unchecked:
        log.warning("%s: no checksum (a cell of a run that predates them); read unchecked", rel)
    for name, seeds in run.missing_seeds.items():
        log.warning("%s/: no cell for seeds %s of the run's plan", name,
                    ", ".join(map(str, seeds)))
    blocks = build_report(run, out / "figures")
    atomic_write(out / "report.html", to_html(blocks))
    return atomic_write(out / "report.md", to_markdown(blocks))

