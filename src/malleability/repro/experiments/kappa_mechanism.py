"""A.2's κ mechanism, measured (issue 32): why is the binary subset's κ what it is?

A.2 says binary CIFAR-10 (automobile vs airplane) has a lower κ than the 10-class set because
the two classes "share coarse global structural features", which "reduces inter-class
spectral spread", and that the lower κ, cubed by attention, closes the malleability gap. Per
data set, subset size n and seed, on stratified subsets of the training split drawn as the
``spectrum`` experiment draws its tasks (same sizes, same seeds, so the same points), for the
10-class set, the paper's pair and, as a control, every other class pair:

- κ_eff = λ₁/λ_min of the input Gram G = ZZᵀ and its two factors, the top and bottom shares
  λ₁/tr G and λ_min/tr G (tr G = n: rows have unit norm), so
  log κ = log(top share) − log(bottom share) says which end of the spectrum moves;
- the spectrum's spread (participation ratio (Σλ)²/Σλ²), the homogeneity (mean pairwise
  cosine), the inter-class spread (between-class share of the scatter), κ_eff of the centred
  rows (the mean direction removed), and the class counts;
- for the 10-class set and the paper's pair, the linear attention map's κ_eff and cosine.

κ spans decades and is positive, so it is summarised over seeds on the log scale (tables and
figure alike): the geometric mean with the t interval of log₁₀ κ
(:class:`~malleability.intervals.GeometricEstimate`); its ratios are paired log₁₀ differences.
"""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

from ..._validation import check_seed
from ...attention import attention_features
from ...data import load_dataset
from ...intervals import geometric
from ...settings import Settings, setting
from ...spectral import (
    between_class_share,
    effective_condition_number,
    mean_pairwise_cosine,
    participation_ratio,
)
from .. import figures
from ..blocks import Block, Claim, Table, figure, fmt, group
from ..figures import Line
from ..problem import RunContext
from ..seeds import Estimate, combine, metric_bounds
from .base import check_nonempty, decide

#: Fields summarised over seeds on the log scale (:data:`~..seeds.LOG_SCALE`); the median
#: control pair's κ_eff, computed seed by seed, is made so by :func:`_kappas`.
GEOMETRIC = ("kappa_effective", "attention_kappa_effective")

TITLE = "Why the binary subset's κ differs: A.2's mechanism measured"
INTRO = ("A.2 explains the vanishing CIFAR-10 binary gap by a lower κ of the automobile-vs-"
         "airplane inputs: the two classes share coarse structure, which \"reduces "
         "inter-class spectral spread\" and lowers κ. Per subset size n (stratified, the points "
         "of the spectrum experiment's tasks), the 10-class set against the paper's pair and "
         "against every other class pair: κ_eff and its two factors (top share λ₁/tr G and "
         "bottom share λ_min/tr G; log κ = log top − log bottom), the spread of the spectrum "
         "(participation ratio), homogeneity (mean pairwise cosine), inter-class spread "
         "(between-class share of the scatter), κ of the centred rows, class counts, and the "
         "linear attention map's κ and cosine. Differences are paired by seed (same seed, same "
         "n).")

#: A.2: the data sets whose paper pair has a lower κ than the 10-class set, per the paper.
PAPER_LOWER = {"cifar10": "automobile,airplane"}
#: The n the paper's κ values imply (SPEC §1: κ ≈ 1.2·10³ / 8.7·10³ at n ≈ 100–200).
PAPER_NS = (100, 200)
TEN = "all classes"


def _check_ns(value: tuple[int, ...], name: str) -> tuple[int, ...]:
    for i, n in enumerate(check_nonempty(value, name)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 4:
            raise ValueError(f"{name}[{i}]: expected an integer ≥ 4, got {n!r}")
    return value


@dataclass(frozen=True)
class KappaMechanismSettings(Settings):
    datasets: tuple[str, ...] = setting(("cifar10",), "Data sets (training split).",
                                        check_nonempty)
    pairs: tuple[str, ...] = setting(("automobile,airplane",), "The paper's binary class pair "
                                     "of each data set (same order).", check_nonempty)
    ns: tuple[int, ...] = setting((100, 200, 500, 1000, 2000), "Subset sizes n (the spectrum "
                                  "experiment's).", _check_ns)
    controls: bool = setting(True, "Also every other class pair of each data set.")
    seed: int = setting(0, "Seed of the stratified subsets (the spectrum tasks' seed).",
                        check_seed)

    def check_relations(self) -> None:
        if len(self.pairs) != len(self.datasets):
            raise ValueError(f"pairs: expected one pair per data set ({len(self.datasets)}), "
                             f"got {len(self.pairs)}")
        for i, pair in enumerate(self.pairs):
            if len(pair.split(",")) != 2:
                raise ValueError(f"pairs[{i}]: expected two classes 'a,b', got {pair!r}")


SETTINGS = KappaMechanismSettings


def cells(s: KappaMechanismSettings) -> list[dict]:
    return [{"dataset": d, "n": n} for d in s.datasets for n in s.ns]


def gram_statistics(z: torch.Tensor, labels: torch.Tensor) -> dict[str, float | list[int]]:
    """The quantities A.2's mechanism names, for network inputs ``z`` (unit rows) of classes
    ``labels``."""
    z = z.double()
    spectrum = effective_condition_number(z)
    eig = spectrum.eigenvalues
    trace = float(eig.sum())
    return {"n": z.shape[0], "class_counts": torch.bincount(labels).tolist(),
            "kappa_effective": spectrum.kappa_effective, "rank": spectrum.rank,
            "top_share": float(eig[0]) / trace,
            "bottom_share": float(eig[spectrum.rank - 1]) / trace,
            "participation_ratio": participation_ratio(eig),
            "cosine": mean_pairwise_cosine(z),
            "between_share": between_class_share(z, labels),
            "kappa_centred": effective_condition_number(z - z.mean(0)).kappa_effective}


def attention_statistics(z: torch.Tensor) -> dict[str, float]:
    """κ_eff and mean pairwise cosine of rownorm(Z ZᵀZ), Z its own reference."""
    phi = attention_features(z.double(), z.double(), "linear")
    return {"attention_kappa_effective": effective_condition_number(phi).kappa_effective,
            "attention_cosine": mean_pairwise_cosine(phi)}


def run(s: KappaMechanismSettings, cell: dict, ctx: RunContext) -> dict:
    dataset, n = cell["dataset"], int(cell["n"])
    pair = s.pairs[s.datasets.index(dataset)]

    def subset(classes: str | None) -> dict:
        ds = load_dataset(dataset, "train", root=ctx.data_root, classes=classes, n=n,
                          seed=s.seed)
        index = {c: i for i, c in enumerate(ds.classes)}
        labels = torch.as_tensor([index[int(c)] for c in ds.labels])
        return {"z": ds.inputs(), "labels": labels, "names": ds.class_names}

    ten, binary = subset(None), subset(pair)
    out = {TEN: {**gram_statistics(ten["z"], ten["labels"]), **attention_statistics(ten["z"])},
           "paper_pair": {**gram_statistics(binary["z"], binary["labels"]),
                          **attention_statistics(binary["z"])}}
    if s.controls:
        pairs = {}
        for a, b in itertools.combinations(ten["names"], 2):
            if {a, b} == set(binary["names"]):
                continue
            chosen = subset(f"{a},{b}")
            pairs[f"{a},{b}"] = gram_statistics(chosen["z"], chosen["labels"])
        out["control_pairs"] = pairs
    return out


def _log_ratio(a: float, b: float) -> float:
    """log₁₀(a/b), paired by seed."""
    return combine(lambda u, v: math.log10(u / v), a, b)


def _share_above(pairs: dict[str, dict], ten: float) -> float:
    """The share of control pairs whose κ_eff exceeds the 10-class κ_eff, seed by seed (in
    [0, 1])."""
    kappas = [p["kappa_effective"] for p in pairs.values()]
    return combine(lambda t, *ks: sum(k > t for k in ks) / len(ks), ten, *kappas,
                   bounds=(0.0, 1.0))


def _median(pairs: dict[str, dict], key: str) -> float:
    """The median of ``key`` over the control pairs, seed by seed, in the field's range
    (:func:`~..seeds.metric_bounds`)."""
    values = [p[key] for p in pairs.values()]
    return combine(lambda *vs: statistics.median(vs), *values, bounds=metric_bounds(key))


def _kappas(result: dict) -> dict[str, float]:
    """κ_eff of the 10-class set, of the paper pair, of their attention maps and of the median
    control pair (where the cell has control pairs), each as its geometric mean over seeds
    (:func:`~malleability.intervals.geometric`)."""
    ten, two, pairs = result[TEN], result["paper_pair"], result.get("control_pairs")
    out = {"10-class": ten["kappa_effective"], "paper pair": two["kappa_effective"],
           "attention 10-class": ten["attention_kappa_effective"],
           "attention paper pair": two["attention_kappa_effective"]}
    if pairs:
        out["control pairs (median)"] = _median(pairs, "kappa_effective")
    return {k: geometric(v) for k, v in out.items()}


def section(records: list[dict], figs: Path) -> list[Block]:
    """The mechanism's quantities, binary against 10-class; the control pairs; κ vs n."""
    factors, homogeneity, attention, controls, panels = [], [], [], [], {}
    for (dataset,), rs in group(records, "dataset").items():
        rs = sorted(rs, key=lambda r: r["cell"]["n"])
        ns = [r["cell"]["n"] for r in rs]
        lines: dict[str, list[float]] = {"10-class": [], "paper pair": [],
                                         "control pairs (median)": []}
        for r in rs:
            ten, two, n = r["result"][TEN], r["result"]["paper_pair"], r["cell"]["n"]
            kappa = _kappas(r["result"])
            where = f"{dataset}, n={n}"
            factors.append([where, fmt(kappa["10-class"]), fmt(kappa["paper pair"]),
                            fmt(_log_ratio(two["kappa_effective"], ten["kappa_effective"])),
                            fmt(_log_ratio(two["top_share"], ten["top_share"])),
                            fmt(_log_ratio(ten["bottom_share"], two["bottom_share"])),
                            fmt(_log_ratio(two["kappa_centred"], ten["kappa_centred"]))])
            homogeneity.append([where, f"{ten['class_counts']} / {two['class_counts']}",
                                fmt(ten["between_share"]), fmt(two["between_share"]),
                                fmt(ten["cosine"]), fmt(two["cosine"]),
                                fmt(ten["participation_ratio"]),
                                fmt(two["participation_ratio"])])
            attention.append([where, fmt(kappa["attention 10-class"]),
                              fmt(kappa["attention paper pair"]),
                              fmt(ten["attention_cosine"], 5), fmt(two["attention_cosine"], 5)])
            for label in lines:
                if label in kappa:
                    lines[label].append(kappa[label])
            pairs = r["result"].get("control_pairs")
            if pairs:
                controls.append([where, str(len(pairs)), fmt(kappa["control pairs (median)"]),
                                 fmt(_share_above(pairs, ten["kappa_effective"])),
                                 fmt(_median(pairs, "between_share")),
                                 fmt(_median(pairs, "cosine"))])
        panels[dataset] = [Line(label, ns, values) for label, values in lines.items()
                           if len(values) == len(ns)]
    path = figures.line_panels(figs / "kappa_mechanism.png", panels, "n (training points)",
                               "κ_eff of the input Gram", logx=True, logy=True)
    blocks = [
        Table(["data set, n", "κ_eff 10-class", "κ_eff paper pair",
               "log₁₀ κ ratio (pair / 10-class)", "from the top: log₁₀ top-share ratio",
               "from the bottom: log₁₀ bottom-share ratio (10-class / pair)",
               "log₁₀ κ ratio, centred rows"], factors,
              "κ and its two factors, paired by seed: the log ratio of κ is the sum of the two "
              "factor columns; centred: the mean direction removed. κ_eff: geometric mean "
              "over seeds with the 95 % t interval of log₁₀ κ."),
        Table(["data set, n", "class counts (10-class / pair)", "between-class share 10-class",
               "between-class share pair", "cosine 10-class", "cosine pair",
               "participation ratio 10-class", "participation ratio pair"], homogeneity,
              "Inter-class spread (between-class share of the scatter), homogeneity (mean "
              "pairwise cosine) and spectral spread ((Σλ)²/Σλ²)."),
        Table(["data set, n", "attention κ_eff 10-class", "attention κ_eff pair",
               "attention cosine 10-class", "attention cosine pair"], attention,
              "The linear attention map rownorm(Z ZᵀZ) on each subset (κ_eff as in the first "
              "table)."),
    ]
    if controls:
        blocks.append(Table(["data set, n", "control pairs", "median κ_eff",
                             "share of pairs with κ above the 10-class κ",
                             "median between-class share", "median cosine"], controls,
                            "Every other class pair at the same n and seed: is the paper pair's "
                            "κ a property of that pair or of any 2-class subset?"))
    blocks.append(figure(path, "κ_eff of the input Gram vs n: 10-class set, the paper's pair "
                               "and the median control pair (geometric means over seeds; "
                               "bars: 95 % t interval of log₁₀ κ)."))
    return blocks


def _decided(ratios: list[Estimate | float]) -> str:
    """The verdict of "pair below the 10-class set" over the paper's n: agrees when every
    interval lies below 0, disagrees when every one lies above, else inconclusive."""
    decided = [decide(r, (-math.inf, 0.0)) for r in ratios]
    if decided and all(d is True for d in decided):
        return "agrees"
    if decided and all(d is False for d in decided):
        return "disagrees"
    return "inconclusive"


def paper_claims(records: list[dict]) -> list[Claim]:
    """A.2 per data set of :data:`PAPER_LOWER` whose paper pair the cells measure: the pair's
    κ is below the 10-class κ, and so is its inter-class spread, decided over PAPER_NS by the
    paired log ratios."""
    claims = []
    for (dataset,), rs in group(records, "dataset").items():
        if dataset not in PAPER_LOWER:
            continue
        rs = [r for r in sorted(rs, key=lambda r: r["cell"]["n"]) if r["cell"]["n"] in PAPER_NS]
        if not rs:
            continue
        for key, claim, paper in (
                ("kappa_effective", "The binary subset's input κ is lower than the 10-class κ "
                 "(A.2)", "lower (the cause of the vanishing binary gap)"),
                ("between_share", "The binary subset has less inter-class spread than the "
                 "10-class set (A.2's mechanism)", "less: the classes share coarse structure")):
            ratios = [_log_ratio(r["result"]["paper_pair"][key], r["result"][TEN][key])
                      for r in rs]
            claims.append(Claim(
                claim, f"{dataset} {PAPER_LOWER[dataset]} vs 10-class", paper,
                "log₁₀(pair / 10-class) " + "; ".join(
                    f"n={r['cell']['n']}: {fmt(x)}" for r, x in zip(rs, ratios, strict=True)),
                _decided(ratios), ("kappa_mechanism", dataset, key)))
    return claims
