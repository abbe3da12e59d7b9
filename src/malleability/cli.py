"""Command-line interface: ``malleability diagnose | datasets | flip-rate | reproduce | report``,
``malleability train`` and ``malleability audit``."""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
from pathlib import Path
from typing import Any

import click
import torch
from tqdm.auto import tqdm

from .auditing import AuditSettings
from .click_settings import settings_options
from .data.features import read_feature_file
from .diagnostic import PRACTICAL_SCALES, Diagnosis, diagnose
from .estimators import ESTIMATORS, check_estimator
from .jsonsafe import dumps_strict
from .models import ARCHITECTURE_NAMES, ModelSettings, check_architecture
from .repro.experiments import flip_rates
from .repro.experiments.base import TaskSettings
from .settings import setting
from .training import TrainSettings


def _fail(message: str) -> None:
    raise click.ClickException(message)


def _fmt(v: float) -> str:
    return "∞" if math.isinf(v) else f"{v:.3g}" if abs(v) < 1e4 else f"{v:.2e}"


def format_diagnosis(name: str, d: Diagnosis) -> str:
    """A readable multi-line summary of a :class:`Diagnosis`."""
    i, a = d.inputs, d.attention
    lines = [
        f"Spectral diagnostic — {name}: n = {i.n}, d = {i.d}, r = min(n, d) = {i.r}",
        f"  numerical rank of G = XXᵀ      {i.rank} (tolerance {i.tol:.2e} on eigenvalues)",
        f"  κ_d(G) over r directions       {_fmt(i.kappa)}",
        f"  effective κ (rank {i.rank:>4})       {_fmt(i.kappa_effective)}",
        f"  κ³ (linearized attention Gram) {_fmt(d.kappa_cubed)}",
        f"  measured κ of rownorm(XXᵀX)    {_fmt(a.kappa_effective)} (rank {a.rank})",
        f"  width for 2L-ReLU  κ²·n log n  {_fmt(d.threshold_relu)}",
        f"  width for MLP-Attn κ⁶·n log n  {_fmt(d.threshold_attention)}",
    ]
    lines += [f"  largest in use: {k:<38} {_fmt(v)}" for k, v in PRACTICAL_SCALES.items()]
    lines.append(f"  feature collapse (mean pairwise cosine, {d.collapse_n} rows): "
                 + ", ".join(f"{k} {v:.3f}" for k, v in d.collapse.items()))
    s = d.sensitivity
    lines.append(f"  intrinsic sensitivity S = L_K‖Y‖/λ² (Def. C.12, λ = {s['ridge']:g}): MLP-Attn "
                 f"{_fmt(s['attention'])}, 2L-ReLU {_fmt(s['relu'])}, gap {_fmt(s['gap'])}")
    lines.append(f"Verdict: {d.verdict}")
    return "\n".join(lines)


class _Main(click.Group):
    """The command group: an unexpected error is one line (its traceback with --debug)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as err:
            if ctx.params.get("debug"):
                raise
            text = (str(err).strip().splitlines() or [""])[0]
            raise click.ClickException(
                f"unexpected {type(err).__name__}: {text} (rerun with `malleability --debug "
                f"{ctx.invoked_subcommand or ''} ...` for the traceback)") from None


class _Echo(logging.Handler):
    """Log records of the library as ``warning: …`` lines on stderr, beside progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(f"{record.levelname.lower()}: {record.getMessage()}", file=sys.stderr)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="malleability")
@click.option("--debug", is_flag=True, help="Show tracebacks of unexpected errors and "
              "informational messages.")
def main(debug: bool) -> None:
    """Kernel-regime diagnostics and influence malleability for attention models."""
    logger = logging.getLogger("malleability")
    logger.setLevel(logging.INFO if debug else logging.WARNING)
    if not any(isinstance(h, _Echo) for h in logger.handlers):
        logger.addHandler(_Echo())


@main.command("diagnose")
@click.option("--dataset", default=None, help="Registered dataset (see `malleability datasets`).")
@click.option("--features", "features_path", type=click.Path(exists=True, dir_okay=False,
              path_type=Path), default=None, help="An (n × d) matrix: .npy, .pt or .csv.")
@click.option("--split", default="train", show_default=True, type=click.Choice(["train", "test"]),
              help="Which split of the data set.")
@click.option("--classes", default=None, help="Class subset, e.g. 3,8 or automobile,airplane.")
@click.option("--n", "n", type=int, default=None, help="Rows to use (stratified by class).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the row sample and the randomized spectra.")
@click.option("--data-root", type=click.Path(path_type=Path), default=None,
              help="Dataset folder (else $MALLEABILITY_DATA, else the user cache).")
@click.option("--tol", type=float, default=None, help="Eigenvalue tolerance for the rank.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a summary.")
def diagnose_command(dataset: str | None, features_path: Path | None, split: str,
                     classes: str | None, n: int | None, seed: int, data_root: Path | None,
                     tol: float | None, as_json: bool) -> None:
    """κ diagnosis (A.12 step 1) of a dataset or a feature matrix."""
    try:
        if features_path is not None:
            if dataset is not None:
                raise ValueError("features: give either --features or --dataset, not both")
            x = read_feature_file(features_path)
            if n is not None:
                if not 0 < n <= x.shape[0]:
                    raise ValueError(f"n: expected 1..{x.shape[0]}, got {n}")
                x = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:n]]
            name = features_path.name
        else:
            from .data import load_dataset

            ds = load_dataset(dataset or "digits", split=split, root=data_root,
                              classes=classes, n=n, seed=seed)
            x = ds.inputs()
            name = f"{ds.name} ({split}, classes {','.join(ds.class_names)})"
        result = diagnose(x, tol=tol, seed=seed)
    except (ValueError, OSError) as err:
        _fail(str(err))
    if as_json:
        click.echo(dumps_strict({"name": name, **result.to_dict()}, indent=2))
    else:
        click.echo(format_diagnosis(name, result))


_flip_options, _flip_values = settings_options(flip_rates.SETTINGS)


@main.command("flip-rate")
@_flip_options
@click.option("--data-root", type=click.Path(path_type=Path), default=None,
              help="Dataset folder (else $MALLEABILITY_DATA, else the user cache).")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def flip_rate_command(data_root: Path | None, device: str, as_json: bool, **options: Any) -> None:
    """Influence flip rate (malleability) of 2L-ReLU and MLP-Attn under FGSM/PGD/MIM: the
    flip_rates experiment on one task, every setting checked before anything runs."""
    import tempfile

    from .repro.problem import RunContext
    from .repro.report import to_text

    try:
        settings = flip_rates.SETTINGS.from_dict(_flip_values(options), "flip-rate")
        records = []
        with tempfile.TemporaryDirectory() as tmp:
            ctx = RunContext(Path(tmp), None if data_root is None else str(data_root),
                             _device(device), progress=not as_json)
            for cell in flip_rates.cells(settings):
                records.append({"cell": cell, "result": flip_rates.run(settings, cell, ctx)})
    except (ValueError, OSError) as err:
        _fail(str(err))
    if as_json:
        rows = [{**r["cell"], **{k: v for k, v in r["result"].items() if k != "settings"}}
                for r in records]
        click.echo(dumps_strict({"settings": settings.to_dict(), "rows": rows}, indent=2))
        return
    task = settings.tasks[0]
    click.echo(f"{task.label}: n_train = {task.n_train or 'full'}, n_test = {task.n_test}, "
               f"width {settings.model.width}, {settings.train.epochs} epochs, "
               f"ε = {settings.attack.eps}; models: {', '.join(settings.models)}")
    click.echo(to_text(flip_rates.detail_table(records)))


@dataclasses.dataclass(frozen=True)
class TrainCommandSettings(TaskSettings):
    """``malleability train``: one architecture on one task."""

    architecture: str = setting("relu", "Architecture: relu (2L-ReLU), attn (MLP-Attn), "
                                "attn-softmax, attn-exponential.", check_architecture,
                                flag="--model")
    model: ModelSettings = setting(ModelSettings(), "Network construction.")
    train: TrainSettings = setting(TrainSettings(), "Training.")


_train_options, _train_values = settings_options(TrainCommandSettings, ("data.n_influence",))


@main.command("train")
@_train_options
@click.option("--save", "save_path", required=True, type=click.Path(path_type=Path),
              help="Checkpoint to write: a torch.export .pt2 file (pixels → logits, any batch "
                   "size) that `malleability audit --model PATH` loads.")
@click.option("--force", is_flag=True, help="Overwrite an existing --save file.")
@click.option("--data-root", type=click.Path(path_type=Path), default=None,
              help="Dataset folder (else $MALLEABILITY_DATA, else the user cache).")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train_command(save_path: Path, force: bool, data_root: Path | None, device: str,
                  quiet: bool, **options: Any) -> None:
    """Train 2L-ReLU or MLP-Attn on a dataset's pixels, print its test accuracy and save it
    as a torch.export checkpoint for `malleability audit`."""
    from .model_io import check_save_path, save_exported
    from .repro.problem import build_model, load_problem
    from .training import train

    try:
        settings = TrainCommandSettings.from_dict(_train_values(options), "train")
        check_save_path(save_path, force)
        task = settings.tasks[0]
        problem = load_problem(task, None if data_root is None else str(data_root),
                               _device(device))
        net = build_model(settings.architecture, problem, settings.model)
        history = train(net, problem.x, problem.y, settings.train.replace(progress=not quiet),
                        problem.x_test, problem.y_test)
        save_exported(net, problem.x[:2], save_path)
    except (ValueError, OSError, RuntimeError) as err:
        _fail(str(err))
    click.echo(f"{task.label}: n_train = {problem.x.shape[0]}, n_test = "
               f"{problem.x_test.shape[0]}; {ARCHITECTURE_NAMES[settings.architecture]} width "
               f"{settings.model.width}, {settings.train.epochs} epochs: test accuracy "
               f"{history.test_accuracy[-1]:.4f}")
    click.echo(f"saved: {save_path} (torch.export; `malleability audit --model {save_path}`)")


@main.command("datasets")
@click.option("--data-root", type=click.Path(path_type=Path), default=None,
              help="Dataset folder (else $MALLEABILITY_DATA, else the user cache).")
def datasets_command(data_root: Path | None) -> None:
    """List the registered datasets, whether each is available locally, and where."""
    from .data import dataset_status

    for row in dataset_status(data_root):
        state = "available" if row["available"] else "not downloaded"
        click.echo(f"{row['name']:<14} {state:<15} {row['path']}")


def _parallel_options(command: Any) -> Any:
    """``--jobs``, ``--cluster`` and ``--threads``: where a run's cells compute."""
    for option in reversed((
            click.option("--jobs", type=int, default=1, show_default=True,
                         help="Cells run in parallel on this machine (worker processes of a "
                              "local Dask cluster); 1 runs them in this process."),
            click.option("--cluster", default=None, metavar="ADDRESS",
                         help="Run the cells on the Dask scheduler at ADDRESS "
                              "(tcp://HOST:PORT)."),
            click.option("--threads", type=int, default=None,
                         help="Torch threads per cell (default: all cores; cores / N with "
                              "--jobs N; the worker's with --cluster). Results are bitwise "
                              "equal for equal threads."))):
        command = option(command)
    return command


@main.command("reproduce")
@click.option("--preset", default="quick", show_default=True,
              help="quick, paper, sensitivity, or a path to a preset .toml file.")
@click.option("--out", required=True, help="Output folder (new, empty, or an earlier run of "
              "the same preset to resume).")
@click.option("--only", multiple=True, help="Run only this experiment (repeatable).")
@click.option("--cells", multiple=True, metavar="PATTERN",
              help="Run only the cells whose file name matches this shell pattern, e.g. "
                   "'task=cifar10*' or '*seed=2' (repeatable; splits a run between machines).")
@_parallel_options
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--data-root", type=click.Path(path_type=Path), default=None,
              help="Dataset folder (else $MALLEABILITY_DATA, else the user cache).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--seeds", type=int, default=None,
              help="Run every experiment on seeds 0 … N−1 (overrides the preset's seeds).")
def reproduce_command(preset: str, out: str, only: tuple[str, ...], cells: tuple[str, ...],
                      jobs: int,
                      cluster: str | None, threads: int | None, device: str,
                      data_root: Path | None, quiet: bool, seeds: int | None) -> None:
    """Run a preset's experiments cell by cell (resumable), then write the report."""
    from .repro.problem import RunContext
    from .repro.report import write_report
    from .repro.runner import load_preset, reproduce

    try:
        if not out.strip():
            raise ValueError("out: expected a folder path, got ''")
        for name, value in (("jobs", jobs), ("threads", threads)):
            if value is not None and value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value}")
        settings = load_preset(preset)
        if seeds is not None:
            settings = settings.with_seeds(seeds)
        ctx = RunContext(Path(out), None if data_root is None else str(data_root),
                         _device(device), progress=not quiet)
        reproduce(settings, ctx, only, jobs, cluster, threads, cells)
        path = write_report(Path(out))
    except (ValueError, OSError, RuntimeError) as err:
        _fail(str(err))
    click.echo(f"report: {path}")


@main.command("report")
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
def report_command(out: Path) -> None:
    """Write OUT/report.md, OUT/report.html and the figures from a run's results; cell files
    that fail their checks are left out and listed."""
    from .repro.report import write_report

    try:
        path = write_report(out)
    except (ValueError, OSError) as err:
        _fail(str(err))
    click.echo(f"report: {path}")


def check_estimators(value: tuple[str, ...], name: str) -> tuple[str, ...]:
    """A non-empty list of registered estimator names, each with optional settings
    (``NAME[key=value,...]``)."""
    if not value:
        raise ValueError(f"{name}: expected at least one estimator")
    for i, v in enumerate(value):
        check_estimator(v, f"{name}[{i}]")
    return tuple(value)


@dataclasses.dataclass(frozen=True)
class AuditCommandSettings(AuditSettings):
    """``malleability audit``: the audit's settings and the estimators to audit."""

    estimators: tuple[str, ...] = setting(("ntk-loo",), "Influence estimator (repeatable): "
                                          f"{', '.join(ESTIMATORS)}; settings other than "
                                          "the defaults in brackets, e.g. 'if-arnoldi["
                                          "hessian_points=150,proj_dim=50]'.",
                                          check_estimators, flag="--estimator")


_audit_options, _audit_values = settings_options(AuditCommandSettings)


@main.command("audit")
@_audit_options
@click.option("--model", "model_spec", required=True,
              help="module:callable (a .py file or dotted module), a torch.export .pt2 file, "
                   "or a state_dict file with --builder.")
@click.option("--builder", default=None, help="module:callable building the model for a "
              "state_dict given as --model.")
@click.option("--train", "train_path", type=click.Path(exists=True, dir_okay=False,
              path_type=Path), default=None, help=".npz/.pt with x (inputs) and y (labels).")
@click.option("--test", "test_path", type=click.Path(exists=True, dir_okay=False,
              path_type=Path), default=None, help=".npz/.pt with x and y.")
@click.option("--dataset", default=None, help="Registered dataset instead of --train/--test.")
@click.option("--classes", default=None, help="Class subset of --dataset, e.g. 3,8.")
@click.option("--n", "n_train", type=int, default=None, help="Training rows of --dataset.")
@click.option("--n-test", type=int, default=None, help="Test rows of --dataset.")
@click.option("--checkpoint", "checkpoint_paths", multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A state_dict of the same model (repeatable): checkpoint agreement.")
@click.option("--data-root", type=click.Path(path_type=Path), default=None,
              help="Dataset folder (else $MALLEABILITY_DATA, else the user cache).")
@click.option("--perturb", default=None, help="Submodule whose output the attack moves "
              "instead of the input (token models: e.g. the word embeddings); ε in its units.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a summary.")
@click.option("--out", "out", type=click.Path(path_type=Path), default=None,
              help="Run folder: one resumable cell per (estimator, checkpoint, seed), then "
                   "report.md, report.html and figures/ (new, empty, or an earlier audit's "
                   "folder of the same settings).")
@_parallel_options
def audit_command(model_spec: str, builder: str | None, train_path: Path | None,
                  test_path: Path | None, dataset: str | None, classes: str | None,
                  n_train: int | None, n_test: int | None,
                  checkpoint_paths: tuple[Path, ...], data_root: Path | None,
                  perturb: str | None, as_json: bool, out: Path | None, jobs: int,
                  cluster: str | None, threads: int | None, **options: Any) -> None:
    """Audit your own classifier: κ (A.12 step 1), influence malleability per estimator
    against its controls (estimator noise, random ±ε) with intervals over seeds and a
    verdict, and checkpoint agreement (step 2b)."""
    from .auditing import audit
    from .model_io import load_checkpoint, load_model
    from .repro.cluster import check_parallel

    try:
        settings = AuditCommandSettings.from_dict(_audit_values(options), "audit")
        parallel = dict(zip(("jobs", "threads"), check_parallel(jobs, cluster, threads),
                            strict=True), cluster=cluster)
        if dataset is not None:
            if train_path or test_path:
                raise ValueError("dataset: give either --dataset or --train/--test, not both")
            from .data import load_dataset

            train = load_dataset(dataset, "train", data_root, classes, n_train, 0)
            test = load_dataset(dataset, "test", data_root, classes, n_test, 0)
        elif train_path is None or test_path is None:
            raise ValueError("train: expected --train and --test files, or --dataset")
        elif classes is not None or n_train is not None or n_test is not None:
            raise ValueError("classes: --classes, --n and --n-test select from --dataset; "
                             "with --train/--test files, subset the files instead")
        else:
            train, test = train_path, test_path
        model = load_model(model_spec, builder)
        checkpoints = [load_checkpoint(p) for p in checkpoint_paths] or None
        common = AuditSettings(**{f.name: getattr(settings, f.name)
                                  for f in dataclasses.fields(AuditSettings)})
        if out is not None:
            if as_json:
                raise ValueError("json: --out writes a report folder; give --json or --out")
            from .audit_folder import audit_folder

            path = audit_folder(out, model, train, None, test, None,
                                estimators=settings.estimators, checkpoints=checkpoints,
                                settings=common, title=f"Influence audit: {model_spec}",
                                progress=lambda label: click.echo(f"cell {label}", err=True),
                                perturb=perturb, **parallel)
            click.echo(f"report: {path}")
            return
    except (ValueError, OSError, RuntimeError) as err:
        _fail(str(err))
    reports, failure = [], None
    for name in settings.estimators:  # a later estimator's failure keeps the earlier results
        try:
            reports.append(audit(model, train, None, test, None, estimator=name,
                                 checkpoints=checkpoints, settings=common, perturb=perturb,
                                 **parallel))
        except (ValueError, OSError, RuntimeError) as err:
            failure = str(err)
            break
    if reports and as_json:
        click.echo(dumps_strict([r.to_dict() for r in reports], indent=2))
    elif reports:
        from .audit_report import format_audit

        click.echo(format_audit(reports, common))
    if failure is not None:
        _fail(failure)


def _device(name: str) -> str:
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"device: expected cpu or cuda, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device: cuda requested but no CUDA device is available")
    return name


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
