"""``malleability audit --out DIR``: :func:`audit_folder` runs the audit as a run folder
(:mod:`~malleability.audit_run`) and writes its report: ``report.md``, ``report.html`` and
figures (PNG and SVG) from its cells, in the reproduction's report blocks and renderers
(:mod:`~malleability.repro.blocks`, :mod:`~malleability.repro.report`).

It opens with the answer: which estimators are malleable on this model and how sure (each
estimator's verdict, decided by the 95 % interval of the flip rate's excess over the controls,
:mod:`~malleability.controls`), then a table of contents and the details: every metric against
its controls, the scores of the top points before and after each perturbation, the κ spectrum
of the audited layer, the checkpoint agreement, and the settings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import io  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from .audit_report import METRIC_NAMES, controls_rows, fmt_estimate, fmt_number  # noqa: E402
from .audit_run import ENSEMBLE, MODEL, SPECTRUM, run_audit  # noqa: E402
from .auditing import (  # noqa: E402
    AuditProblem,
    AuditSettings,
    agreement_matrices,
    assemble,
    prepare,
)
from .controls import (  # noqa: E402
    MALLEABLE,
    METRICS,
    NOISE,
    NOT_MALLEABLE,
    SAME_IN_EVERY_SEED,
    UNDECIDED,
)
from .estimators import check_estimator  # noqa: E402
from .repro import figures  # noqa: E402
from .repro.blocks import Block, Heading, Image, Table, Text  # noqa: E402
from .repro.report import to_html, to_markdown  # noqa: E402
from .repro.store import atomic_write  # noqa: E402

Results = Mapping[tuple[str, str], Mapping[int, Mapping[str, Any]]]
CONTROL_NAMES = {"noise": "estimator noise", "random": "random ±ε", "adversarial": "adversarial"}


def _image(path: Path, out: Path, caption: str) -> Image:
    return Image(str(path.relative_to(out)), caption)


def answer_blocks(summaries: Mapping[str, Mapping[str, Any]], problem: AuditProblem
                  ) -> list[Block]:
    """The answer: estimators by verdict in one paragraph, then one row per estimator."""
    s = problem.settings
    groups: dict[str, list[str]] = {}
    for name, v in summaries.items():
        groups.setdefault(v["verdicts"]["flip_rate"], []).append(name)
    said = []
    for verdict, phrase in ((MALLEABLE, "Malleable on this model (the attack flips more of "
                             "the top points than both controls; 95 % interval of the excess "
                             "above 0)"),
                            (NOISE, "Not distinguishable from noise (the excess's interval "
                             "contains 0)"),
                            (NOT_MALLEABLE, f"Not malleable (the excess's interval lies below "
                             f"{s.margin:g})"),
                            (UNDECIDED, "Too few seeds (fewer than 3: the interval does not "
                             "decide)"),
                            (SAME_IN_EVERY_SEED, "No spread over seeds (every seed gave the "
                             "same excess, so its interval has zero width and does not decide; "
                             "the table shows that value)")):
        if groups.get(verdict):
            said.append(f"{phrase}: {', '.join(groups[verdict])}.")
    rows = []
    for name, v in summaries.items():
        fr = {k: v[k]["flip_rate"] for k in ("noise", "random", "adversarial")}
        rows.append([name, v["verdict"], fmt_estimate(v["excess"]["flip_rate"]),
                     fmt_estimate(fr["adversarial"]), fmt_estimate(fr["random"]),
                     fmt_estimate(fr["noise"], " (deterministic)"),
                     fmt_estimate(v["rank_stability"], " (deterministic)"),
                     " ".join(v["warnings"]) or "—"])
    said.append("A flip rate that the estimator's own noise or a random perturbation of the "
                "same size matches is not evidence of malleability: only the excess over both "
                "is.")
    settings = (f"{s.attack.upper()} at ε = {s.eps:g} on the top {s.fraction:.0%} of "
                f"{problem.record['n_train']} training points, seeds "
                f"{', '.join(map(str, s.seeds))}; controls: the estimator's scores under two "
                "seeds without perturbation, and random ±ε signs on the same points.")
    return [Heading("Answer"), Text(" ".join(said) + " " + settings),
            Table(["estimator", "verdict", "flip-rate excess", "adversarial", "random ±ε",
                   "estimator noise", "rank stability (ρ across seeds)", "warnings"], rows,
                  "Flip rate of the top points (mean [95 % interval] over seeds). Excess = "
                  "adversarial − max(controls), paired by seed; the verdict reads its "
                  "interval (docs/audit.md).")]


def controls_section(summaries: Mapping[str, Mapping[str, Any]], figs: Path, out: Path
                     ) -> list[Block]:
    """Every metric against its controls, per estimator, and one bar figure."""
    blocks: list[Block] = []
    panels: dict[str, dict[str, dict[str, float]]] = {}
    for name, v in summaries.items():
        blocks.append(Table(["metric", "estimator noise", "random ±ε", "adversarial",
                             "excess", "verdict"], controls_rows(v),
                            f"{name}: mean [95 % interval] over seeds."))
        for m in METRICS:
            panels.setdefault(METRIC_NAMES[m], {})[name] = {
                CONTROL_NAMES[k]: v[k][m] for k in ("noise", "random", "adversarial")}
    path = figures.bar_panels(figs / "audit_controls.png", panels, "value")
    return [*blocks, _image(path, out, "Each metric under the estimator's own noise, a random "
                                       "±ε perturbation and the attack (error bars: 95 % "
                                       "intervals over seeds).")]


def scores_section(results: Results, names: Sequence[str], seed: int, figs: Path, out: Path
                   ) -> list[Block]:
    """Scores of the top points before (x) and after (y) each perturbation, first seed."""
    panels = {}
    for name in names:
        r = results[(name, MODEL)][seed]
        before = [r["scores"][i] for i in r["selected"]]
        if not before:
            continue
        lo, hi = min(before), max(before)
        panels[name] = [
            figures.Line("adversarial", before, r["adversarial_scores"], {"ls": "none"}),
            figures.Line("random ±ε", before, r["random_scores"],
                         {"ls": "none", "marker": "x"}),
            figures.Line("unchanged (y = x)", [lo, hi], [lo, hi],
                         {"ls": "--", "marker": "", "color": "grey"}),
            figures.Line("0: below, the sign flipped", [lo, hi], [0.0, 0.0],
                         {"ls": ":", "marker": "", "color": "black"})]
    if not panels:
        return [Text("No top points were selected.")]
    path = figures.line_panels(figs / "audit_scores.png", panels, "score before", "score after")
    return [_image(path, out, f"Influence scores of the top points before and after the attack "
                              f"and the random control (seed {seed}); points below 0 after "
                              "have flipped.")]


def spectrum_section(spectrum: Mapping[str, Any], figs: Path, out: Path,
                     perturb: str | None = None) -> list[Block]:
    """The representation's κ figures per Gram and its eigenvalues on a log scale."""
    rows = []
    for gram in ("per_example", "per_token"):
        if gram in spectrum:
            g = spectrum[gram]
            rows.append([gram.replace("_", " "), f"{g['rows']} × {g['columns']}",
                         fmt_number(g["kappa"]), fmt_number(g["kappa_d"]), str(g["rank"]),
                         fmt_number(g["kappa_cubed"]),
                         fmt_number(g["width_threshold"]["mlp_attention"]),
                         fmt_number(g["width_threshold"]["relu"])])
    eig = spectrum["eigenvalues"]
    path = figures.line_panels(figs / "audit_spectrum.png", {
        (f"Gram of the input of {spectrum['layer']}" if spectrum["layer"] != "input" else
         f"Gram of the output of {perturb} (perturbed)" if perturb else
         "Gram of the model input"): [
            figures.Line("λ_i", list(range(1, len(eig) + 1)), eig, {"marker": ""})]},
        "i", "eigenvalue λ_i", logy=True)
    return [Table(["Gram", "size", "κ (effective)", "κ_d", "rank", "κ³",
                   "width MLP-Attn κ⁶ n log n", "width 2L-ReLU κ² n log n"], rows,
                  "κ of the representation entering the audited layer (A.12 step 1)."),
            _image(path, out, "Eigenvalues of the per-example Gram of the audited "
                              "representation, descending (zeros not drawn).")]


def heatmap(path: Path, matrices: Mapping[str, list[list[float]]], labels: list[str]) -> Path:
    """One annotated matrix per panel; PNG and an SVG copy, written atomically."""
    fig, axes = plt.subplots(1, len(matrices), figsize=(4.2 * len(matrices), 3.6),
                             squeeze=False)
    for ax, (title, m) in zip(axes[0], matrices.items(), strict=True):
        im = ax.imshow(m, vmin=-1 if "ρ" in title else 0, vmax=1, cmap="viridis")
        for i, row in enumerate(m):
            for j, v in enumerate(row):
                light = v > (0.0 if "ρ" in title else 0.5)  # viridis: light above mid-scale
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=9,
                        color="black" if light else "white")
        ax.set(title=title, xticks=range(len(labels)), yticks=range(len(labels)))
        ax.set_xticklabels(labels)
        ax.set_yticklabels(labels)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    for target, kind in ((path, "png"), (path.with_suffix(".svg"), "svg")):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=kind, dpi=figures.DPI)
        atomic_write(target, buffer.getvalue())
    plt.close(fig)
    return path


def agreement_section(results: Results, problem: AuditProblem, names: Sequence[str],
                      summaries_by_label: Mapping[str, Mapping[str, Any]], figs: Path,
                      out: Path) -> list[Block]:
    """Pairwise agreement of the checkpoints' clean scores (first seed) and the verdict on
    each checkpoint and on the ensembled scores."""
    k = len(problem.checkpoints or [])
    if k == 0:
        return [Text("No checkpoints were given (--checkpoint), so there is no agreement "
                     "matrix: give two or more state_dicts of the same model.")]
    seed = problem.settings.seeds[0]
    labels = [f"ckpt{j}" for j in range(k)]
    blocks: list[Block] = []
    rows = []
    for name in names:
        scores = [results[(name, c)][seed]["scores"] for c in labels]
        a = agreement_matrices([torch.tensor(v) for v in scores], problem.settings.fraction)
        path = heatmap(figs / f"audit_agreement_{name}.png",
                       {f"{name}: Spearman ρ": a["spearman"],
                        f"{name}: top-K overlap": a["top_k_overlap"]}, labels)
        blocks.append(_image(path, out, f"{name}: agreement between the checkpoints' scores "
                                        f"(seed {seed})."))
        for label in [*labels, *([ENSEMBLE] if k >= 2 else [])]:
            v = summaries_by_label[name][label]
            rows.append([name, label, v["verdict"], fmt_estimate(v["adversarial"]["flip_rate"]),
                         fmt_estimate(v["excess"]["flip_rate"])])
    return [Table(["estimator", "checkpoint", "verdict", "adversarial flip rate",
                   "excess"], rows, "The audit on each checkpoint alone and on the "
                                    "checkpoints' mean scores (attack on their mean loss)."),
            *blocks]


def settings_section(problem: AuditProblem, cells: int, seconds: float) -> list[Block]:
    """The audit's settings and the cells' count and time."""
    rows = [[k, str(v)] for k, v in problem.record.items() if k != "estimator"]
    return [Table(["setting", "value"], rows, "The audit's settings (settings.json)."),
            Text(f"Cells: {cells}; total cell time {fmt_number(seconds)} s.")]


def build_audit_report(out: Path, results: Results, problems: Sequence[AuditProblem],
                       title: str, cells: int, seconds: float) -> list[Block]:
    """All blocks of the audit report (module docstring); figures under ``out/figures``."""
    figs = out / "figures"
    first = problems[0]
    names = [q.estimator.name for q in problems]
    margin = first.settings.margin
    by_label: dict[str, dict[str, dict[str, Any]]] = {}
    summaries = {}
    for q in problems:
        name = q.estimator.name
        for (folder, label), per_seed in results.items():
            if folder == name:
                by_label.setdefault(name, {})[label] = assemble(per_seed, margin)
        first_cell = results[(name, MODEL)][first.settings.seeds[0]]
        summaries[name] = {**by_label[name][MODEL], "warnings": first_cell.get("warnings", [])}
    spectrum = next(v for (folder, _), per in results.items() if folder == SPECTRUM
                    for v in per.values())
    sections = [("Every metric against its controls", controls_section(summaries, figs, out)),
                ("Scores before and after the attack",
                 scores_section(results, names, first.settings.seeds[0], figs, out)),
                ("κ spectrum of the audited layer", spectrum_section(spectrum, figs, out,
                                                                  first.record["perturb"])),
                ("Checkpoint agreement",
                 agreement_section(results, first, names, by_label, figs, out)),
                ("Settings", settings_section(first, cells, seconds))]
    blocks: list[Block] = [Heading(title, 1), *answer_blocks(summaries, first),
                           Heading("Contents"),
                           Text(" · ".join(f"{i}. {t}" for i, (t, _) in
                                           enumerate(sections, start=1)))]
    for i, (heading, body) in enumerate(sections, start=1):
        blocks += [Heading(f"{i}. {heading}"), *body]
    return blocks


def write_audit_report(out: Path, results: Results, problems: Sequence[AuditProblem],
                       title: str, cells: int, seconds: float) -> Path:
    """report.md and report.html (same content) and the figures; returns report.md's path."""
    blocks = build_audit_report(out, results, problems, title, cells, seconds)
    atomic_write(out / "report.html", to_html(blocks, title))
    return atomic_write(out / "report.md", to_markdown(blocks))


def audit_folder(out: Path, model: nn.Module, x_train: Any, y_train: Any = None,
                 x_test: Any = None, y_test: Any = None, *,
                 estimators: Sequence[str] = ("ntk-loo",),
                 checkpoints: Sequence[nn.Module | Mapping[str, torch.Tensor]] | None = None,
                 settings: AuditSettings | None = None, title: str = "Influence audit",
                 progress: Callable[[str], None] | None = None, perturb: str | None = None,
                 jobs: int = 1, cluster: str | None = None, threads: int | None = None,
                 **options: Any) -> Path:
    """:func:`~malleability.auditing.audit` for each of ``estimators`` as run folder ``out``
    (module docstring), then its report; returns report.md's path. Every input is checked
    before any file is written. ``perturb``: as for ``audit`` (the cells' settings record
    it). The cells run in this process, on ``jobs`` local Dask workers or on the scheduler
    at ``cluster`` (:func:`~malleability.audit_run.run_audit`)."""
    if isinstance(estimators, str) or not estimators:
        raise ValueError(f"estimators: expected a list of estimator names, got {estimators!r}")
    names = [check_estimator(e, f"estimators[{i}]") for i, e in enumerate(estimators)]
    twice = sorted({e for e in names if names.count(e) > 1})
    if twice:
        raise ValueError(f"estimators: {', '.join(map(str, twice))} given more than once")
    problems = [prepare(model, x_train, y_train, x_test, y_test, estimator=name,
                        checkpoints=checkpoints, settings=settings, perturb=perturb, **options)
                for name in estimators]
    run = run_audit(Path(out), problems, str(problems[0].data[0].device), progress, jobs,
                    cluster, threads)
    return write_audit_report(Path(out), run.results, problems, title, run.cells, run.seconds)
