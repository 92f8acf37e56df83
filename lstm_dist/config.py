"""Typed pipeline configuration: YAML in conf/ plus dotted command-line overrides.

One pydantic model per stage (data, model, train, tune, tracking, workflow), composed
into `PipelineConfig`. Every field carries a one-line description; unknown keys and bad
values raise `ConfigError` naming the key, the bad value, what is allowed, and a
"did you mean" for near misses.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import zoneinfo
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A user mistake in a config file or override; the message says how to fix it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


class SampleDataConfig(_Section):
    num_series: int = Field(20, ge=1)
    """Number of synthetic series to generate."""
    num_steps: int = Field(2000, ge=10)
    """Hourly steps per series."""
    seed: int = 0
    """Seed of the generator; the same seed gives the same file."""


class DataConfig(_Section):
    path: str | None = None
    """Input CSV/Parquet file, directory or glob (local path or pyarrow.fs URI). Unset: use `sample`."""
    sample: SampleDataConfig | None = None
    """Generate the bundled synthetic data set (written under work_dir) when `path` is unset."""
    format: Literal["auto", "csv", "parquet"] = "auto"
    """Input file format; `auto` decides by file extension."""
    layout: Literal["long", "wide"] = "long"
    """`long`: one row per (series, timestamp); `wide`: one column per series."""
    timestamp_col: str = "timestamp"
    """Name of the timestamp column in the input."""
    series_col: str = "series_id"
    """Name of the series identifier column (long layout)."""
    target_cols: list[str] = Field(default_factory=lambda: ["target"], min_length=1)
    """Target column(s) to forecast."""
    covariate_cols: list[str] = Field(default_factory=list)
    """Past-only covariates: known up to the forecast time, not after."""
    future_cols: list[str] = Field(default_factory=list)
    """Known-future covariates (planned events, prices set in advance), fed to the head."""
    freq: str | None = None
    """Sampling frequency, a pandas offset alias: `15min`, `h`, `D`, `B`, `W-SUN`, `MS`/`ME`, `QS`/`QE`, `YS`/`YE`; unset: inferred."""
    lookback: int = Field(168, ge=1)
    """Input window length in steps."""
    horizon: int = Field(24, ge=1)
    """Forecast horizon in steps."""
    stride: int = Field(1, ge=1)
    """Step between consecutive training windows."""
    val_size: float = Field(0.1, gt=0)
    """Validation part at the end of each series' history: a fraction (<1) or a number of steps."""
    test_size: float = Field(0.1, gt=0)
    """Test (hold-out) tail of each series: a fraction (<1) or a number of steps."""
    scaler: Literal["standard", "minmax", "robust", "none"] = "standard"
    """Scaler for targets and covariates, fitted on the train part only."""
    scaler_scope: Literal["series", "global"] = "series"
    """Fit one scaler per series or one for all series."""
    calendar_features: list[Literal["hour", "weekday", "daytype", "month", "dayofyear", "holiday"]] = Field(
        default_factory=list
    )
    """Calendar features, known in the future: sine/cosine pairs; `daytype`: the weekday, with a public holiday of data.holidays counted as a Sunday (as load forecasting does); `holiday`: days since and until a public holiday of data.holidays."""
    holidays: str = ""
    """Public holiday calendar of the `holiday` and `daytype` features: a country code and optional subdivision (python-holidays), e.g. AU-VIC, US-CA, GB, DE-BY."""
    duplicates: Literal["error", "keep_last", "mean"] = "error"
    """What to do with duplicate (series, timestamp) rows."""
    missing: Literal["error", "ffill", "interpolate", "zero", "drop"] = "error"
    """What to do with missing (null/NaN) values."""
    short_series: Literal["error", "skip"] = "error"
    """What to do with a series too short for lookback + horizon + hold-out."""
    rows_per_shard: int = Field(0, ge=0)
    """Rows per Arrow shard (before the halo); 0 = derive it from shard_size_mib."""
    num_read_tasks: int = Field(0, ge=0)
    """Ray tasks used to read and process the input; 0 = one per file, at most the CPU count."""
    seasonality: int | list[int] | None = None
    """Season length(s) in steps, e.g. 24 or [48, 336]; the first is the seasonal-naive baseline's. None: by data.freq (12 monthly, 24 hourly, ...)."""
    gaps: Literal["error", "ffill", "interpolate", "zero"] = "error"
    """Missing steps in the `freq` grid: error, or insert them and fill by ffill / linear interpolation / zero."""
    wide_series_cols: list[str] = Field(default_factory=list)
    """layout=wide: the columns holding one series each; empty = every column not named elsewhere."""
    lags: list[int] = Field(default_factory=list)
    """Lags of each target (in steps) added as past-only features, e.g. [24, 168]."""
    moving_averages: list[int] = Field(default_factory=list)
    """Trailing moving-average windows of each target (in steps) added as past-only features."""
    rsi_period: int = Field(0, ge=0)
    """RSI of each target over this many steps as a past-only feature; 0 disables it."""
    shard_size_mib: float = Field(64, gt=0)
    """Target shard file size in MiB (used unless rows_per_shard is set)."""
    batch_locality: Literal["global", "shard"] = "global"
    """Training batches drawn from all windows (`global`) or each from one shard (`shard`: faster reads, fewer series mixed)."""
    series_weights: dict[str, float] = Field(default_factory=dict)
    """Sampling weight per series name for training windows (others weigh 1); empty = uniform."""
    start_padding: bool = True
    """A series too short for lookback + horizon + hold-out but with >= horizon + 1 rows is left-padded (mask feature `is_pad`) and trains; short_series applies below that."""
    timezone: str = "UTC"
    """IANA timezone of calendar features and calendar steps (days, months); naive input timestamps are read as local time in it."""
    target_transform: Literal["none", "log1p", "boxcox"] = "none"
    """Transform of the targets before scaling: log1p (needs >= 0) or Box-Cox with a per-series lambda (needs > 0)."""
    static_cols: list[str] = Field(default_factory=list)
    """Columns constant per series (text: one-hot; numbers: standardised), fed to the model's head (long layout)."""
    nonfinite: Literal["error", "drop", "fill"] = "error"
    """Infinite target/covariate values (`inf`, or a number beyond float64 such as 1e400): error, drop the row, or fill as data.missing says."""

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.path is None and self.sample is None:
            raise ValueError("set data.path (your CSV/Parquet input) or data.sample (generated demo data)")
        overlap = set(self.target_cols) & (set(self.covariate_cols) | set(self.future_cols))
        if overlap:
            raise ValueError(f"column(s) {sorted(overlap)} are both targets and covariates; list each once")
        seasons = [self.seasonality] if isinstance(self.seasonality, int) else self.seasonality
        if seasons is not None and (not seasons or min(seasons) < 1):
            raise ValueError(f"data.seasonality must be a positive step count or a list of them, got {seasons}")
        if self.timezone != "UTC":
            try:
                zoneinfo.ZoneInfo(self.timezone)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                raise ValueError(
                    f"data.timezone = '{self.timezone}' is not an IANA timezone name (e.g. UTC, Europe/Berlin)"
                ) from None
        roles = {*self.target_cols, *self.covariate_cols, *self.future_cols, self.series_col, self.timestamp_col}
        if set(self.static_cols) & roles:
            raise ValueError(f"data.static_cols {sorted(set(self.static_cols) & roles)} already have another role")
        if self.nonfinite == "fill" and self.missing == "error":
            raise ValueError(
                "data.nonfinite=fill fills infinite values by data.missing's method; set data.missing to ffill, "
                "interpolate, zero or drop"
            )
        if self.static_cols and self.layout == "wide":
            raise ValueError(
                "data.static_cols needs layout=long (a wide file has no per-series rows to read them from)"
            )
        _check_holidays(self.holidays, wanted=bool({"holiday", "daytype"} & set(self.calendar_features)))
        return self


def _check_holidays(spec: str, *, wanted: bool) -> None:
    """data.holidays names a calendar python-holidays knows, and is set exactly when `holiday` or `daytype` is on."""
    if wanted != bool(spec):
        raise ValueError(
            "the calendar features 'holiday' and 'daytype' need data.holidays (e.g. data.holidays=AU-VIC)"
            if wanted
            else f"data.holidays={spec} is used by the calendar features 'holiday' and 'daytype'; add one to "
            "data.calendar_features"
        )
    if not spec:
        return
    import holidays

    country, _, subdiv = spec.partition("-")
    known = holidays.list_supported_countries()
    if country not in known:
        raise ValueError(
            f"data.holidays={spec}: no holiday calendar for country '{country}'; use an ISO code: AU, US, GB, DE, ..."
        )
    if subdiv and subdiv not in known[country]:
        raise ValueError(
            f"data.holidays={spec}: {country} has no subdivision '{subdiv}'; choose from {', '.join(known[country])}"
        )


class ModelConfig(_Section):
    cell: Literal["lstm", "gru", "rnn"] = "lstm"
    """Recurrent cell: cuDNN LSTM, GRU, or a plain tanh RNN baseline."""
    hidden_size: int = Field(64, ge=1)
    """Hidden units per recurrent layer."""
    num_layers: int = Field(1, ge=1)
    """Stacked recurrent layers."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout between stacked layers and before the head."""
    bidirectional: bool = False
    """Bidirectional encoder over the lookback window."""
    layer_norm: bool = False
    """Layer norm on the encoder outputs."""
    residual: bool = False
    """Residual connections between stacked layers."""
    readout: Literal["last", "attention"] = "last"
    """Summary of the encoder: its last state, or attention pooling over all steps."""
    head: Literal["direct", "recursive"] = "direct"
    """`direct`: all horizon steps at once; `recursive`: one step, fed back at inference."""
    loss: Literal["mse", "mae", "huber", "quantile", "gaussian"] = "mse"
    """Training loss; `quantile` and `gaussian` give prediction intervals."""
    quantiles: list[float] = Field(default_factory=lambda: [0.1, 0.5, 0.9])
    """Quantiles predicted with loss=quantile (must include 0.5)."""
    series_embedding_dim: int = Field(0, ge=0)
    """Size of a learned per-series embedding fed to the head; 0 disables it."""
    segment: int = Field(1, ge=1)
    """Segment-wise recurrence (SegRNN, Lin et al. 2023): the encoder reads the lookback k steps at a time, each step's
    input the k steps' features side by side, so it runs lookback / k recurrent steps instead of lookback (e.g. 24 on
    hourly data: a day per step). data.lookback must be a multiple of it; 1 = one step at a time."""
    tbptt_chunk: int = Field(0, ge=0)
    """Truncated BPTT: process the lookback in chunks of k encoder steps (segments with model.segment), detaching state between them; 0 = full BPTT."""
    window_norm: Literal["none", "last", "mean", "revin", "diff"] = "mean"
    """Per-window level (last value / mean) and spread of the targets; `revin`: + learnt affine; `diff`: first differences."""
    window_prior_steps: float = Field(1.0, ge=0)
    """Window norm: steps of the series' own spread (1 in the scaler's units) added to each window's spread estimate,
    so the starts of short, padded series are not divided by ~0; 0 = the window's own spread (exactly scale-equivariant)."""
    window_level_steps: int = Field(0, ge=0)
    """Window norm `mean`/`revin`: the level is the mean of the window's last k steps (e.g. 24 on hourly data: the last day), not of the whole window, so a level shift inside the window (a holiday lull) carries into the forecast; the spread stays the whole window's; 0 = the whole window."""
    skip_season: int = Field(0, ge=0)
    """A seasonal-naive skip: the network forecasts the change from the value this many steps earlier (the last such value in the window, repeated past one season), e.g. 24 for hourly data; 0 = off. Needs data.lookback >= it and the direct head."""
    members: int = Field(1, ge=1)
    """A deep ensemble: this many networks of this config from different initial weights, each trained on its own loss over the same batches; the forecast is their mean. Costs that many times the training time; 1 = one network."""
    future_effect: Literal["joint", "additive"] = "joint"
    """How the direct head uses each step's known-future inputs (future covariates, calendar features): `joint`, in one MLP with the window's summary (their effects can interact); `additive`, in an MLP of their own whose output is added, so a holiday's effect holds whatever the window held (a GAM's or Prophet's assumption). Needs the direct head."""

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.skip_season and (self.head != "direct" or self.window_norm == "diff"):
            raise ValueError(
                "model.skip_season adds the value one season back to the direct head's level forecasts: set "
                "model.head=direct and a model.window_norm other than diff, or model.skip_season=0"
            )
        if self.future_effect == "additive" and self.head != "direct":
            raise ValueError(
                "model.future_effect=additive adds a term to each step of the direct head: set model.head=direct "
                "or model.future_effect=joint"
            )
        if self.window_level_steps and self.window_norm not in ("mean", "revin"):
            raise ValueError(
                f"model.window_level_steps={self.window_level_steps} sets the level of window_norm mean or revin, "
                f"not {self.window_norm}: set model.window_norm=mean or model.window_level_steps=0"
            )
        if self.loss == "quantile" and 0.5 not in self.quantiles:
            raise ValueError("model.quantiles must include 0.5 (the point forecast) when model.loss is quantile")
        if any(not 0 < q < 1 for q in self.quantiles):
            raise ValueError(f"model.quantiles must lie strictly between 0 and 1, got {self.quantiles}")
        return self


def _from_bool(value: Any, true: str, false: str) -> Any:
    """A switch's word for a YAML boolean (YAML reads an unquoted yes/no/true/false as one); other values as given."""
    return (true if value else false) if isinstance(value, bool) else value


class TrainConfig(_Section):
    backend: Literal["ray", "local", "auto"] = "ray"
    """`ray`: Ray Train workers (DDP over num_workers, restarts, checkpoints on any node); `local`: one worker in the driver's process, no Ray Train start-up (small runs; needs num_workers=1); tune trials with tune.workers_per_trial=1 then train in their own Tune process; `auto`: `ray` on a Ray cluster or a machine with 2+ GPUs, else `local` with the CPUs of all num_workers."""
    num_workers: int = Field(2, ge=1)
    """Ray Train workers (DDP ranks)."""
    use_gpu: Literal["auto", "yes", "no"] = "auto"
    """Put workers on GPUs: `auto` uses them when the cluster has any."""
    cpus_per_worker: float = Field(1.0, gt=0)
    """Logical CPUs reserved per worker."""
    gpus_per_worker: float = Field(1.0, gt=0, le=1)
    """GPUs reserved per worker on GPU; a fraction lets a 1-worker run share a GPU (NCCL needs a GPU per rank)."""
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    """`auto`: fp16 autocast + GradScaler on CUDA, fp32 on CPU. fp16 on CPU is refused, and bf16 on a CPU without bf16 kernels for the cell (AVX-512 BF16 / AMX)."""
    epochs: int = Field(10, ge=1)
    """Maximum number of epochs."""
    batch_size: int = Field(256, ge=1)
    """Global batch size of one micro-batch, split evenly over workers; a step sees batch_size x grad_accum windows."""
    max_steps_per_epoch: int = Field(0, ge=0)
    """Cap on optimizer steps per epoch (0 = a full pass over the train windows)."""
    lr: float = Field(3e-3, gt=0)
    """Peak learning rate of AdamW."""
    weight_decay: float = Field(1e-4, ge=0)
    """AdamW weight decay."""
    warmup_frac: float = Field(0.05, ge=0, lt=1)
    """Fraction of all steps spent in linear warm-up before the cosine decay."""
    grad_clip: float = Field(1.0, ge=0)
    """Clip gradients to this global L2 norm (0 disables)."""
    grad_accum: int = Field(1, ge=1)
    """Micro-batches accumulated per optimizer step (gradients sync once per step, on the last one)."""
    patience: int = Field(5, ge=0)
    """Early stopping: epochs without validation improvement before stopping (0 disables)."""
    min_delta: float = Field(0.0, ge=0)
    """Early stopping: minimum decrease of validation loss that counts as improvement."""
    ema_decay: float = Field(0.0, ge=0, lt=1)
    """Polyak averaging: validation, early stopping, checkpoints and the registered model use an exponential moving average of the weights with this decay per step, while the optimizer steps the raw weights. 0 disables; 0.99 averages over about the last 100 steps. It steadies the validation loss that picks the epoch (benchmarks/RESULTS.md)."""
    seed: int = 0
    """Seed for weights, sampling and dropout; same seed and config give the same loss on CPU."""
    keep_checkpoints: int = Field(2, ge=1)
    """Best checkpoints (by validation loss) kept on disk; the latest is kept as well, for resuming."""
    max_failures: int = Field(2, ge=0)
    """Worker-group restarts from the latest checkpoint after a worker dies."""
    max_val_windows: int = Field(0, ge=0)
    """Cap on validation windows evaluated per epoch (0 = all)."""
    final_fit: Literal["refit", "continue", "off"] = "refit"
    """Before registering, train on every row up to the end of each series and register that model (its held-out scores are the evaluated model's). `refit` (or true): from fresh weights for the held-out run's best epoch count; `continue`: from the evaluated weights, for final_fit_epochs of that count at final_fit_lr x lr (a fraction of the time; on PBS as good, on yearly GDP worse: benchmarks/RESULTS.md); `off` (or false): register the evaluated model."""
    final_fit_epochs: float = Field(0.25, gt=0, le=1)
    """`continue` final fit: its epochs as a fraction of the held-out run's best epoch count (at least 1)."""
    final_fit_lr: float = Field(0.3, gt=0, le=1)
    """`continue` final fit: its peak learning rate as a fraction of lr."""

    @field_validator("use_gpu", mode="before")
    @classmethod
    def _yes_no(cls, value: Any) -> Any:
        """YAML reads an unquoted `no` / `yes` (`train.use_gpu=no`) as a boolean."""
        return _from_bool(value, "yes", "no")

    @field_validator("final_fit", mode="before")
    @classmethod
    def _final_fit_bool(cls, value: Any) -> Any:
        """The switch was a boolean: `true` keeps its meaning (a refit from fresh weights), `false` is `off`."""
        return _from_bool(value, "refit", "off")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.backend == "local" and self.num_workers != 1:
            raise ValueError(
                f"train.backend=local trains one worker in this process, but train.num_workers={self.num_workers}; "
                "set train.num_workers=1, or train.backend=ray for DDP"
            )
        return self


class TuneConfig(_Section):
    enabled: bool = False
    """Run a Ray Tune search before the final training."""
    num_samples: int = Field(8, ge=1)
    """Number of trials."""
    scheduler: Literal["asha", "none"] = "asha"
    """Trial scheduler: ASHA early-stops weak trials."""
    search: Literal["random", "optuna"] = "random"
    """Search algorithm; `optuna` (TPE) needs the optional `optuna` extra."""
    max_concurrent_trials: int = Field(0, ge=0)
    """Trials run at once (0 = as many as resources allow)."""
    time_budget_s: float = Field(0, ge=0)
    """Stop the search after this many seconds (0 = no limit)."""
    grace_period: int = Field(1, ge=1)
    """ASHA: epochs every trial runs before it may be stopped."""
    reduction_factor: int = Field(2, ge=2)
    """ASHA: fraction of trials kept at each rung is 1/reduction_factor."""
    workers_per_trial: int = Field(1, ge=1)
    """Ray Train workers inside each trial."""
    space: dict[str, Any] = Field(default_factory=dict)
    """Search space: dotted config key -> {choice|uniform|loguniform|randint|quniform: ...}."""
    start_from: list[dict[str, Any]] = Field(default_factory=list)
    """Configurations tried first (dotted key -> value, keys of `space`), e.g. today's champion; they count in num_samples."""


class TrackingConfig(_Section):
    uri: str | None = None
    """MLflow tracking URI; unset: $MLFLOW_TRACKING_URI, else sqlite:///<work_dir>/mlflow.db."""
    experiment: str = "lstm_dist"
    """MLflow experiment name."""
    model_name: str = "lstm_forecaster"
    """Registered model name."""
    register_model: bool = True
    """Register the final model and set its alias."""
    promotion_metric: Literal["mae", "rmse", "mase", "smape"] = "mae"
    """Test metric compared against the champion (lower is better)."""
    promotion_margin: float = Field(0.0, ge=0)
    """Relative improvement a challenger needs over the champion to be promoted (0.02 = 2%)."""
    system_metrics_interval_s: float = Field(5.0, gt=0)
    """Seconds between samples of MLflow system metrics (CPU, memory, GPU) on the training run."""
    baseline_margin: float = Field(0.0, ge=0)
    """Relative margin by which the model's test MASE must beat the seasonal naive's to be crowned (0.05 = 5%)."""
    allow_below_baseline: bool = False
    """Crown a model even when it does not beat the seasonal naive (`--allow-below-baseline`); it stays tagged."""


class WorkflowConfig(_Section):
    work_dir: str = "runs"
    """Directory for shards, checkpoints, the MLflow store and run records (resolved to absolute), or an
    object store URI (s3://bucket/prefix; steps then stage in a node-local cache, see lstm_dist.workflow)."""
    ray_address: str | None = None
    """Ray cluster address; unset: $RAY_ADDRESS, else a local Ray started for the run."""
    num_cpus: int = Field(0, ge=0)
    """Logical CPUs of a local Ray (0 = the CPUs this process may use, raised to num_workers x cpus_per_worker)."""
    warm_start: bool = False
    """Retrain: start the challenger from the champion's weights (same architecture and data shape) instead of fresh."""


class EvaluateConfig(_Section):
    baseline_history: int = Field(1000, ge=0)
    """Rows of each series' history, up to the forecast origin, that AutoETS and AutoTheta are fitted on (the
    last N; 0 = all). Their fit time grows with the history: a day-ahead fit on 52,000 half-hourly points took
    80 s, on the last 1,000 about 1 s, scoring alike over 14 origins (benchmarks/RESULTS.md)."""


class BacktestConfig(_Section):
    windows: int = Field(3, ge=1)
    """Rolling-origin backtest (`lstm-dist backtest`): number of cutoffs, the last leaving exactly one horizon."""
    step: int = Field(0, ge=0)
    """Steps between consecutive cutoffs; 0 = the horizon (the forecast windows do not overlap)."""
    refit_every: int = Field(1, ge=1)
    """Train a model at every k-th cutoff; the cutoffs between reuse it, forecasting from their own cutoff."""


class PipelineConfig(_Section):
    data: DataConfig
    """Input data, cleaning, windowing, splits and scaling."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """Network architecture."""
    train: TrainConfig = Field(default_factory=TrainConfig)
    """Distributed training."""
    tune: TuneConfig = Field(default_factory=TuneConfig)
    """Hyperparameter search."""
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    """MLflow tracking and registry."""
    workflow: WorkflowConfig = Field(default_factory=WorkflowConfig)
    """Where the pipeline keeps its state and runs."""
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    """Scoring against the statistical baselines (the evaluate step and backtests)."""
    backtest: BacktestConfig = Field(default_factory=BacktestConfig)
    """Rolling-origin backtest (`lstm-dist backtest`)."""

    @model_validator(mode="after")
    def _check_lookback(self) -> PipelineConfig:
        if self.data.lookback % self.model.segment:
            raise ValueError(
                f"model.segment={self.model.segment} must divide data.lookback={self.data.lookback}: set data.lookback "
                f"to a multiple of {self.model.segment} or model.segment=1"
            )
        if self.model.skip_season > self.data.lookback:
            raise ValueError(
                f"model.skip_season={self.model.skip_season} reaches back further than data.lookback="
                f"{self.data.lookback}: raise data.lookback to at least {self.model.skip_season} or lower the season"
            )
        return self

    def tracking_uri(self) -> str:
        """The MLflow tracking URI this config resolves to."""
        if self.tracking.uri:
            return self.tracking.uri
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return os.environ["MLFLOW_TRACKING_URI"]
        if "://" in self.workflow.work_dir:
            raise ConfigError(
                f"tracking.uri: unset, and the default sqlite:///<work_dir>/mlflow.db needs a local work dir, not "
                f"workflow.work_dir={self.workflow.work_dir}; set tracking.uri (or MLFLOW_TRACKING_URI) to an "
                "MLflow server (http://host:5000) or a local sqlite:////path/mlflow.db"
            )
        return f"sqlite:///{Path(self.workflow.work_dir) / 'mlflow.db'}"

    def resolved(self, *, base_dir: Path | None = None) -> PipelineConfig:
        """A copy with every path made absolute (relative ones are taken from `base_dir` or the cwd)."""
        base = Path(base_dir or Path.cwd())
        cfg = self.model_copy(deep=True)
        if "://" not in cfg.workflow.work_dir:
            cfg.workflow.work_dir = str((base / cfg.workflow.work_dir).resolve())
        if cfg.data.path and "://" not in cfg.data.path:
            cfg.data.path = str((base / cfg.data.path).resolve())
        # Pinned now: the run, its Ray jobs and its steps use one store whatever MLFLOW_TRACKING_URI says later.
        cfg.tracking.uri = cfg.tracking_uri()
        return cfg

    def flat(self) -> dict[str, Any]:
        """Dotted-key view of the config, e.g. {'train.epochs': 10}, for MLflow params."""
        return flatten(self.model_dump(mode="json"))

    def summary(self) -> str:
        """A few lines that say what this run will do."""
        d, m, t = self.data, self.model, self.train
        src = d.path or f"sample data ({d.sample.num_series} series x {d.sample.num_steps} steps)"
        extra = "".join(
            f" {key}={value}"
            for key, value, default in [
                ("segment", m.segment, 1),
                ("future_effect", m.future_effect, "joint"),
                ("members", m.members, 1),
            ]
            if value != default
        )
        return (
            f"data: {src}  lookback={d.lookback} horizon={d.horizon} targets={d.target_cols}\n"
            f"model: {m.cell} hidden={m.hidden_size} layers={m.num_layers} readout={m.readout} head={m.head}{extra}\n"
            f"train: backend {t.backend}, {t.num_workers} workers, {t.epochs} epochs, batch {t.batch_size}, lr {t.lr}, "
            f"precision {t.precision}\n"
            f"work_dir: {self.workflow.work_dir}  tracking: {redact_uri(self.tracking_uri())}"
        )


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists and empty dicts stay leaves."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value and key != "space":
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        sub = _section_type(field.annotation)
        if sub is not None:
            keys.extend(_known_keys(sub, prefix + name + "."))
    return keys


def _section_type(annotation: Any) -> type[BaseModel] | None:
    candidates = getattr(annotation, "__args__", None) or (annotation,)
    for c in candidates:
        if isinstance(c, type) and issubclass(c, BaseModel):
            return c
    return None


def _describe(model: type[BaseModel], loc: tuple) -> str:
    """The field's description, for error messages."""
    current: type[BaseModel] | None = model
    field = None
    for part in loc:
        if current is None or not isinstance(part, str) or part not in current.model_fields:
            return ""
        field = current.model_fields[part]
        current = _section_type(field.annotation)
    return (field.description or "") if field else ""


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    known = _known_keys(PipelineConfig)
    for e in err.errors():
        loc = tuple(e["loc"])
        key = ".".join(str(p) for p in loc)
        if e["type"] == "extra_forbidden":
            section, _, leaf = key.rpartition(".")
            siblings = [k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == section]
            near = [
                f"{section}.{n}" if section else n for n in difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.6)
            ]
            near = near or difflib.get_close_matches(key, known, n=1, cutoff=0.7)
            hint = f" Did you mean '{near[0]}'?" if near else ""
            lines.append(f"  - unknown key '{key}'.{hint} Allowed in '{section or 'top level'}': {', '.join(siblings)}")
            continue
        if e["type"] == "missing":
            lines.append(f"  - missing required key '{key}': {_describe(PipelineConfig, loc)}")
            continue
        value = e.get("input")
        shown = json.dumps(value, default=str) if not isinstance(value, dict) else "{...}"
        msg = e["msg"].removeprefix("Value error, ")
        desc = _describe(PipelineConfig, loc)
        where = f"key '{key}'" if key else "config"
        extra = f" ({desc})" if desc else ""
        if key and not isinstance(value, dict):
            lines.append(f"  - {where} = {shown}: {msg}{extra}")
        else:
            lines.append(f"  - {where}: {msg}{extra}")
    return "\n".join(lines)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """['train.epochs=3', 'model.hidden_size=64'] -> nested dict; values are parsed as YAML."""
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. train.epochs=3)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override '{item}': '{key}' is not a dotted key like train.epochs")
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override '{item}': value '{raw}' is not valid YAML ({exc.problem})") from exc
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' conflicts with an earlier override of '{part}'")
        node[parts[-1]] = value
    return tree


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: dicts merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "space":
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def from_dict(tree: dict[str, Any], *, source: str = "config") -> PipelineConfig:
    """Validate a nested dict into a PipelineConfig, with readable errors."""
    try:
        return PipelineConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Load a YAML config file and apply dotted `key=value` overrides."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist (the files in conf/ are examples)")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)  # where the parser gave up (0-based)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"config file '{path}' is not valid YAML{where}: {problem}; fix the syntax there") from exc
    if not isinstance(tree, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of sections (data:, model:, ...)")
    tree = merge(tree, parse_overrides(overrides or []))
    return from_dict(tree, source=str(path))


def dump_yaml(cfg: PipelineConfig) -> str:
    """The config as YAML, as saved with a run and printed (credentials in URIs redacted)."""
    return redact_uri(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


# user:password@ in a URI (http://user:pw@host, postgresql://user:pw@host/db). The password runs to the last '@'
# before the path, as urllib (and so MLflow's client) splits it: it may hold ':' or an unescaped '@'.
_URI_CREDENTIALS = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/:@]*):(?P<secret>[^\s/]+)@")
SECRET_WORDS = ("password", "passwd", "token", "secret", "key")


def redact_uri(text: str) -> str:
    """`text` with the password of every URI in it replaced: http://user:***@host."""
    return _URI_CREDENTIALS.sub(r"\g<head>:***@", str(text))


def is_secret_key(key: str) -> bool:
    """Whether a (dotted) config key names a secret (password, token, secret, key): never logged as a param."""
    words = re.split(r"[._-]", key.rsplit(".", 1)[-1].lower())
    return any(word in SECRET_WORDS or word.endswith(("password", "token", "secret")) for word in words)


VERBOSE_ENV = "LSTM_DIST_VERBOSE"  # set by `lstm-dist -v` / `-vv`; inherited by Ray workers and jobs


def verbosity() -> int:
    """How loud Ray's and MLflow's own logs are on the terminal: 0 errors only, 1 INFO (-v), 2 DEBUG (-vv)."""
    value = os.environ.get(VERBOSE_ENV, "0")
    return int(value) if value.isdigit() else 0


def terminal_log_level(verbose: int | None = None) -> int:
    """The `logging` level of Ray's and MLflow's lines on the terminal: ERROR, INFO with -v, DEBUG with -vv
    (`verbose` defaults to `verbosity()`)."""
    import logging

    verbose = verbosity() if verbose is None else verbose
    return {0: logging.ERROR, 1: logging.INFO}.get(verbose, logging.DEBUG)
