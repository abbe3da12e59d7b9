"""The tables of docs/reproduction.md that are generated from the committed cells, so that no
number in them is typed by hand:

- docs/claims.md: the claims table that opens the report of docs/runs/paper (sensitivity
  from docs/runs/sensitivity beside it);
- docs/spectrum_kappa.md: κ_eff (geometric mean over seeds) and the width threshold per task
  and n (the seeds each summary is over listed);
- docs/collapse.md: the mean pairwise cosine of Figure 7 per task and feature map;
- docs/table1.md, table2.md, table3.md, table5.md, complexity.md, sensitivity_gap.md,
  width_sensitivity.md: the sections' tables of the reports of docs/runs/paper and
  docs/runs/sensitivity (Table 3 and the sensitivity gaps narrowed to the columns the doc
  discusses);
- docs/table3_strong.md: Table 3 under the per-point worst case of three attacks
  (robust_evaluation's committed cells), narrowed to the worst case, the Square-only breaks and
  the decision;
- docs/intervention_dynamics.md: A.6.1's claims (the cells committed so far);
- docs/flip_dynamics.md: A.6.2, MLP-Attn's minus 2L-ReLU's flip rate at each recorded epoch,
  and A.6.2's claims;
- docs/table1_gd.md: Table 1's optimizer axis (Adam beside GD with the NTK step), distances
  per width and their rates in m;
- docs/table2_controls.md: what the random-perturbation control changes in each Table 2
  verdict (flip_controls' cells; "not yet run" where a task has none);
- docs/softmax_temperature.md: the paper's open question, temperature-scaled softmax's
  collapse and conditioning per τ and its NTK distances per τ and width;
- docs/new_measurements.md: the tables of A.2's mechanism (κ and its factors, the control
  pairs), Prop. 4.13 with trainable QKV (distances, conditioning) and Figure 6 on CIFAR-10;
- docs/table5_adversarial.md: Table 5's adversarially trained half (`adversarial_interventions`):
  how its cells ran, its table, its accuracy claims and the flip rate before and after
  adversarial training;
- docs/table2_facts.md, docs/table5_facts.md: the measured numbers the discussions of
  Tables 2 and 5 quote (ranges over the tasks, the claims' values and verdicts);
- docs/numerics.md: the A.9 checks and the top-K stability (A.5.2) of Tables 2 and 5;
- docs/progress.md: per experiment of docs/runs/paper, the cells committed against the plan
  and the device they ran on;
- docs/verdict_changes_more_seeds.md: the claims of Tables 2 and 5 on seeds 0–4 beside every
  seed, and the rows whose verdict the added seeds changed;

and docs/verdict_changes.md, docs/verdict_changes_seeds.md,
docs/verdict_changes_geometric.md, docs/interval_coverage.md and
docs/c4_split.md (written by docs/verdict_changes.py, docs/interval_coverage.py and
docs/c4_split.py). Each is spliced into docs/reproduction.md between ``<!-- begin NAME -->``
and ``<!-- end NAME -->``; tests/test_claims.py checks that the doc carries the files
verbatim.

Run from the repository root: ``PYTHONPATH=src python docs/generated.py`` (reads the runs,
writes nothing under docs/runs; a few minutes).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

from malleability.intervals import TOO_FEW_SEEDS
from malleability.repro.blocks import Block, Claim, Table, Text, fmt, group
from malleability.repro.claims import claims_section, experiment_cells, run_claims, section_records
from malleability.repro.experiments import EXPERIMENTS
from malleability.repro.experiments.base import decide, model_name
from malleability.repro.experiments.collapse import KINDS
from malleability.repro.experiments.flip_controls import NOT_RUN, PENDING, changes_table
from malleability.repro.experiments.flip_rates import PAPER_TABLE2
from malleability.repro.experiments.interventions import PAPER_TABLE5
from malleability.repro.experiments.numerics import A9_CAPTION, a9_table, top_k_table
from malleability.repro.loading import Run, load_run
from malleability.repro.report import planned_cells, to_markdown
from malleability.repro.seeds import combine

DOCS = Path(__file__).parent
RUNS = DOCS / "runs"
SPLICED = ("progress.md", "claims.md", "spectrum_kappa.md", "collapse.md", "verdict_changes.md",
           "verdict_changes_seeds.md", "verdict_changes_geometric.md",
           "verdict_changes_more_seeds.md", "interval_coverage.md",
           "c4_split.md", "table1.md", "table1_gd.md",
           "table2.md", "table2_controls.md", "sensitivity_gap.md", "width_sensitivity.md",
           "table3.md", "table3_strong.md", "intervention_dynamics.md", "flip_dynamics.md",
           "table5.md", "complexity.md", "numerics.md", "softmax_temperature.md",
           "new_measurements.md", "table2_facts.md", "table5_facts.md",
           "table5_adversarial.md")


def spectrum_table(records: list[dict]) -> Table:
    """κ_eff of the inputs and of linear attention, and log₁₀ m* (MLP-Attn), per task and n."""
    rows = []
    for (task, _), (record, *_) in group(records, "task", "n").items():
        res = record["result"]
        rows.append([task, fmt(res["inputs"]["n"]), ", ".join(map(str, record["seeds"])),
                     fmt(res["inputs"]["kappa_effective"]),
                     fmt(res["attention"]["kappa_effective"]),
                     fmt(combine(math.log10, res["threshold_attention"]))])
    return Table(["task", "n", "seeds", "κ_eff (inputs)", "κ_eff (linear attention)",
                  "log₁₀ m* (MLP-Attn)"], rows)


def collapse_table(records: list[dict]) -> Table:
    """Mean pairwise cosine per task and feature map (5 digits: the attention maps differ
    from 1 only there)."""
    rows = [[task, fmt(record["result"]["n"]), ", ".join(map(str, record["seeds"])),
             *(fmt(record["result"]["collapse"][k], 5) for k in KINDS)]
            for (task,), (record, *_) in group(records, "task").items()]
    return Table(["task", "n", "seeds", *KINDS], rows)


def section_tables(run: Run, name: str) -> list[Table]:
    """The tables of experiment ``name``'s report section (its figures drawn into a temporary
    folder)."""
    module = EXPERIMENTS[name]
    records = section_records(module, experiment_cells(run, name))
    with tempfile.TemporaryDirectory() as figures:
        return [b for b in module.section(records, Path(figures)) if isinstance(b, Table)]


def captioned(tables: list[Table], prefix: str) -> Table:
    """The table whose caption starts with ``prefix``."""
    return next(t for t in tables if t.caption.startswith(prefix))


def columns(table: Table, names: list[str], caption: str) -> Table:
    """``table`` narrowed to the columns ``names`` (in that order)."""
    index = [table.header.index(n) for n in names]
    return Table(names, [[row[i] for i in index] for row in table.rows], caption)


def gd_training(table: Table) -> Table:
    """``ntk_distance_gd``'s training table narrowed to its GD rows and the columns on the
    step: η, η against the network's own NTK at initialisation, divergence, t, the losses."""
    opt = table.header.index("optimizer")
    gd = Table(table.header, [row for row in table.rows if row[opt] == "gd"])
    return columns(gd, ["task", "model", "m", "step η", "η·λ_max(Θ_m,0)/n", "diverged",
                        "steps t", "final train loss", "Θ_∞ GD train loss"],
                   "GD's step η = c·n/λ_max(Θ_∞) per width, the same step against the "
                   "network's own NTK at initialisation over all n·C outputs "
                   "(η·λ_max(Θ_m,0)/n; the linearised network's GD is stable below 2; — "
                   "where the cells predate it), the seeds whose GD diverged (non-finite "
                   "training loss), the step count t and the training losses.")


def sensitivity_gap(table: Table) -> Table:
    """The sensitivity section's per-point table as points × tasks: the PGD gap MLP-Attn −
    2L-ReLU (points, paired by seed) and its verdict."""
    h = table.header
    at = {name: h.index(name) for name in ("task", "point", "gap (points)", "verdict")}
    tasks = list(dict.fromkeys(row[at["task"]] for row in table.rows))
    cells: dict[str, dict[str, str]] = {}
    for row in table.rows:
        cells.setdefault(row[at["point"]], {})[row[at["task"]]] = (
            f"{row[at['gap (points)']]} ({row[at['verdict']]})")
    return Table(["point", *tasks], [[point, *(by.get(t, "—") for t in tasks)]
                                     for point, by in cells.items()],
                 "PGD flip-rate gap MLP-Attn − 2L-ReLU (points, paired by seed, 95 % t interval) "
                 "and its verdict against the paper's claim, per point of the sweep and task.")


def controls_text(table: Table) -> Text:
    """What the control changes, counted from :func:`changes_table`'s rows."""
    change = table.header.index("what the control changes")
    run = [row for row in table.rows if row[change] not in (NOT_RUN, PENDING)]
    tasks = list(dict.fromkeys(row[0] for row in table.rows))
    missing = list(dict.fromkeys(row[0] for row in table.rows if row[change] == NOT_RUN))
    pending = list(dict.fromkeys(row[0] for row in table.rows if row[change] == PENDING))
    changed = [f"{row[0]} {row[1]} ({row[change]})" for row in run if row[change] != "unchanged"]
    return Text(f"Control cells exist for {len(tasks) - len(missing)} of the {len(tasks)} tasks; "
                f"not yet run: {', '.join(missing) or 'none'}"
                + (f"; on fewer than 3 seeds so far: {', '.join(pending)}" if pending else "")
                + f". Of the {len(run)} of {len(table.rows)} Table 2 verdicts whose control has "
                f"at least 3 seeds, {len(run) - len(changed)} stay as they are and "
                f"{len(changed)} change" + (f": {'; '.join(changed)}." if changed else "."))


def strong_text(strong: Table, gradient: Table, records: list[dict],
                complete: bool = False) -> Text:
    """What the worst case of three attacks (``strong``, robust_evaluation) changes against
    the gradient-only strong evaluation (``gradient``, Table 3 of adversarial_training), row by
    row, and the largest share of test points Square alone broke in any cell's seed. Rows on
    fewer than 3 seeds are named but not compared: their "undecided" is the seed count's.
    ``complete``: every planned cell is committed (no "so far")."""
    def by_row(table: Table, column: str) -> dict[tuple[str, ...], str]:
        at = table.header.index(column)
        return {tuple(row[:3]): row[at] for row in table.rows}

    worst = by_row(strong, next(h for h in strong.header if h.startswith("more robust")))
    grad = by_row(gradient, next(h for h in gradient.header if h.startswith("robust vs")))
    verdict, old_verdict = by_row(strong, "vs paper (rises)"), by_row(gradient,
                                                                     "vs paper (rises)")
    few = [k for k, v in verdict.items() if v == TOO_FEW_SEEDS]
    worst, verdict = ({k: v for k, v in by.items() if k not in few} for by in (worst, verdict))
    decided = [f"{' '.join(k)}: {grad.get(k, '—')} → {v}" for k, v in worst.items()
               if v.split()[0] != grad.get(k, "—").split()[0]]
    judged = [f"{' '.join(k)}: {old_verdict.get(k, '—')} → {v}" for k, v in verdict.items()
              if v != old_verdict.get(k)]
    shares = [(max(getattr(value, "values", [value])), record["cell"])
              for record in records for net in ("standard", "adversarial")
              for value in [record["result"][net]["square_only_breaks"]]]
    largest, where = max(shares, key=lambda pair: pair[0])
    tasks = ", ".join(dict.fromkeys(key[0] for key in worst))
    left = (f"; {len(few)} more on fewer than 3 seeds, left out of the two comparisons "
            f"after this: {'; '.join(' '.join(k) for k in few)}" if few else "")
    return Text(
        f"{len(worst)} rows with at least 3 seeds{'' if complete else ' so far'} "
        f"({tasks}{left}). Square, the "
        f"gradient-free attack, broke at most {100 * largest:.1f} % of the test points that "
        f"both PGD attacks had left correct, in any row, network and seed (largest: "
        f"{where['task']}, {model_name(where['model'])}, ε = {where['eps']:g}). The "
        f"robustness decision under the worst case matches the gradient-only one (Table 3 "
        f"above) in {len(worst) - len(decided)} of {len(worst)} rows"
        + (f"; it changes in {'; '.join(decided)}" if decided else "")
        + f". Table 3's verdict is unchanged in {len(verdict) - len(judged)} of "
        f"{len(verdict)} rows" + (f"; it changes in {'; '.join(judged)}." if judged else "."))


def dynamics_gap(records: list[dict]) -> list[Block]:
    """A.6.2 per task and attack: MLP-Attn's minus 2L-ReLU's flip rate at each recorded epoch
    (points, paired by seed, 95 % t interval), and at how many epochs it is decided above or
    below 0; with a sentence counting, per task, the epochs decided above 0."""
    curves = {(r["cell"]["task"], r["cell"]["model"], r["cell"]["attack"]):
              r["result"]["by_epoch"]["flip_rate"] for r in records}
    epochs = records[0]["result"]["epochs"]
    rows, counts, tasks = [], {}, list(dict.fromkeys(task for task, _, _ in curves))
    for task in tasks:
        for attack in ("fgsm", "pgd"):
            attn, relu = curves.get((task, "attn", attack)), curves.get((task, "relu", attack))
            if attn is None or relu is None:
                continue
            gaps = [combine(lambda a, b: 100 * (a - b), x, y)
                    for x, y in zip(attn, relu, strict=True)]
            sides = [decide(g, (0.0, math.inf)) for g in gaps]
            counts.setdefault(task, []).extend(sides)
            rows.append([task, attack.upper(), *(fmt(g) for g in gaps),
                         f"{sides.count(True)} above, {sides.count(False)} below, "
                         f"{sides.count(None)} undecided"])
    ranked = sorted(counts.items(), key=lambda item: -item[1].count(True))
    text = Text("Recorded epochs (FGSM and PGD together) at which MLP-Attn's flip rate is "
                "measurably above 2L-ReLU's (the paired 95 % interval above 0), per task: "
                + "; ".join(f"{task} {sides.count(True)} of {len(sides)}"
                            for task, sides in ranked)
                + f". Measurably below at {sum(s.count(False) for s in counts.values())} "
                "epochs in all.")
    return [text, Table(["task", "attack", *(f"epoch {e}" for e in epochs),
                         "epochs (of " + str(len(epochs)) + ")"], rows,
                        "Flip rate % of MLP-Attn minus 2L-ReLU at each recorded epoch of their "
                        "training (points, paired by seed, 95 % t interval), flip_dynamics' "
                        "cells of docs/runs/paper.")]


def span(values: list[float], digits: int = 0) -> str:
    """The range of ``values`` as "lo–hi" (one number where they round alike)."""
    lo, hi = f"{min(values):.{digits}f}", f"{max(values):.{digits}f}"
    return lo if lo == hi else f"{lo}–{hi}"


def claim_lines(claims: list[Claim], kind: str, part: str, label: str = "") -> str:
    """The measured value and verdict of each claim keyed (kind, task, part), by task."""
    return "; ".join(f"{c.key[1]}{label}: {c.measured} ({c.verdict})" for c in claims
                     if c.key[:1] == (kind,) and c.key[2:3] == (part,))


def verdicts_by_task(claims: list[Claim], kind: str) -> str:
    """Per verdict, the (task, attack) rows of Table 2's claims that have it."""
    by: dict[str, dict[str, list[str]]] = {}
    for c in claims:
        if c.key[:1] == (kind,):
            by.setdefault(c.verdict, {}).setdefault(c.key[1], []).append(c.key[2].upper())
    return "; ".join(f"{verdict}: " + ", ".join(f"{task} ({' '.join(attacks)})"
                                                 for task, attacks in tasks.items())
                     for verdict, tasks in by.items())


def table2_facts(flips: list[dict], claims: list[Claim]) -> list[Text]:
    """The measured numbers the Table 2 discussion quotes, from the merged cells (means over
    seeds; their intervals are in the tables above)."""
    rate = {tuple(r["cell"][k] for k in ("task", "model", "attack")): r["result"] for r in flips}
    pct_of = {key: 100 * float(res["flip_rate"]) for key, res in rate.items()}
    tasks = sorted({t for t, _, _ in rate})
    pairs = [(t, a) for t in tasks for a in ("fgsm", "pgd", "mim")
             if (t, "relu", a) in rate and (t, "attn", a) in rate]
    binary = "cifar10 automobile,airplane"
    ratio = {(t, a): pct_of[(t, "attn", a)] / pct_of[(t, "relu", a)] for t, a in pairs}
    paper_ratio = [attn / relu for (task, model), row in PAPER_TABLE2.items() if model == "relu"
                   and task != "CIFAR-10 binary"
                   for relu, attn in zip(row, PAPER_TABLE2[(task, "attn")], strict=True)]
    accuracy = {(t, m): 100 * float(rate[(t, m, "pgd")]["test_accuracy"])
                for t in tasks for m in ("relu", "attn") if (t, m, "pgd") in rate}
    spread = [100 * statistics.stdev(res["flip_rate"].values) for res in rate.values()
              if len(getattr(res["flip_rate"], "values", ())) > 1]
    gap_binary = [pct_of[(t, "attn", a)] - pct_of[(t, "relu", a)] for t, a in pairs
                  if t == binary]
    mnist = [pct_of[(t, "attn", a)] for t, a in pairs if t in ("mnist", "mnist 3,8")]
    paper_mnist = [v for (task, model), row in PAPER_TABLE2.items()
                   if model == "attn" and task.startswith("MNIST") for v in row]
    return [Text(line) for line in [
        "- MLP-Attn higher than 2L-ReLU (paired t interval), per verdict: "
        + verdicts_by_task(claims, "table2") + ".",
        f"- 2L-ReLU's flip rates: {span([v for (_, m, _), v in pct_of.items() if m == 'relu'])} "
        "% over the tasks and attacks (the paper: "
        f"{span([v for (_, m), row in PAPER_TABLE2.items() if m == 'relu' for v in row], 1)} %).",
        f"- MLP-Attn / 2L-ReLU: {span(list(ratio.values()), 1)}× (the paper, but CIFAR-10 "
        f"binary: {span(paper_ratio, 1)}×); on CIFAR-10 binary "
        f"{span([ratio[(t, a)] for t, a in pairs if t == binary], 1)}×, "
        f"+{span(gap_binary)} points.",
        f"- MLP-Attn on MNIST and MNIST 3 vs 8: {span(mnist)} % (the paper: "
        f"{span(paper_mnist, 1)} %).",
        "- Test accuracy %: " + "; ".join(
            f"{t} {model_name(m)} {accuracy[(t, m)]:.1f}" for t in ("mnist", "cifar10")
            for m in ("relu", "attn") if (t, m) in accuracy) + ".",
        f"- Standard deviation of a row's flip rate over its seeds: {span(spread, 1)} points."]]


def table5_facts(changes: list[dict], flips: list[dict], claims: list[Claim]) -> list[Text]:
    """The measured numbers the Table 5 discussion quotes: the flip column's levels beside the
    paper's and Table 2's PGD column, and the claims' values with their verdicts."""
    transformed = {(r["cell"]["task"], r["cell"]["model"]): 100 * float(r["result"]["flip_rate"])
                   for r in changes if r["cell"]["intervention"] == "transformed"}
    pgd = {(r["cell"]["task"], r["cell"]["model"]): 100 * float(r["result"]["flip_rate"])
           for r in flips if r["cell"]["attack"] == "pgd"}
    levels = "; ".join(
        f"{task} {model_name(model)} {value:.1f} % (paper "
        f"{PAPER_TABLE5[(task, model, 'standard')][-1]} %; its Table 2 PGD "
        f"{pgd[(task, model)]:.1f} %)" for (task, model), value in sorted(transformed.items())
        if (task, model, "standard") in PAPER_TABLE5 and (task, model) in pgd)
    return [Text(line) for line in [
        f"- Flip rate after retraining on Transformed: {levels}.",
        "- MLP-Attn − 2L-ReLU flip rate, paired: "
        + claim_lines(claims, "table5", "transformed: MLP-Attn − 2L-ReLU") + ".",
        "- Spearman ρ, 2L-ReLU − MLP-Attn: " + "; ".join(
            claim_lines(claims, "table5", f"{i}: Spearman ρ, 2L-ReLU − MLP-Attn", f" {i}")
            for i in ("curated", "transformed")) + ".",
        "- MLP-Attn − 2L-ReLU accuracy at epoch 100, points: " + "; ".join(
            claim_lines(claims, "table5", f"{i}: MLP-Attn − 2L-ReLU @ 100", f" {i}")
            for i in ("curated", "transformed")) + ".",
        "- Transformed − Curated accuracy at epoch 100, points: " + "; ".join(
            claim_lines(claims, "table5", f"{m}: T − C @ 100", f" {m}")
            for m in ("2L-ReLU", "MLP-Attn"))
        + "."]]


def table_only(blocks: list[Block]) -> str:
    """The markdown of a section's tables (its heading and prose stay in the doc)."""
    return to_markdown([b for b in blocks if isinstance(b, Table)])


def splice(doc: str, name: str, text: str) -> str:
    begin, end = f"<!-- begin {name} -->\n", f"<!-- end {name} -->"
    if begin not in doc or end not in doc:
        raise ValueError(f"docs/reproduction.md: no {begin.strip()} … {end} markers")
    return doc[:doc.index(begin) + len(begin)] + text + doc[doc.index(end):]


#: The experiments whose seeds 5–9 were added for their headline gaps (issue 32, item 7).
MORE_SEEDS = ("flip_rates", "interventions")


def seed_changes(run: Run, names: tuple[str, ...] = MORE_SEEDS, first: int = 5) -> list[Block]:
    """The claims of experiments ``names`` on their seeds below ``first`` beside the same claims
    on every committed seed: a sentence with the count, and the rows whose verdict differs."""
    def claims(keep: Callable[[int], bool]) -> dict[tuple[str, str], Claim]:
        cells = {name: [c for c in run.cells.get(name, []) if keep(c["cell"]["seed"])]
                 for name in names}
        return {(c.claim, c.where): c for c in run_claims(dataclasses.replace(run, cells=cells))}
    early, every = claims(lambda seed: seed < first), claims(lambda seed: True)
    rows = [[c.claim, c.where, early[k].measured, early[k].verdict, c.measured, c.verdict]
            for k, c in every.items() if k in early and early[k].verdict != c.verdict]
    text = Text(f"Of the {len(every)} claims rows of {' and '.join(f'`{n}`' for n in names)}, "
                f"{len(rows)} change verdict between seeds 0–{first - 1} and every committed "
                "seed:")
    return [text, Table(["claim", "where", f"seeds 0–{first - 1}", "verdict", "every seed",
                         "verdict"], rows,
                        f"The claims whose verdict changed when seeds {first} and up were added.")]


def complete(run: Run, name: str) -> bool:
    """Whether every cell the run's plan has for experiment ``name`` is committed."""
    planned = planned_cells(run, name)
    return planned is not None and len(run.cells.get(name, [])) >= planned


def cells_text(run: Run, name: str) -> Text:
    """How experiment ``name``'s committed cells ran, per task: their number, their seeds, and
    each cell's time as its ``timing`` records it (time saved before a cut included)."""
    cells = run.cells.get(name, [])
    parts = []
    for task in sorted({c["cell"]["task"] for c in cells}):
        mine = [c for c in cells if c["cell"]["task"] == task]
        seconds = [c["timing"]["seconds"] for c in mine]
        seeds = sorted({c["cell"]["seed"] for c in mine})
        parts.append(f"{task}: {len(mine)} cells (seeds {', '.join(map(str, seeds))}), "
                     f"{span(seconds)} s per cell, {sum(seconds) / 3600:.1f} h in all")
    return Text(f"How the cells of `{name}` ran, from their files (a cell's time includes "
                f"the networks it trained for the cells of its network and seed, which share "
                f"them through the cache; their devices: the status table): {'; '.join(parts)}.")


def progress_table(run: Run) -> Table:
    """Each experiment the run's settings plan: its cells committed, planned, and left, and
    how many of the committed ran on the CPU and on CUDA (the device each cell records)."""
    rows = []
    for name in sorted(n for n in run.settings if n in EXPERIMENTS):
        cells = run.cells.get(name, [])
        done, planned = len(cells), planned_cells(run, name)
        left = "?" if planned is None else ("complete" if complete(run, name) else
                                            f"{planned - done} left")
        on = [sum(str(c.get("device", "")).startswith(d) for c in cells) for d in ("cpu", "cuda")]
        rows.append([f"`{name}`", str(done), "?" if planned is None else str(planned), left,
                     *map(str, on)])
    return Table(["experiment", "cells committed", "cells planned", "status", "on CPU",
                  "on CUDA"], rows,
                 "Cells of docs/runs/paper per experiment, counted from the files, with the "
                 "device each cell file records.")


def main() -> None:
    paper, sensitivity = load_run(RUNS / "paper"), load_run(RUNS / "sensitivity")
    records = {name: section_records(EXPERIMENTS[name], paper.cells[name])
               for name in ("spectrum", "collapse")}
    (DOCS / "claims.md").write_text(table_only(claims_section(paper, sensitivity)),
                                    encoding="utf-8")
    (DOCS / "spectrum_kappa.md").write_text(
        to_markdown([spectrum_table(records["spectrum"])]), encoding="utf-8")
    (DOCS / "collapse.md").write_text(to_markdown([collapse_table(records["collapse"])]),
                                      encoding="utf-8")
    table2 = section_tables(paper, "flip_rates")
    table3 = [captioned(section_tables(run, "adversarial_training"), "Table 3:")
              for run in (paper, sensitivity)]
    strong = captioned(section_tables(paper, "robust_evaluation"), "Table 3 with")
    strong_records = section_records(EXPERIMENTS["robust_evaluation"],
                                     paper.cells["robust_evaluation"])
    strong_complete = complete(paper, "robust_evaluation")
    interventions = section_tables(paper, "interventions")
    gd_tables = section_tables(paper, "ntk_distance_gd")
    controls = changes_table(section_records(EXPERIMENTS["flip_controls"],
                                             experiment_cells(paper, "flip_controls")))
    flips = section_records(EXPERIMENTS["flip_rates"], paper.cells["flip_rates"])
    changes = section_records(EXPERIMENTS["interventions"], paper.cells["interventions"])
    claims = run_claims(paper)
    generated = {
        "progress.md": [progress_table(paper)],
        "verdict_changes_more_seeds.md": seed_changes(paper),
        "table1.md": [captioned(section_tables(paper, "ntk_distance"), "Table 1:")],
        "table1_gd.md": [captioned(gd_tables, "Distances"),
                         gd_training(captioned(gd_tables, "Training"))],
        "table2.md": [captioned(table2, "Table 2:"), captioned(table2, "Flip rate of MLP-Attn")],
        "table2_facts.md": table2_facts(flips, claims),
        "table2_controls.md": [controls_text(controls), controls],
        "sensitivity_gap.md": [sensitivity_gap(captioned(
            section_tables(sensitivity, "sensitivity"), "Flip rates and the"))],
        "width_sensitivity.md": [captioned(section_tables(sensitivity, "width_sensitivity"),
                                           "Per claim:")],
        "table3.md": [columns(table, [h for h in table.header if not h.startswith(
            ("PGD test acc.", "paper"))], f"{table.caption} Run {run}: the "
            "columns discussed here (PGD accuracies: the report).")
            for run, table in zip(("paper", "sensitivity"), table3, strict=True)],
        "table3_strong.md": [
            strong_text(strong, table3[0], strong_records, strong_complete),
            columns(strong, [h for h in strong.header if not h.startswith(
                ("PGD-40 acc.", "margin PGD-100", "Square acc."))],
                f"{strong.caption} Run paper, "
                f"{'all its planned cells' if strong_complete else 'the cells committed so far'}"
                ": the worst case, "
                "Square's own breaks and the decision (each attack's accuracy: the report).")],
        "flip_dynamics.md": [*dynamics_gap(section_records(
            EXPERIMENTS["flip_dynamics"], paper.cells["flip_dynamics"])),
            captioned(section_tables(paper, "flip_dynamics"), "A.6.2's claims")],
        "intervention_dynamics.md": [captioned(section_tables(paper, "intervention_dynamics"),
                                               "A.6.1's claims")],
        "table5.md": [captioned(interventions, "Table 5 (ours)"),
                      captioned(interventions, "The paper's claims on Table 5")],
        "table5_facts.md": table5_facts(changes, flips, claims),
        "table5_adversarial.md": [cells_text(paper, "adversarial_interventions"),
                                  *section_tables(paper, "adversarial_interventions")],
        "complexity.md": section_tables(paper, "complexity"),
        "softmax_temperature.md": section_tables(paper, "softmax_temperature"),
        "new_measurements.md": [
            captioned(tables, prefix) for name, prefixes in (
                ("kappa_mechanism", ("κ and its two factors", "Inter-class spread",
                                     "Every other class pair")),
                ("qkv_projections", ("Distances to the Θ_∞", "Conditioning at the He draw")),
                ("ntk_distance_variants", ("Kernel and function",)))
            for tables in [section_tables(paper, name)] for prefix in prefixes],
        "numerics.md": [a9_table(flips, "attack", "Table 2's solves. " + A9_CAPTION),
                        a9_table(changes, "intervention", "Table 5's solves. " + A9_CAPTION),
                        top_k_table(flips, "attack", "Top-K stability (A.5.2) under each attack "
                                    "of Table 2, beside the flip rate and Spearman ρ."),
                        top_k_table(changes, "intervention", "Top-K stability (A.5.2) of the "
                                    "retrained network's scores against the baseline's, per "
                                    "intervention of Table 5.")],
    }
    for name, blocks in generated.items():
        (DOCS / name).write_text(to_markdown(blocks), encoding="utf-8")
    doc = (DOCS / "reproduction.md").read_text(encoding="utf-8")
    for name in SPLICED:
        doc = splice(doc, name, (DOCS / name).read_text(encoding="utf-8"))
    (DOCS / "reproduction.md").write_text(doc, encoding="utf-8")


if __name__ == "__main__":
    main()
