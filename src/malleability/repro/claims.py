"""The claims table that opens the report: one row per claim of the paper, in the sense of the
paper's words, with the paper's value, ours with its 95 % interval, the verdict, and how the
verdict fares under the unstated settings swept by the ``sensitivity`` preset.

Every experiment module may end with ``paper_claims(records) -> list[Claim]``
(:class:`~.blocks.Claim`; the records merged as its section gets them). The sensitivity
modules (:data:`SWEEPS`) return claims keyed like the ones they sweep; their verdict ("holds
everywhere", ...) fills the sensitivity column. The sweeps come from the run itself or, when it
has none, from a run folder named ``sensitivity`` beside it (the layout of docs/runs/).
"""

from __future__ import annotations

from pathlib import Path

from .blocks import Block, Claim, Heading, Table, Text
from .experiments import EXPERIMENTS
from .loading import Run, load_run
from .seeds import merge_seeds
from .store import log

#: Modules whose claims sweep other modules' claims (matched by ``Claim.key``).
SWEEPS = ("sensitivity", "width_sensitivity")
#: The claims table's columns.
HEADER = ["claim (paper)", "where", "paper", "measured (95 % CI over seeds)", "verdict",
          "sensitivity"]


def section_records(module: object, records: list[dict]) -> list[dict]:
    """A module's cell records as its section reads them: seeds merged (the fields its
    ``GEOMETRIC`` names on the log scale) unless its ``PER_SEED`` is "first" (the first seed's
    cells) or "all" (unmerged)."""
    per_seed = getattr(module, "PER_SEED", None)
    if per_seed is None:
        return merge_seeds(records, getattr(module, "GEOMETRIC", ()))
    if per_seed == "first":
        first = min(r["cell"].get("seed", 0) for r in records)
        return [r for r in records if r["cell"].get("seed", 0) == first]
    return records


def experiment_cells(run: Run, name: str) -> list[dict]:
    """The cells experiment ``name``'s section and claims read: its own, then those of the
    experiments its module names in ``READS`` (e.g. flip_controls reads flip_rates)."""
    module = EXPERIMENTS[name]
    return [*run.cells.get(name, []),
            *(r for other in getattr(module, "READS", ()) for r in run.cells.get(other, []))]


def run_claims(run: Run) -> list[Claim]:
    """Every claim the run's experiments measure, in the registry's order; an experiment whose
    cells lack what its claims read (another version's layout) gives none, with a warning."""
    claims: list[Claim] = []
    for name, module in EXPERIMENTS.items():
        if not run.cells.get(name) or not hasattr(module, "paper_claims"):
            continue
        try:
            claims += module.paper_claims(section_records(module,
                                                          experiment_cells(run, name)))
        except (KeyError, IndexError, TypeError, ValueError) as err:
            log.warning("%s/: no claims from its cells (%s: %s)", name, type(err).__name__, err)
    return claims


def sweep_run(run: Run) -> Run | None:
    """The run holding the sensitivity sweeps: this one, or a ``sensitivity`` folder beside
    it; None when neither has them."""
    if any(run.cells.get(name) for name in SWEEPS):
        return run
    sibling = Path(run.out).parent / "sensitivity"
    if sibling.resolve() == Path(run.out).resolve() or not (sibling / "settings.json").exists():
        return None
    return load_run(sibling)


def claims_table(run: Run, sweeps: Run | None = None) -> list[list[str]]:
    """The claims of ``run`` (sweeps excluded) with their sensitivity from the run ``sweeps``
    (default :func:`sweep_run`): rows of HEADER."""
    claims = [c for c in run_claims(run) if not c.key or c.key[0] not in SWEEPS]
    sweeps = sweep_run(run) if sweeps is None else sweeps
    swept = {c.key[1:]: c.measured
             for c in (run_claims(sweeps) if sweeps is not None else [])
             if c.key and c.key[0] in SWEEPS}
    return [[c.claim, c.where, c.paper, c.measured, c.verdict, swept.get(c.key, "—")]
            for c in claims]


def tally(rows: list[list[str]]) -> str:
    """The claims table in one sentence: how many rows come out with each verdict."""
    verdict = HEADER.index("verdict")
    counts: dict[str, int] = {}
    for row in rows:
        counts[row[verdict]] = counts.get(row[verdict], 0) + 1
    words = {"agrees": "agree", "disagrees": "disagree", "inconclusive": "inconclusive"}
    said = sorted(counts, key=lambda v: (list(words).index(v) if v in words else len(words), v))
    return (f"Verdicts of the {len(rows)} claim rows: "
            + "; ".join(f"{counts[v]} {words.get(v, v)}" for v in said)
            + ". Each row is decided on its own; the table gives the numbers.")


def claims_section(run: Run, sweeps: Run | None = None) -> list[Block]:
    """The report's first section: the claims table (``sweeps``: see :func:`claims_table`)."""
    rows = claims_table(run, sweeps)
    if not rows:
        return [Heading("Claims"), Text("No experiment of this run measures a claim yet.")]
    return [Heading("Claims"), Text(tally(rows)),
            Text("Each claim of the paper that this run measures, as the paper states it, with "
                 "the paper's value, ours with its 95 % interval over seeds, and the verdict: "
                 "agrees / disagrees only where the interval decides it, else inconclusive; "
                 "too few seeds where fewer than 3 seeds leave the interval unfit to decide, "
                 "no spread over seeds where every seed gave the same value (a zero-width "
                 "interval). Sensitivity: how "
                 "many points of the sensitivity sweep (one unstated setting moved at a "
                 "time) give the same verdict; — where the claim was not swept."),
            Table(HEADER, rows, "The paper's claims against this run.")]


def with_claims(run: Run, blocks: list[Block]) -> list[Block]:
    """The report ``blocks`` with the claims section and a table of contents of the sections
    inserted before the first section (the first level-2 heading)."""
    first = next((i for i, b in enumerate(blocks) if isinstance(b, Heading) and b.level == 2),
                 len(blocks))
    contents = [[b.text] for b in blocks[first:] if isinstance(b, Heading) and b.level == 2]
    return [*blocks[:first], *claims_section(run), Heading("Contents"),
            Table(["section"], contents, "The sections below."), *blocks[first:]]
