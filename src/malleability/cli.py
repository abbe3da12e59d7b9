"""Command-line interface: ``malleability diagnose | datasets | flip-rate | reproduce | report``
and ``malleability audit``."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import click
import numpy as np
import torch

from .diagnostic import PRACTICAL_SCALES, Diagnosis, diagnose


def _fail(message: str) -> None:
    raise click.ClickException(message)


def load_feature_file(path: Path) -> torch.Tensor:
    """An (n × d) matrix from a .npy, .pt or .csv file, as float64."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        data = np.load(path, allow_pickle=False)
    elif suffix == ".pt":
        data = torch.load(path, map_location="cpu", weights_only=True)
    elif suffix == ".csv":
        data = np.loadtxt(path, delimiter=",", ndmin=2)
    else:
        raise ValueError(f"features: expected a .npy, .pt or .csv file, got {path.name}")
    data = torch.as_tensor(data)
    if data.ndim != 2:
        raise ValueError(f"features: expected a 2-d matrix (n × d), got shape {tuple(data.shape)}")
    return data.to(torch.float64)


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
    lines.append(f"Verdict: {d.verdict}")
    return "\n".join(lines)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="malleability")
def main() -> None:
    """Kernel-regime diagnostics and influence malleability for attention models."""


@main.command("diagnose")
@click.option("--dataset", default=None, help="Registered dataset (see `malleability datasets`).")
@click.option("--features", "features_path", type=click.Path(exists=True, dir_okay=False,
              path_type=Path), default=None, help="An (n × d) matrix: .npy, .pt or .csv.")
@click.option("--split", default="train", show_default=True, type=click.Choice(["train", "test"]))
@click.option("--classes", default=None, help="Class subset, e.g. 3,8 or automobile,airplane.")
@click.option("--n", "n", type=int, default=None, help="Rows to use (stratified by class).")
@click.option("--seed", type=int, default=0, show_default=True)
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
            x = load_feature_file(features_path)
            if n is not None:
                if not 0 < n <= x.shape[0]:
                    raise ValueError(f"n: expected 1..{x.shape[0]}, got {n}")
                x = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:n]]
            name = features_path.name
        else:
            from .data import load_dataset

            ds = load_dataset(dataset or "digits", split=split, root=data_root,
                              classes=classes, n=n, seed=seed)
            x = ds.features()
            name = f"{ds.name} ({split}, classes {','.join(ds.class_names)})"
        result = diagnose(x, tol=tol, seed=seed)
    except (ValueError, OSError) as err:
        _fail(str(err))
    if as_json:
        click.echo(json.dumps({"name": name, **result.to_dict()}, indent=2))
    else:
        click.echo(format_diagnosis(name, result))


@main.command("flip-rate")
@click.option("--dataset", default="digits", show_default=True)
@click.option("--classes", default=None, help="Class subset, e.g. 3,8 (default: all).")
@click.option("--n", "n_train", type=int, default=1000, show_default=True,
              help="Training points (stratified; capped at what the split holds for digits).")
@click.option("--n-test", type=int, default=500, show_default=True)
@click.option("--model", "models", multiple=True, type=click.Choice(["relu", "attn"]),
              default=("relu", "attn"), show_default=True, help="Repeatable.")
@click.option("--attack", "attacks", multiple=True, type=click.Choice(["fgsm", "pgd", "mim"]),
              default=("fgsm", "pgd", "mim"), show_default=True, help="Repeatable.")
@click.option("--width", type=int, default=1024, show_default=True)
@click.option("--epochs", type=int, default=100, show_default=True, help="Paper: 500.")
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--init-scale", type=float, default=1.0, show_default=True)
@click.option("--eps", type=float, default=0.3, show_default=True)
@click.option("--alpha", type=float, default=0.01, show_default=True)
@click.option("--steps", type=int, default=40, show_default=True)
@click.option("--fraction", type=float, default=0.1, show_default=True)
@click.option("--ridge", type=float, default=1e-3, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--data-root", type=click.Path(path_type=Path), default=None)
@click.option("--device", default="cpu", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def flip_rate_command(dataset: str, classes: str | None, n_train: int, n_test: int,
                      models: tuple[str, ...], attacks: tuple[str, ...], width: int, epochs: int,
                      lr: float, init_scale: float, eps: float, alpha: float, steps: int,
                      fraction: float, ridge: float, seed: int, data_root: Path | None,
                      device: str, as_json: bool) -> None:
    """Influence flip rate (malleability) of 2L-ReLU and MLP-Attn under FGSM/PGD/MIM."""
    import time

    from .experiments.common import DataSettings, ModelSettings, build_model, load_problem
    from .malleability import AttackSettings, measure_malleability
    from .training import TrainSettings, train

    rows = []
    try:
        p = load_problem(DataSettings(dataset, classes, n_train, n_test, 0),
                         None if data_root is None else str(data_root), _device(device))
        settings = TrainSettings(epochs=epochs, lr=lr, seed=seed)
        for arch in models:
            t0 = time.perf_counter()
            net = build_model(arch, p, ModelSettings(width, init_scale, seed, dtype="float32"))
            history = train(net, p.x, p.y, settings, p.transform, p.x_test, p.y_test)
            trained_s = time.perf_counter() - t0
            for name in attacks:
                t1 = time.perf_counter()
                attack = AttackSettings(name, eps, alpha, steps, seed=seed)
                r = measure_malleability(net, p.x, p.y, p.x_test, p.y_test, p.transform,
                                         attack, fraction, ridge)
                rows.append({"model": arch, "attack": name, "flip_rate": r.flip_rate,
                             "spearman": r.spearman, "top_k_overlap": r.top_k_overlap,
                             "test_accuracy": history.test_accuracy[-1],
                             "kappa_k_plus_ridge": r.stability.condition_number,
                             "train_seconds": trained_s,
                             "measure_seconds": time.perf_counter() - t1})
    except (ValueError, OSError) as err:
        _fail(str(err))
    if as_json:
        click.echo(json.dumps({"dataset": dataset, "classes": classes, "n_train": n_train,
                               "width": width, "epochs": epochs, "rows": rows}, indent=2))
        return
    click.echo(f"{dataset} ({classes or 'all classes'}), n = {p.x.shape[0]}, width {width}, "
               f"{epochs} epochs, ε = {eps}")
    click.echo(f"{'model':<6} {'attack':<6} {'flip %':>7} {'ρ':>6} {'top-K':>6} "
               f"{'test acc':>8} {'κ(K+λI)':>9} {'seconds':>8}")
    for r in rows:
        click.echo(f"{r['model']:<6} {r['attack']:<6} {100 * r['flip_rate']:>7.1f} "
                   f"{r['spearman']:>6.3f} {r['top_k_overlap']:>6.2f} {r['test_accuracy']:>8.3f} "
                   f"{r['kappa_k_plus_ridge']:>9.2e} {r['measure_seconds']:>8.1f}")


@main.command("datasets")
@click.option("--data-root", type=click.Path(path_type=Path), default=None,
              help="Dataset folder (else $MALLEABILITY_DATA, else the user cache).")
def datasets_command(data_root: Path | None) -> None:
    """List the registered datasets, whether each is available locally, and where."""
    from .data import dataset_status

    for row in dataset_status(data_root):
        state = "available" if row["available"] else "not downloaded"
        click.echo(f"{row['name']:<14} {state:<15} {row['path']}")


@main.command("reproduce")
@click.option("--preset", default="quick", show_default=True,
              help="quick, paper, or a path to a preset .toml file.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("--only", multiple=True, help="Run only this experiment (repeatable).")
@click.option("--jobs", type=int, default=1, show_default=True, help="Cells run in parallel.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--data-root", type=click.Path(path_type=Path), default=None)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def reproduce_command(preset: str, out: Path, only: tuple[str, ...], jobs: int, device: str,
                      data_root: Path | None, quiet: bool) -> None:
    """Run a preset's experiments cell by cell (resumable), then write the report."""
    from .experiments import RunContext
    from .report import write_report
    from .runner import load_preset, reproduce

    try:
        settings = load_preset(preset)
        ctx = RunContext(out, None if data_root is None else str(data_root),
                         _device(device), progress=not quiet)
        reproduce(settings, ctx, only, jobs)
        path = write_report(out)
    except (ValueError, OSError) as err:
        _fail(str(err))
    click.echo(f"report: {path}")


@main.command("report")
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
def report_command(out: Path) -> None:
    """Write OUT/report.md, OUT/report.html and the figures from a run's results."""
    from .report import write_report

    click.echo(f"report: {write_report(out)}")


@main.command("audit")
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
@click.option("--estimator", "estimators", multiple=True, default=("ntk-loo",),
              show_default=True, help="ntk-loo, trak, tracin, if-explicit, if-cg, if-lissa, "
              "if-datainf, if-ekfac, if-arnoldi (repeatable).")
@click.option("--attack", default="pgd", show_default=True,
              type=click.Choice(["fgsm", "pgd", "mim"]))
@click.option("--eps", type=float, default=0.3, show_default=True)
@click.option("--fraction", type=float, default=0.1, show_default=True)
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds.")
@click.option("--checkpoint", "checkpoint_paths", multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A state_dict of the same model (repeatable): checkpoint agreement.")
@click.option("--bounds", default="0,1", show_default=True, help="Input domain low,high.")
@click.option("--layer", default=None, help="Submodule whose input gets the κ diagnosis.")
@click.option("--parameters", "parameter_names", multiple=True,
              help="Parameter name or prefix the estimators differentiate (repeatable).")
@click.option("--data-root", type=click.Path(path_type=Path), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a summary.")
def audit_command(model_spec: str, builder: str | None, train_path: Path | None,
                  test_path: Path | None, dataset: str | None, classes: str | None,
                  n_train: int | None, n_test: int | None, estimators: tuple[str, ...],
                  attack: str, eps: float, fraction: float, seeds: str,
                  checkpoint_paths: tuple[Path, ...], bounds: str, layer: str | None,
                  parameter_names: tuple[str, ...], data_root: Path | None,
                  as_json: bool) -> None:
    """Audit your own classifier: κ (A.12 step 1), influence malleability per estimator with
    intervals over seeds, and checkpoint agreement (step 2b)."""
    from .auditing import audit
    from .model_io import load_checkpoint, load_model

    reports = []
    try:
        seed_list = tuple(int(s) for s in seeds.split(","))
        lo_hi = tuple(float(b) for b in bounds.split(","))
        if len(lo_hi) != 2:
            raise ValueError(f"bounds: expected low,high, got {bounds!r}")
        if dataset is not None:
            if train_path or test_path:
                raise ValueError("dataset: give either --dataset or --train/--test, not both")
            from .data import load_dataset

            train = load_dataset(dataset, "train", data_root, classes, n_train, 0)
            test = load_dataset(dataset, "test", data_root, classes, n_test, 0)
        elif train_path is None or test_path is None:
            raise ValueError("train: expected --train and --test files, or --dataset")
        else:
            train, test = train_path, test_path
        model = load_model(model_spec, builder)
        checkpoints = [load_checkpoint(p) for p in checkpoint_paths] or None
        for name in estimators:
            r = audit(model, train, None, test, None, estimator=name, attack=attack, eps=eps,
                      fraction=fraction, seeds=seed_list, checkpoints=checkpoints,
                      bounds=lo_hi, layer=layer, parameters=list(parameter_names) or None)
            reports.append(r)
    except (ValueError, OSError) as err:
        _fail(str(err))
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in reports], indent=2, allow_nan=False))
        return
    first = reports[0].representation
    click.echo(f"Representation entering {first['layer']}: shape {tuple(first['shape'])}")
    for gram in ("per_example", "per_token"):
        if gram in first:
            g = first[gram]
            click.echo(f"  {gram:<12} Gram ({g['rows']} × {g['columns']}): κ {_fmt(g['kappa'])}, "
                       f"rank {g['rank']}, κ³ {_fmt(g['kappa_cubed'])}, width MLP-Attn "
                       f"{_fmt(g['width_threshold']['mlp_attention'])}, 2L-ReLU "
                       f"{_fmt(g['width_threshold']['relu'])}")
    click.echo(f"{attack.upper()} ε = {eps}, top {fraction:.0%}, seeds {seeds} "
               "(mean [95% t-interval]):")
    click.echo(f"{'estimator':<12} {'flip rate':>22} {'Spearman ρ':>22} {'top-K overlap':>22}")

    def cell(i) -> str:
        bounds_ = "" if i.low is None else f" [{i.low:.2f}, {i.high:.2f}]"
        return f"{i.mean:.3f}{bounds_}"

    for r in reports:
        click.echo(f"{r.estimator.value:<12} {cell(r.flip_rate):>22} {cell(r.spearman):>22} "
                   f"{cell(r.top_k_overlap):>22}")
        a = r.checkpoint_agreement
        if a:
            e = a["ensemble"]
            rho = a["mean_pairwise_spearman"]
            click.echo(f"  {a['n_checkpoints']} checkpoints: mean pairwise ρ "
                       f"{'n/a' if rho is None else f'{rho:.3f}'}; ensembled scores: flip rate "
                       f"{cell(e['flip_rate'])}, ρ {cell(e['spearman'])}")


def _device(name: str) -> str:
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"device: expected cpu or cuda, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device: cuda requested but no CUDA device is available")
    return name


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
