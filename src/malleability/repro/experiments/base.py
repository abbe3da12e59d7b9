"""What the experiments share: the settings of experiments on trained networks, cells per
task × architecture, and the paper's names for tasks and architectures.

An experiment is a module with ``SETTINGS`` (a settings dataclass), ``TITLE`` and ``INTRO``
(its report heading and prose), ``cells(settings)`` (the independent units of work),
``run(settings, cell, ctx)`` → a JSON-ready dict, ``section(records, figures)`` → report blocks,
and the paper's numbers it is compared with. The report merges each cell's seeds into one
record (numbers → :class:`~..seeds.Estimate`) unless the module sets ``PER_SEED`` to "first"
(an illustration: the first seed's cells) or "all" (every seed's cells unmerged).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

from ...attacks import AttackSettings
from ...data import DataSettings
from ...estimators import NTKLOO
from ...influence import InfluenceSettings
from ...intervals import deciding_interval, geometric, undecided
from ...measure import Measurement, Refit, measure, same_weights
from ...models import ARCHITECTURE_NAMES, ModelSettings, TwoLayerNet, check_architecture
from ...settings import Settings, setting
from ...training import TrainSettings
from ..blocks import Block, Table
from ..problem import Problem, RunContext, load_problem
from ..seeds import Estimate, combine


class Experiment(Protocol):
    """The contract every module in ``EXPERIMENTS`` meets (checked by the tests)."""

    SETTINGS: type
    TITLE: str
    INTRO: str

    def cells(self, settings: Any) -> list[dict]: ...
    def run(self, settings: Any, cell: dict, ctx: RunContext) -> dict: ...
    def section(self, records: list[dict], figures: Any) -> list[Block]: ...


def check_architectures(value: tuple[str, ...], name: str) -> tuple[str, ...]:
    """A non-empty list of architecture names."""
    for i, arch in enumerate(value):
        check_architecture(arch, f"{name}[{i}]")
    return check_nonempty(value, name)


def check_nonempty(value: tuple, name: str) -> tuple:
    if not value:
        raise ValueError(f"{name}: expected at least one entry, got []")
    return value


def check_task_labels(labels: tuple[str, ...] | None, tasks: tuple[DataSettings, ...],
                      name: str) -> None:
    """Each of ``labels`` (None: all tasks) names one of ``tasks``."""
    known = [t.label for t in tasks]
    for i, label in enumerate(labels or ()):
        if label not in known:
            raise ValueError(f"{name}[{i}]: expected one of the tasks {', '.join(known)}, "
                             f"got {label!r}")


def check_tasks(value: tuple[DataSettings, ...], name: str) -> tuple[DataSettings, ...]:
    """A non-empty list of tasks with distinct labels (a cell names its task by label)."""
    labels = [t.label for t in check_nonempty(value, name)]
    for i, label in enumerate(labels):
        if label in labels[:i]:
            raise ValueError(f"{name}[{i}]: task {label!r} given twice")
    return value


@dataclass(frozen=True)
class TaskSettings(Settings):
    """Experiments on data tasks only."""

    tasks: tuple[DataSettings, ...] = setting((DataSettings(),), "Data tasks.", check_tasks)


@dataclass(frozen=True)
class NetworkSettings(TaskSettings):
    """Experiments on trained networks: tasks × architectures, the network, training and
    influence settings."""

    models: tuple[str, ...] = setting(("relu", "attn"), "Architectures: relu (2L-ReLU), attn "
                                      "(MLP-Attn), attn-softmax, attn-exponential.",
                                      check_architectures, flag="--model")
    model: ModelSettings = setting(ModelSettings(), "Network construction.")
    train: TrainSettings = setting(TrainSettings(), "Training.")
    influence: InfluenceSettings = setting(InfluenceSettings(), "NTK influence.")

    def estimator(self) -> NTKLOO:
        """The reproduction's estimator: NTK-LOO at the influence settings' ridge."""
        return NTKLOO(ridge=self.influence.ridge)


@dataclass(frozen=True)
class AttackExperimentSettings(NetworkSettings):
    """Experiments that perturb training points with an ℓ∞ attack."""

    attack: AttackSettings = setting(AttackSettings(), "The ℓ∞ attack.")

    def attack_as(self, name: str, **changes: Any) -> AttackSettings:
        """These attack settings for attack ``name`` (with ``changes``)."""
        return self.attack.replace(attack=name, **changes)

    def measure(self, net: TwoLayerNet, p: Problem, attack: AttackSettings,
                refit: Refit = same_weights) -> Measurement:
        """Definition 3.4 on ``p``'s influence rows: NTK-LOO, ``attack``, the top
        ``influence.fraction``, the weights of ``net`` (or ``refit``)."""
        return measure(net, p.x, p.y, p.x_test, p.y_test, self.estimator(), attack.method(),
                       fraction=self.influence.fraction, rows=p.influence_rows, refit=refit)


def task_model_cells(s: NetworkSettings) -> list[dict]:
    """One cell per task × architecture."""
    return [{"task": t.label, "model": m} for t in s.tasks for m in s.models]


def cell_problem(tasks: tuple[DataSettings, ...], cell: dict, ctx: RunContext) -> Problem:
    """The loaded problem of the cell's task label."""
    for task in tasks:
        if task.label == cell["task"]:
            return load_problem(task, ctx.data_root, ctx.device)
    raise ValueError(f"task: {cell['task']!r} is not among the settings' tasks")


# --- the paper's names ----------------------------------------------------------------------

PAPER_DATASETS = {"mnist": "MNIST", "cifar10": "CIFAR-10"}


def task_parts(label: str) -> tuple[str, tuple[str, ...] | None]:
    """``"mnist 3,8"`` → ``("mnist", ("3", "8"))``; ``"mnist"`` → ``("mnist", None)``."""
    dataset, _, classes = label.partition(" ")
    return dataset, tuple(classes.split(",")) if classes else None


def paper_task(label: str) -> str | None:
    """The paper's task key (e.g. ``"MNIST binary"``) of a task label, or None."""
    dataset, classes = task_parts(label)
    if dataset not in PAPER_DATASETS or (classes is not None and len(classes) != 2):
        return None
    return f"{PAPER_DATASETS[dataset]} {'10-class' if classes is None else 'binary'}"


def task_title(label: str) -> str:
    """A panel title: the task label and, where the paper has the task, its name."""
    paper = paper_task(label)
    return label if paper is None else f"{label} ({paper})"


def seed_count(counts: set[int]) -> str:
    """How many seeds merged records hold: "10", or "5–10" where they differ."""
    return "–".join(str(n) for n in sorted({min(counts), max(counts)}))


def seeds_phrase(counts: set[int]) -> str:
    """:func:`seed_count` with its noun: "1 seed", "1–2 seeds", "10 seeds"."""
    return f"{seed_count(counts)} seed{'' if counts == {1} else 's'}"


def model_name(model: str) -> str:
    """The paper's name of an architecture (``attn`` → MLP-Attn)."""
    return ARCHITECTURE_NAMES.get(model, model)


def paper_number(value: float) -> str:
    """A number of the paper's tables as printed there (one decimal)."""
    return f"{value:.1f}"


def paper_values(values: tuple[float, ...] | None, sep: str = " / ") -> str:
    """The paper's numbers joined by ``sep``, "—" when it has none."""
    return "—" if values is None else sep.join(map(paper_number, values))


def paper_table(number: int, columns: list[str], values: dict[tuple[str, str], tuple]) -> Table:
    """The paper's Table ``number`` as it reports it, for reference beside ours."""
    rows = [[task, model_name(model), *map(paper_number, numbers)]
            for (task, model), numbers in values.items()]
    return Table(["task", "model", *columns], rows, f"The paper's Table {number} (reported).")


def decide(ours: float | None, band: tuple[float, float]) -> bool | None:
    """Whether the measured value lies in ``band`` = (low, high), decided by its 95 % CI over
    seeds: True when the interval lies inside the band, False when it lies wholly outside,
    None when it straddles an edge, may not decide (:func:`~malleability.intervals.
    deciding_interval`: fewer than 3 seeds, the same value in every seed, or a number not
    measured per seed) or is missing."""
    interval = deciding_interval(ours)
    if interval is None:
        return None
    low, high = interval
    if band[0] < low and high < band[1]:
        return True
    if high <= band[0] or low >= band[1]:
        return False
    return None


def agreement(ours: bool | None, paper: bool) -> str:
    """A decided flag against the paper's: agrees / disagrees; inconclusive when undecided."""
    return "inconclusive" if ours is None else ("agrees" if ours == paper else "disagrees")


def verdict(ours: float | None, band: tuple[float, float], paper_inside: bool = True) -> str:
    """The verdict of every section: the paper claims the quantity lies inside ``band``
    (``paper_inside``) or outside it; "agrees" / "disagrees" only when our 95 % CI decides
    (:func:`decide`), else "inconclusive". A directional claim "x > 0" is ``band=(0, inf)``;
    "near the paper's p" is ``band=(p - tol, p + tol)``. A measured value whose interval may
    not decide is "too few seeds" or "no spread over seeds" (:func:`~malleability.intervals.
    undecided`)."""
    reason = undecided(ours)
    if reason is not None:
        return reason
    return agreement(decide(ours, band), paper_inside)


def conjunction(verdicts: list[str]) -> str:
    """The verdict of a claim made of several parts that must all hold (e.g. on every task, or
    at both ends): disagrees where any part disagrees, else the parts' common verdict, else
    inconclusive."""
    if "disagrees" in verdicts:
        return "disagrees"
    return verdicts[0] if len(set(verdicts)) == 1 else "inconclusive"


def trend(values: list[float]) -> str:
    """Direction of a sequence decided step by step on the paired differences' 95 % CIs
    (plain numbers: strictly): decreasing, increasing, non-monotonic, or "undecided" when
    some step's interval straddles 0; "—" for fewer than two values."""
    if len(values) < 2 or any(v is None or math.isnan(v) for v in values):
        return "—"
    steps = []
    for a, b in zip(values, values[1:], strict=False):
        step = combine(lambda u, v: v - u, a, b)
        steps.append(decide(step, (0.0, math.inf)) if isinstance(step, Estimate)
                     else (step > 0 if step != 0 else None))
    if None in steps:
        means = trend([float(v) for v in values]) if isinstance(values[0], Estimate) else "—"
        return "undecided" if means in ("—", "undecided") else f"undecided (means {means})"
    if not any(steps):
        return "decreasing"
    return "increasing" if all(steps) else "non-monotonic"


def cubed(value: float) -> float:
    """κ³ seed by seed (∞ beyond float64), summarised on the log scale as κ is."""
    return geometric(combine(lambda k: k**3 if k < 1e100 else math.inf, value))
