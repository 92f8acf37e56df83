"""`lstm-dist`: the command-line entry point. The only module of lstm_dist that imports pipelines/."""

from __future__ import annotations

import errno
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from typer.core import TyperGroup

from lstm_dist.config import ConfigError, PipelineConfig, dump_yaml, load_config
from lstm_dist.storage import save_resolved

# `-v` shows the traceback under an `error:` line; set by the app's callback on every invocation.
VERBOSE = {"on": False}
# Errors of the filesystem that a user causes (and fixes): a read-only or full work dir, a path not theirs.
USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


class _Commands(TyperGroup):
    """The one error path: a user error raised anywhere below (also inside a Ray task or a Ray Train worker)
    ends as one `error:` line and exit code 1; anything else keeps its traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Exception as exc:  # typer's Exit and usage errors are no user errors of ours: they pass
            cause = unwrap(exc)
            if not isinstance(cause, _user_errors()) and not _user_os_error(cause):
                raise
            _fail(f"error: {error_text(cause)}", code=2 if isinstance(cause, ConfigError) else 1)


app = typer.Typer(
    cls=_Commands,
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


BELOW_HELP = (
    "Crown the model even if its test MASE does not beat the seasonal naive's (it is still tagged below_baseline)."
)


def _below_override(allow: bool) -> list[str]:
    return ["tracking.allow_below_baseline=true"] if allow else []


@app.callback()
def _options(
    verbose: Annotated[
        int,
        typer.Option(
            "-v",
            "--verbose",
            count=True,
            help="-v: the traceback under an error line, and Ray's and MLflow's INFO lines; -vv: their DEBUG lines.",
        ),
    ] = 0,
) -> None:
    from lstm_dist.config import VERBOSE_ENV

    VERBOSE["on"] = verbose > 0
    if verbose:
        os.environ[VERBOSE_ENV] = str(verbose)  # read by cluster.py and tracking.py (and inherited by Ray's workers)


def _fail(message: str, code: int = 2) -> None:
    """Exit with `message` (one `error:` line for a user error); with -v, the traceback being handled first."""
    if sys.exc_info()[1] is not None:
        if VERBOSE["on"]:
            traceback.print_exc()
        # Sibling tasks that failed the same way would print Ray's "Unhandled error" blocks when their
        # never-fetched results are freed; this error line has reported them.
        os.environ["RAY_IGNORE_UNHANDLED_ERRORS"] = "1"
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def unwrap(exc: BaseException) -> BaseException:
    """The error that a Ray task or a Ray Train worker raised, out of Ray's wrappers around it."""
    from ray.exceptions import RayTaskError
    from ray.train import ControllerError, WorkerGroupError

    for _ in range(10):  # wrappers nest (a worker's error inside the controller's), never deeply
        if isinstance(exc, RayTaskError) and isinstance(exc.cause, BaseException):
            exc = exc.cause
        elif isinstance(exc, WorkerGroupError) and exc.worker_failures:
            exc = next(iter(exc.worker_failures.values()))
        elif isinstance(exc, ControllerError) and isinstance(exc.controller_failure, BaseException):
            exc = exc.controller_failure
        else:
            return exc
    return exc


def error_text(exc: BaseException) -> str:
    """What follows `error: `: the cause's own message (not Ray's `ray::task() (pid=...)` stack); a config
    error with one problem on one line; a filesystem error with its path and the fix."""
    exc = unwrap(exc)
    if _user_os_error(exc):
        where = f" '{exc.filename}'" if getattr(exc, "filename", None) else ""
        return (
            f"cannot write{where}: {exc.strerror or exc}; make workflow.work_dir writable (and not full) "
            "or point workflow.work_dir=DIR elsewhere"
        )
    text = str(exc).strip()
    head, *rest = text.splitlines() or [""]
    if isinstance(exc, ConfigError) and len(rest) == 1 and rest[0].lstrip().startswith("- "):
        return f"{head} {rest[0].strip()[2:]}"  # `invalid config (x.yaml): unknown key 'data.foo'. ...`
    return text


def _user_os_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and getattr(exc, "errno", None) in USER_ERRNOS


def _load(config: Path, overrides: list[str] | None) -> PipelineConfig:
    try:
        return load_config(config, overrides or []).resolved()
    except ConfigError as exc:
        _fail(f"error: {error_text(exc)}")
        raise  # unreachable; keeps type checkers calm


def explain_config(cfg: PipelineConfig) -> str:
    """Every leaf key of the resolved config with its value and its description (the field's attribute docstring
    in config.py), one block per key."""
    import json
    import textwrap

    from pydantic import BaseModel

    lines = []

    def walk(model: BaseModel, prefix: str) -> None:
        values = model.model_dump(mode="json")
        for name, info in type(model).model_fields.items():
            if isinstance(getattr(model, name), BaseModel):
                walk(getattr(model, name), f"{prefix}{name}.")
                continue
            lines.append(f"{prefix}{name}: {json.dumps(values[name])}")
            lines.append(textwrap.indent(info.description or "(no description)", "    "))

    walk(cfg, "")
    return "\n".join(lines)


def _user_errors() -> tuple[type[BaseException], ...]:
    from lstm_dist.data.errors import DataError
    from lstm_dist.predict import PredictError
    from lstm_dist.storage import StorageError
    from lstm_dist.tracking import TrackingError
    from lstm_dist.train.precision import PrecisionError
    from lstm_dist.workflow import WorkflowError

    return (DataError, TrackingError, PrecisionError, ConfigError, WorkflowError, StorageError, PredictError)


@app.command()
def run(
    config: ConfigArg,
    overrides: OverridesArg = None,
    force: Annotated[
        list[str] | None,
        typer.Option(
            "--force",
            help="Rerun this step even if cached, and every step using its output "
            "(ingest, shard, tune, train, evaluate, register). Repeatable.",
        ),
    ] = None,
    show_config: Annotated[
        bool, typer.Option("--show-config", help="Print the full resolved config and exit.")
    ] = False,
    explain: Annotated[
        bool,
        typer.Option("--explain", help="With --show-config (or alone): every key, its value and what it means."),
    ] = False,
    allow_below_baseline: Annotated[bool, typer.Option("--allow-below-baseline", help=BELOW_HELP)] = False,
) -> None:
    """Run the training pipeline: ingest -> shard -> (tune, when enabled) -> train (Ray Train DDP) -> evaluate -> register.

    Completed steps are cached under workflow.work_dir and reused; a run that died resumes where it stopped
    (training from its latest checkpoint). `lstm-dist status` shows the steps of the latest runs.
    """
    cfg = _load(config, [*(overrides or []), *_below_override(allow_below_baseline)])
    if explain:
        typer.echo(explain_config(cfg))
        return
    if show_config:
        typer.echo(dump_yaml(cfg))
        return
    from lstm_dist.pipelines.train import print_summary
    from lstm_dist.pipelines.train import run as run_pipeline

    try:
        save_resolved(cfg)  # the work dir's writability, before Ray starts
        summary = run_pipeline(cfg, force=set(force or ()))
    except _user_errors() as exc:
        _fail(f"error: {error_text(exc)}", code=1)
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
        _fail(f"error: {error_text(exc)}", code=1)
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


data_app = typer.Typer(
    help="Ingest raw data into Arrow shards and inspect shard sets (no training).",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")


@data_app.command("ingest")
def data_ingest(
    config: ConfigArg,
    overrides: OverridesArg = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Shard directory to write (default: <work_dir>/data/shards).")
    ] = None,
) -> None:
    """Read, validate and clean the config's input with Ray tasks, write Arrow shards + manifest.json, print the report.

    The raw input is never modified; the shard directory appears complete (with _SUCCESS) only when all is written.
    """
    cfg = _load(config, overrides)
    from lstm_dist.cluster import init_ray
    from lstm_dist.data.commands import ingest_command
    from lstm_dist.data.readers import check_inputs

    try:
        check_inputs(cfg.data)  # a missing input is reported before Ray starts
        init_ray(cfg)
        _, _, text = ingest_command(cfg, out_dir=str(out) if out else None)
    except _user_errors() as exc:
        _fail(f"error: {error_text(exc)}", code=1)
    typer.echo(text)


@data_app.command("inspect")
def data_inspect(
    shard_dir: Annotated[
        Path,
        typer.Argument(
            help="A shard directory (holds manifest.json and _SUCCESS), a shard step's directory "
            "(<work_dir>/shard/<key>, holding shards/), or a manifest.json."
        ),
    ],
    verify: Annotated[
        bool, typer.Option("--verify", help="Recompute every shard's sha256 against the manifest.")
    ] = False,
    max_series: Annotated[int, typer.Option("--max-series", help="Series shown in the per-series table.")] = 10,
) -> None:
    """Show a shard set's manifest: series, rows, windows per split, scaler stats, storage and issues found."""
    if "://" not in str(shard_dir) and not shard_dir.exists():
        _fail(f"error: '{shard_dir}' does not exist; give a shard directory, e.g. <work_dir>/shard/<key>", code=1)
    try:
        typer.echo(inspect_command_text(shard_dir, verify=verify, max_series=max_series))
    except _user_errors() as exc:
        _fail(f"error: {error_text(exc)}", code=1)


def inspect_command_text(shard_dir: Path, *, verify: bool, max_series: int) -> str:
    from lstm_dist.data.commands import inspect_command

    return inspect_command(str(_shard_set(shard_dir)), verify=verify, max_series=max_series)


def _shard_set(path: Path) -> Path:
    """The shard directory meant by `path`: itself, the folder of a manifest.json, or the shards/ of a pipeline's
    shard step (<work_dir>/shard/<key>/shards). Anything else is passed on for the data error to name."""
    from lstm_dist.data.manifest import MANIFEST_FILE

    if path.name == MANIFEST_FILE and path.is_file():
        return path.parent
    if not (path / MANIFEST_FILE).exists() and (path / "shards" / MANIFEST_FILE).exists():
        return path / "shards"
    return path


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
    port: Annotated[int, typer.Option(help="Port of the UI; 0 picks a free one.")] = 5000,
    wait: Annotated[float, typer.Option("--wait", help="Seconds to wait for the UI server to answer.")] = 180.0,
    workers: Annotated[
        int,
        typer.Option(
            min=1, help="Server processes; one serves a person's browser (MLflow's default, 4, starts 4x slower)."
        ),
    ] = 1,
) -> None:
    """Start the MLflow UI on the config's tracking store; print its address once it answers."""
    import socket

    from lstm_dist.tracking import TrackingError, check_tracking_uri, seed_sqlite_store

    cfg = _load(config, overrides)
    uri = cfg.tracking_uri()
    if uri.startswith(("http://", "https://")):
        from lstm_dist.config import redact_uri

        typer.echo(f"the store is an MLflow server already: open {redact_uri(uri)}")
        return
    try:
        check_tracking_uri(uri)
    except TrackingError as exc:
        _fail(f"error: {error_text(exc)}", code=1)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        typer.echo(f"note: {uri} does not exist yet; it fills once a pipeline has run (lstm-dist run {config})")
        seed_sqlite_store(uri)  # an empty store: the server starts without building one
    if port == 0:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
    # The UI server is started by name (uvicorn/gunicorn): this environment's bin directory goes first on PATH.
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    cmd += ["--workers", str(workers)]
    work_dir = cfg.workflow.work_dir
    log_dir = Path(work_dir) if "://" not in work_dir else Path.cwd()
    log_dir.mkdir(parents=True, exist_ok=True)
    _serve_ui(cmd, env=env, host=host, port=port, uri=uri, log_path=log_dir / "mlflow-ui.log", timeout=wait)


def _serve_ui(cmd: list[str], *, env: dict, host: str, port: int, uri: str, log_path: Path, timeout: float) -> None:
    """Run the UI server in its own process group, print its address once it answers on HTTP (it takes tens of
    seconds on a small machine), then wait for it; Ctrl-C or SIGTERM stops the whole group."""
    import contextlib
    import signal
    import subprocess
    import time

    # Any address bound to every interface answers on the loopback too.
    probe = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}/health"
    typer.echo(f"starting the MLflow UI for {uri} on {host}:{port} (server log: {log_path})")
    with open(log_path, "a") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(*_) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        raise typer.Exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    start = next_note = time.monotonic()
    try:
        while not _answers(probe):
            if proc.poll() is not None:
                tail = log_path.read_text()[-2000:]
                _fail(f"error: the MLflow UI server exited ({proc.returncode}) before answering:\n{tail}", code=1)
            waited = time.monotonic() - start
            if waited > timeout:
                _fail(f"error: the MLflow UI did not answer at {probe} within {timeout:.0f}s (see {log_path})", 1)
            if time.monotonic() >= next_note:
                typer.echo(f"  waiting for the UI server to answer ({waited:.0f}s)")
                next_note += 5
            time.sleep(1)
        typer.echo(f"open http://{host}:{port}  (MLflow UI for {uri}; Ctrl-C to stop)")
        if proc.wait():
            _fail(f"error: the MLflow UI server exited ({proc.returncode}); see {log_path}", code=1)
    except KeyboardInterrupt:
        typer.echo("\nstopping the MLflow UI")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)


def _answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


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
        _fail(f"error: {error_text(exc)}")
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
    from lstm_dist.registry import open_registry
    from lstm_dist.tracking import TrackingError

    cfg = _load(config, overrides)
    try:
        registry = open_registry(cfg.tracking_uri())
    except TrackingError as exc:
        _fail(f"error: {error_text(exc)}", code=1)
    return registry, name or cfg.tracking.model_name, cfg


def _versions(registry, name: str) -> list:
    from lstm_dist.registry import RegistryError

    try:
        versions = registry.versions(name)
    except RegistryError as exc:
        _fail(f"error: {error_text(exc)}", code=1)
    if not versions:
        _fail(f"no registered model '{name}' in this store (run a pipeline first, or pass --name)", code=1)
    return versions


@models_app.command("list")
def models_list(config: ConfigArg, overrides: OverridesArg = None, name: NameOpt = None) -> None:
    """Every version of the model, newest first: aliases, test score, promotion decision."""
    import time as _time

    from lstm_dist.config import redact_uri

    registry, name, cfg = _registry(config, overrides, name)
    versions = _versions(registry, name)
    metric = f"test_{cfg.tracking.promotion_metric}"
    aliases = {}
    for alias, version in registry.aliases(name).items():
        aliases.setdefault(version, []).append(alias)
    typer.echo(f"{name}  ({redact_uri(cfg.tracking_uri())})")
    typer.echo(f"{'version':>7}  {'aliases':<20} {'created':<17} {metric:>12}  decision")
    for v in versions:
        created = _time.strftime("%Y-%m-%d %H:%M", _time.localtime(v.creation_timestamp / 1000))
        typer.echo(
            f"{v.version:>7}  {','.join(aliases.get(str(v.version), [])) or '-':<20} {created:<17} "
            f"{v.tags.get(metric, '-'):>12}  {v.tags.get('promotion', '-')}"
        )


@models_app.command("show")
def models_show(
    config: ConfigArg,
    version: Annotated[
        str, typer.Argument(help="A version number, or an alias (champion, challenger); default: champion.")
    ] = "champion",
    overrides: OverridesArg = None,
    name: NameOpt = None,
) -> None:
    """One version in full: aliases, source run, tags (scores, promotion decision, lineage), signature.

    `lstm-dist models show CONFIG [VERSION] [key=value ...]`: a key=value in VERSION's place is an override."""
    from lstm_dist.registry import RegistryError

    if "=" in version:  # `models show CONFIG tracking.uri=...`: no version given, the champion is meant
        overrides, version = [version, *(overrides or [])], "champion"
    registry, name, _ = _registry(config, overrides, name)
    try:
        v = registry.version(name, version)
        signature = registry.signature(name, str(v.version))
    except RegistryError as exc:
        _fail(f"error: {error_text(exc)}", code=1)
    aliases = [a for a, ver in registry.aliases(name).items() if ver == str(v.version)]
    typer.echo(f"{name} v{v.version}  aliases: {', '.join(aliases) or '-'}")
    typer.echo(f"  source:  {v.source}")
    typer.echo(f"  run:     {v.run_id}")
    typer.echo(f"  load:    mlflow.pyfunc.load_model('models:/{name}/{v.version}')")
    for key in sorted(v.tags):
        typer.echo(f"  {key}: {v.tags[key]}")
    typer.echo(
        "  signature:\n" + ("\n".join(f"    {line}" for line in signature.splitlines()) if signature else "    -")
    )


@models_app.command("promote")
def models_promote(
    config: ConfigArg,
    version: Annotated[str, typer.Argument(help="The version to make champion.")],
    overrides: OverridesArg = None,
    name: NameOpt = None,
) -> None:
    """Make a version the champion by hand (no comparison); the previous champion is recorded for rollback."""
    from lstm_dist.promotion import PromotionError, promote_version

    registry, name, _ = _registry(config, overrides, name)
    try:
        previous = promote_version(registry, name=name, version=version)
    except PromotionError as exc:
        _fail(f"error: {error_text(exc)}", code=1)
    typer.echo(f"{name}: champion is v{version}" + (f" (was v{previous})" if previous else ""))


@models_app.command("rollback")
def models_rollback(config: ConfigArg, overrides: OverridesArg = None, name: NameOpt = None) -> None:
    """Give the champion alias back to the version that held it before the current champion."""
    from lstm_dist.promotion import PromotionError, rollback

    registry, name, _ = _registry(config, overrides, name)
    try:
        old, new = rollback(registry, name=name)
    except PromotionError as exc:
        _fail(f"error: {error_text(exc)}", code=1)
    typer.echo(f"{name}: champion is v{new} again (was v{old})")


# ---------------------------------------------------------------------------------------------
# Workflow state, retraining, cluster jobs, schedules, batch prediction


@app.command()
def status(
    config: Annotated[Path | None, typer.Argument(help="Config whose workflow.work_dir to show.")] = None,
    overrides: OverridesArg = None,
    work_dir: Annotated[
        str | None, typer.Option("--work-dir", help="Work dir (path or URI) instead of a config.")
    ] = None,
    runs: Annotated[int, typer.Option("--runs", help="How many of the latest runs to show.")] = 3,
) -> None:
    """Each step of the latest pipeline runs in a work dir: done, cached, failed, running (or interrupted), with timing."""
    from lstm_dist.workflow import format_status, read_runs

    if work_dir is None:
        if config is None:
            _fail("status: give a CONFIG (its workflow.work_dir is shown) or --work-dir DIR")
        work_dir = _load(config, overrides).workflow.work_dir
    typer.echo(f"work dir: {work_dir}")
    typer.echo(format_status(read_runs(work_dir, limit=runs)))


@app.command()
def retrain(
    config: ConfigArg,
    overrides: OverridesArg = None,
    force: Annotated[
        list[str] | None,
        typer.Option("--force", help="Retrain even without new data, rerunning this step and the steps using it."),
    ] = None,
    allow_below_baseline: Annotated[bool, typer.Option("--allow-below-baseline", help=BELOW_HELP)] = False,
) -> None:
    """Retrain on new data, promoting the challenger only if it beats the champion on the same hold-out.

    Ends at once when the inputs are those the champion was trained on. Otherwise ingests only the new or
    changed files, trains a challenger (warm-started with workflow.warm_start=true), scores it and the
    champion on the same, most recent hold-out, and moves the champion alias only if it is better (and
    it beats the seasonal naive forecast).
    """
    cfg = _load(config, [*(overrides or []), *_below_override(allow_below_baseline)])
    from lstm_dist.pipelines.retrain import run as run_retrain

    save_resolved(cfg)
    try:
        run_retrain(cfg, force=set(force or ()))
    except _user_errors() as exc:
        _fail(f"error: {error_text(exc)}", code=1)


@app.command()
def backtest(
    config: ConfigArg,
    overrides: OverridesArg = None,
    windows: Annotated[int | None, typer.Option("--windows", help="Number of cutoffs (backtest.windows).")] = None,
    step: Annotated[
        int | None, typer.Option("--step", help="Steps between cutoffs; 0 = the horizon (backtest.step).")
    ] = None,
    refit_every: Annotated[
        int | None, typer.Option("--refit-every", help="Train at every k-th cutoff (backtest.refit_every).")
    ] = None,
) -> None:
    """Rolling-origin backtest: at each of the last N cutoffs train on the data up to it only, forecast the horizon
    after it, and score model vs naive, seasonal naive, AutoETS and AutoTheta (MASE, sMAPE, MAE, RMSE).

    The table (per cutoff and overall) is printed, written as CSV under <work_dir>/backtest/ and logged to MLflow.
    """
    flags = {"windows": windows, "step": step, "refit_every": refit_every}
    cfg = _load(config, [*(overrides or []), *(f"backtest.{k}={v}" for k, v in flags.items() if v is not None)])
    from lstm_dist.pipelines.backtest import run as run_backtest

    save_resolved(cfg)
    try:
        run_backtest(cfg)
    except _user_errors() as exc:
        _fail(f"error: {error_text(exc)}", code=1)


@app.command(context_settings={"allow_interspersed_args": False})
def submit(
    args: Annotated[list[str], typer.Argument(help="The lstm-dist command to run, after --: run conf/x.yaml ...")],
    address: Annotated[
        str | None,
        typer.Option(
            help="Ray dashboard address (default: $RAY_API_SERVER_ADDRESS, $RAY_ADDRESS, http://127.0.0.1:8265)."
        ),
    ] = None,
    working_dir: Annotated[
        Path | None,
        typer.Option(
            help="Directory uploaded as the job's working dir (default: the checkout's root when run inside a "
            "checkout, so the job runs its code; else the current directory)."
        ),
    ] = None,
    env: Annotated[list[str] | None, typer.Option("--env", help="KEY=VALUE set in the job. Repeatable.")] = None,
    submission_id: Annotated[str | None, typer.Option(help="Id for the job (default: generated).")] = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Follow the logs and exit with the job's status.")
    ] = True,
) -> None:
    """Run an lstm-dist command on a Ray cluster as a Ray job, e.g. `lstm-dist submit -- run conf/demo.yaml`.

    Uploads the working dir (a checkout: its lstm_dist and pipelines run on the cluster; else this installed
    package goes with it), follows the job's logs, and exits 0 if it succeeded, 1 if it failed, 3 if it was
    stopped. A dropped connection is retried a few times. Ctrl-C detaches; the job keeps running.
    """
    from lstm_dist.jobs import EXIT_CODES, JobError
    from lstm_dist.jobs import submit as submit_job

    env_vars = {}
    for item in env or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(f"--env '{item}': expected KEY=VALUE")
        env_vars[key] = value
    _warn_relative_work_dir(args)
    try:
        job_id, final = submit_job(
            args,
            address=address,
            working_dir=working_dir,
            env_vars=env_vars,
            submission_id=submission_id,
            wait=False,
            note=lambda line: typer.echo(line, err=True),
        )
    except JobError as exc:
        _fail(f"error: {error_text(exc)}", code=1)
    typer.echo(f"submitted job {job_id}: {' '.join(args)}", err=True)
    if not wait:
        typer.echo(f"follow it with: ray job logs --follow {job_id}", err=True)
        return
    from lstm_dist.jobs import client, follow

    try:
        final = follow(client(address), job_id)
    except KeyboardInterrupt:
        typer.echo(f"\ndetached; job {job_id} keeps running (ray job stop {job_id} to stop it)", err=True)
        raise typer.Exit(130) from None
    typer.echo(f"job {job_id} {final}", err=True)
    raise typer.Exit(EXIT_CODES.get(final, 1))


def _warn_relative_work_dir(args: list[str]) -> None:
    """A relative work_dir lands in the job's temporary working dir on the cluster: the cache is lost."""
    if len(args) < 2 or args[0] not in ("run", "retrain") or not args[1].endswith((".yaml", ".yml")):
        return
    try:
        cfg = load_config(args[1], [a for a in args[2:] if "=" in a and not a.startswith("-")])
    except ConfigError:
        return  # the config may exist only where the job runs; the job reports its own errors
    work_dir = cfg.workflow.work_dir
    if "://" not in work_dir and not Path(work_dir).is_absolute():
        typer.secho(
            f"warning: workflow.work_dir '{work_dir}' is relative: on the cluster it lives in the job's temporary "
            "working dir, so cached steps, checkpoints and a sqlite MLflow store are lost when the job ends. "
            "Set an absolute shared path (NFS) or a URI, e.g. workflow.work_dir=/mnt/shared/lstm_dist.",
            fg=typer.colors.YELLOW,
            err=True,
        )


@app.command(context_settings={"allow_interspersed_args": False})
def schedule(
    args: Annotated[list[str], typer.Argument(help="The lstm-dist command to run, e.g. retrain conf/x.yaml.")],
    cron: Annotated[str, typer.Option(help="Cron expression, e.g. '0 3 * * *' (a 6th field gives seconds).")],
    timezone: Annotated[
        str | None,
        typer.Option(
            "--timezone",
            help="IANA time zone the cron expression is read in, e.g. Europe/Berlin or UTC "
            "(default: this machine's zone).",
        ),
    ] = None,
    address: Annotated[str | None, typer.Option(help="Ray dashboard address (as for submit).")] = None,
    working_dir: Annotated[
        Path | None,
        typer.Option(help="Directory uploaded as each job's working dir (default: as for submit)."),
    ] = None,
    history: Annotated[
        Path | None, typer.Option(help="History file (JSON lines); default <work_dir>/schedule-<name>.jsonl.")
    ] = None,
    name: Annotated[str, typer.Option(help="Schedule name: jobs are tagged with it; one runs at a time.")] = "retrain",
    max_retries: Annotated[int, typer.Option(help="Retries of a failed job.")] = 2,
    backoff: Annotated[float, typer.Option(help="Seconds before the first retry; doubles each time.")] = 60.0,
    poll: Annotated[float, typer.Option(help="Seconds between status checks of a running job.")] = 5.0,
    max_ticks: Annotated[int | None, typer.Option(help="Stop after this many ticks (default: run forever).")] = None,
) -> None:
    """Submit a command (the retrain pipeline) as Ray jobs on a cron schedule; never two at once.

    The cron fields are wall-clock time in --timezone (default: this machine's zone, daylight-saving aware);
    logged times carry their UTC offset. A tick while a job of this schedule runs is skipped and logged; a
    failed job is retried with backoff; every tick and outcome goes to the history file.
    """
    from lstm_dist.jobs import RayJobRunner
    from lstm_dist.schedule import ScheduleError, Scheduler

    if history is None:
        base = Path(".")
        if len(args) >= 2 and args[1].endswith((".yaml", ".yml")):
            base = Path(
                _load(Path(args[1]), [a for a in args[2:] if "=" in a and not a.startswith("-")]).workflow.work_dir
            )
        history = base / f"schedule-{name}.jsonl"
    _warn_relative_work_dir(args)
    try:
        scheduler = Scheduler(
            cron=cron,
            args=list(args),
            runner=RayJobRunner(address, working_dir=working_dir),
            history=history,
            name=name,
            max_retries=max_retries,
            backoff_s=backoff,
            poll_s=poll,
            progress=typer.echo,
            timezone=timezone,
        )
    except ScheduleError as exc:
        _fail(f"error: {error_text(exc)}")
    typer.echo(f"history: {history}")
    try:
        scheduler.run(max_ticks=max_ticks)
    except KeyboardInterrupt:
        typer.echo("\nschedule stopped; a job already submitted keeps running", err=True)


@app.command()
def predict(
    model: Annotated[str, typer.Option(help="Registered model: models:/<name>@<alias> or models:/<name>/<version>.")],
    input: Annotated[str, typer.Option("--input", help="Raw history: CSV/Parquet file, directory, glob or URI.")],
    output: Annotated[str, typer.Option(help="Parquet file to write (path or URI).")],
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow store (default: $MLFLOW_TRACKING_URI, else the --config's).")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="Config to take the tracking URI and Ray address from.")] = None,
    num_tasks: Annotated[
        int, typer.Option(help="Ray tasks (series groups); implies --ray. 0 = the cluster's CPU count.")
    ] = 0,
    use_ray: Annotated[
        bool,
        typer.Option(
            "--ray", help="Spread the series over Ray tasks even when they fit this process (more than 1000 do)."
        ),
    ] = False,
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", help="Forecast from this cutoff (a timestamp): rows after it are not input."),
    ] = None,
    future: Annotated[
        str | None,
        typer.Option(help="Known-future columns over the horizon (CSV/Parquet: series, timestamp, future cols)."),
    ] = None,
    overrides: OverridesArg = None,
) -> None:
    """Batch forecasts of every series in the input, with the model version in the file. The model is checked
    first; a small input is forecast in this process, a large one (or --ray) over Ray tasks.

    `key=value` overrides apply to --config, as for `run` (e.g. workflow.work_dir=runs/x for that run's store)."""
    from lstm_dist.cluster import init_ray
    from lstm_dist.predict import PredictError
    from lstm_dist.predict import predict as batch_predict
    from lstm_dist.tracking import route_mlflow_logs, store_uri

    if overrides and config is None:
        _fail(f"predict: the overrides {overrides} need --config CONFIG (they change that config)")
    cfg = _load(config, overrides) if config is not None else None
    route_mlflow_logs(cfg.workflow.work_dir if cfg else None)
    uri = store_uri(tracking_uri, cfg)
    if uri is None:
        _fail("predict: give --tracking-uri (e.g. sqlite:///runs/demo/mlflow.db), set MLFLOW_TRACKING_URI, or --config")
    try:
        batch_predict(
            model_uri=model,
            source=input,
            output=output,
            tracking_uri=uri,
            num_tasks=num_tasks,
            as_of=as_of,
            future=future,
            use_ray=use_ray,
            start_ray=lambda: init_ray(cfg),  # only when the series go to Ray tasks, after the model is found
            progress=typer.echo,
        )
    except (PredictError, *_user_errors()) as exc:
        _fail(f"error: {error_text(exc)}", code=1)


def main() -> None:
    """The console script: the command, then `_exit` with its exit code."""
    try:
        app()
        code: object = 0
    except SystemExit as exc:
        code = exc.code
    _exit(code)


def _exit(code: object) -> NoReturn:
    """End the process as Python would, minus the interpreter's teardown of its modules: other threads are
    joined, Ray is shut down (`cluster.stop_ray`), the atexit handlers run (MLflow's pending writes), logging and
    the streams are flushed, then `os._exit`. That teardown took 2.8 s after a pipeline run (torch's and Ray's extension
    modules; benchmarks/RESULTS.md) and does nothing a finished command needs."""
    import atexit
    import logging
    import threading

    from lstm_dist.cluster import stop_ray

    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    if isinstance(code, str):  # sys.exit("message"): printed, status 1, as Python does
        print(code, file=sys.stderr)
    stop_ray()
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing left to write to
            pass
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)


if __name__ == "__main__":
    main()
