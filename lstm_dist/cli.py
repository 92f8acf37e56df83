"""`lstm-dist`: the command-line entry point. The only module of lstm_dist that imports pipelines/."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from lstm_dist.config import ConfigError, PipelineConfig, dump_yaml, load_config

app = typer.Typer(
    help=(
        "Distributed LSTM forecasting on Ray, tracked in MLflow.\n\n"
        "Every command takes a YAML config from conf/ plus dotted overrides, e.g.\n\n"
        "  lstm-dist run conf/demo.yaml train.epochs=3 model.hidden_size=64"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigArg = Annotated[Path, typer.Argument(help="Pipeline config YAML (see conf/).", show_default=False)]
OverridesArg = Annotated[
    list[str] | None,
    typer.Argument(help="Dotted overrides key=value, e.g. train.epochs=3 model.hidden_size=64.", show_default=False),
]


def _fail(message: str, code: int = 2) -> None:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _load(config: Path, overrides: list[str] | None) -> PipelineConfig:
    try:
        return load_config(config, overrides or []).resolved()
    except ConfigError as exc:
        _fail(str(exc))
        raise  # unreachable; keeps type checkers calm


def _user_errors() -> tuple[type[BaseException], ...]:
    from lstm_dist.data.errors import DataError
    from lstm_dist.tracking import TrackingError
    from lstm_dist.train.precision import PrecisionError

    return (DataError, TrackingError, PrecisionError, ConfigError)


@app.command()
def run(
    config: ConfigArg,
    overrides: OverridesArg = None,
    force: Annotated[
        list[str] | None,
        typer.Option(
            "--force",
            help="Rerun this step and every later one even if cached (ingest, train, evaluate, register). Repeatable.",
        ),
    ] = None,
    show_config: Annotated[
        bool, typer.Option("--show-config", help="Print the full resolved config and exit.")
    ] = False,
) -> None:
    """Run the training pipeline: ingest -> train (Ray Train DDP) -> evaluate -> register in MLflow.

    Completed steps are cached under workflow.work_dir and reused; a run that died resumes where it stopped.
    """
    cfg = _load(config, overrides)
    if show_config:
        typer.echo(dump_yaml(cfg))
        return
    from pipelines.train import print_summary
    from pipelines.train import run as run_pipeline

    work_dir = Path(cfg.workflow.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "last_config.yaml").write_text(dump_yaml(cfg))
    try:
        summary = run_pipeline(cfg, force=set(force or ()))
    except _user_errors() as exc:
        _fail(f"error: {exc}", code=1)
    print_summary(summary, cfg=cfg)


@app.command()
def train(
    config: ConfigArg,
    overrides: OverridesArg = None,
    shards: Annotated[
        Path | None,
        typer.Option("--shards", help="Shard directory of an earlier ingest (holds manifest.json); no re-ingest."),
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume",
            help="Continue the named run under <work_dir>/train_runs/ from its latest checkpoint "
            "(its shard directory is reused unless --shards is given).",
        ),
    ] = None,
) -> None:
    """Train on an existing shard set with Ray Train (DDP), checkpointing every epoch; no ingest, no MLflow.

    Prints where the run and its checkpoints are, and how to resume it.
    """
    cfg = _load(config, overrides)
    if shards is None and resume is None:
        _fail("train: give --shards DIR (the output of an ingest) or --resume RUN")
    from lstm_dist.cluster import init_ray
    from lstm_dist.train.trainer import train_from_shards

    init_ray(cfg)
    try:
        result = train_from_shards(cfg, shard_dir=shards, resume=resume, progress=typer.echo)
    except _user_errors() as exc:
        _fail(f"error: {exc}", code=1)
    last = result.history.iloc[-1]
    best = result.history.loc[result.history["val_loss"].idxmin()]
    typer.echo(
        f"[train] done: {int(last['epoch'])} epoch(s); best val_loss {best['val_loss']:.4f} "
        f"(epoch {int(best['epoch'])}), val MAE {best['val_mae']:.4f}"
    )
    typer.echo(f"run:               {result.run_dir}")
    typer.echo(f"best checkpoint:   {result.best_checkpoint}")
    typer.echo(f"latest checkpoint: {result.latest_checkpoint}")
    typer.echo(f"history:           {result.run_dir / 'history.csv'}")
    typer.echo(f"resume with:       lstm-dist train {config} --resume {result.run_dir.name} [train.epochs=N]")


@app.command()
def sample(
    output: Annotated[Path, typer.Argument(help="Parquet file to write.")],
    num_series: Annotated[int, typer.Option(help="Number of series.")] = 20,
    num_steps: Annotated[int, typer.Option(help="Hourly steps per series.")] = 2000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Write the synthetic multi-series sample data set (long format) as Parquet."""
    from lstm_dist.data.synthetic import write_sample

    path = write_sample(output, num_series=num_series, num_steps=num_steps, seed=seed)
    typer.echo(f"wrote {num_series} series x {num_steps} steps to {path}")


@app.command()
def ui(
    config: ConfigArg,
    overrides: OverridesArg = None,
    host: Annotated[
        str, typer.Option(help="Interface to bind; keep 127.0.0.1 unless you know you need more.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the UI.")] = 5000,
) -> None:
    """Start the MLflow UI on the config's tracking store and print its address."""
    import subprocess

    cfg = _load(config, overrides)
    uri = cfg.tracking_uri()
    if uri.startswith(("http://", "https://")):
        typer.echo(f"the store is an MLflow server already: open {uri}")
        return
    typer.echo(f"MLflow UI for {uri} at http://{host}:{port}  (Ctrl-C to stop)")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    raise typer.Exit(subprocess.call(cmd))


@app.command()
def tune(
    config: ConfigArg,
    overrides: OverridesArg = None,
    force: Annotated[
        list[str] | None,
        typer.Option("--force", help="Rerun this step and every step that uses it even if cached. Repeatable."),
    ] = None,
) -> None:
    """Search tune.space with Ray Tune (ASHA), retrain the best config on train + validation, evaluate, register.

    The same pipeline as `run` with tune.enabled=true; the search space is checked before Ray starts.
    """
    cfg = _load(config, [*(overrides or []), "tune.enabled=true"])
    from lstm_dist.tune import parse_space

    try:
        parse_space(cfg)
    except ConfigError as exc:
        _fail(str(exc))
    run(config, [*(overrides or []), "tune.enabled=true"], force=force)


models_app = typer.Typer(
    help="The registered models of a config's tracking store: list, show, promote, rollback.",
    no_args_is_help=True,
)
app.add_typer(models_app, name="models")
NameOpt = Annotated[
    str | None, typer.Option("--name", help="Registered model name (default: tracking.model_name of the config).")
]


def _registry(config: Path, overrides: list[str] | None, name: str | None):
    import mlflow

    from lstm_dist.tracking import TrackingError, check_tracking_uri

    cfg = _load(config, overrides)
    uri = cfg.tracking_uri()
    try:
        check_tracking_uri(uri)
    except TrackingError as exc:
        _fail(f"error: {exc}", code=1)
    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient(tracking_uri=uri), name or cfg.tracking.model_name, cfg


def _versions(client, name: str) -> list:
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException as exc:
        _fail(f"error: {exc.message}", code=1)
    if not versions:
        _fail(f"no registered model '{name}' in this store (run a pipeline first, or pass --name)", code=1)
    return sorted(versions, key=lambda v: int(v.version), reverse=True)


@models_app.command("list")
def models_list(config: ConfigArg, overrides: OverridesArg = None, name: NameOpt = None) -> None:
    """Every version of the model, newest first: aliases, test score, promotion decision."""
    import time as _time

    client, name, cfg = _registry(config, overrides, name)
    metric = f"test_{cfg.tracking.promotion_metric}"
    aliases = {}
    for alias, version in client.get_registered_model(name).aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    typer.echo(f"{name}  ({cfg.tracking_uri()})")
    typer.echo(f"{'version':>7}  {'aliases':<20} {'created':<17} {metric:>12}  decision")
    for v in _versions(client, name):
        created = _time.strftime("%Y-%m-%d %H:%M", _time.localtime(v.creation_timestamp / 1000))
        typer.echo(
            f"{v.version:>7}  {','.join(aliases.get(str(v.version), [])) or '-':<20} {created:<17} "
            f"{v.tags.get(metric, '-'):>12}  {v.tags.get('promotion', '-')}"
        )


@models_app.command("show")
def models_show(
    config: ConfigArg,
    version: Annotated[str, typer.Argument(help="A version number, or an alias (champion, challenger).")],
    overrides: OverridesArg = None,
    name: NameOpt = None,
) -> None:
    """One version in full: aliases, source run, tags (scores, promotion decision, lineage), signature."""
    from mlflow.exceptions import MlflowException

    client, name, _ = _registry(config, overrides, name)
    try:
        v = (
            client.get_model_version(name, version)
            if version.isdigit()
            else client.get_model_version_by_alias(name, version)
        )
    except MlflowException as exc:
        _fail(f"error: {exc.message}", code=1)
    aliases = [a for a, ver in client.get_registered_model(name).aliases.items() if str(ver) == str(v.version)]
    typer.echo(f"{name} v{v.version}  aliases: {', '.join(aliases) or '-'}")
    typer.echo(f"  source:  {v.source}")
    typer.echo(f"  run:     {v.run_id}")
    typer.echo(f"  load:    mlflow.pyfunc.load_model('models:/{name}/{v.version}')")
    for key in sorted(v.tags):
        typer.echo(f"  {key}: {v.tags[key]}")


@models_app.command("promote")
def models_promote(
    config: ConfigArg,
    version: Annotated[str, typer.Argument(help="The version to make champion.")],
    overrides: OverridesArg = None,
    name: NameOpt = None,
) -> None:
    """Make a version the champion by hand (no comparison); the previous champion is recorded for rollback."""
    from lstm_dist.promotion import PromotionError, promote_version

    client, name, _ = _registry(config, overrides, name)
    try:
        previous = promote_version(client, name=name, version=version)
    except PromotionError as exc:
        _fail(f"error: {exc}", code=1)
    typer.echo(f"{name}: champion is v{version}" + (f" (was v{previous})" if previous else ""))


@models_app.command("rollback")
def models_rollback(config: ConfigArg, overrides: OverridesArg = None, name: NameOpt = None) -> None:
    """Give the champion alias back to the version that held it before the current champion."""
    from lstm_dist.promotion import PromotionError, rollback

    client, name, _ = _registry(config, overrides, name)
    try:
        old, new = rollback(client, name=name)
    except PromotionError as exc:
        _fail(f"error: {exc}", code=1)
    typer.echo(f"{name}: champion is v{new} again (was v{old})")


def main() -> None:  # pragma: no cover - console script shim
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
