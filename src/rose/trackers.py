"""Experiment trackers (`report_to`): training losses and learning rates, stage timings and final
metrics, sent to TensorBoard, Weights & Biases, MLflow or Trackio.

Each tracker is an optional package, imported only when a run asks for it; `check_available`
names a missing one when the config is read. Every value is logged under a series name
(`warmup`, `finetune`, `stage_seconds`, `eval`) with that series' own step, so the warm-up's and
the fine-tune's step counts never collide in a tracker that wants one increasing step per run.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}
PROJECT = "rose"


def check_available(name: str, value: Any) -> None:
    """A known tracker whose package is installed (checked without importing it)."""
    if value not in PACKAGES:
        raise ConfigError(f"{name}: unknown tracker {value!r}; known: {', '.join(PACKAGES)}")
    if importlib.util.find_spec(PACKAGES[value]) is None:
        raise ConfigError(f"{name}: {value} needs the package '{PACKAGES[value]}', which is not installed "
                          f"(pip install {PACKAGES[value]}, or the extra rose-select[{value}])")


class _TensorBoard:
    def __init__(self, run_dir: Path, name: str, config: dict) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, series: str, values: Mapping[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(f"{series}/{key}", value, step)

    def close(self) -> None:
        self.writer.close()


class _Wandb:
    def __init__(self, run_dir: Path, name: str, config: dict) -> None:
        import wandb

        self.wandb, self.series = wandb, set()
        self.run = wandb.init(project=PROJECT, name=name, config=config, dir=str(run_dir))

    def log(self, series: str, values: Mapping[str, float], step: int) -> None:
        if series not in self.series:  # each series is plotted against its own step
            self.run.define_metric(f"{series}/step")
            self.run.define_metric(f"{series}/*", step_metric=f"{series}/step")
            self.series.add(series)
        self.run.log({f"{series}/{k}": v for k, v in values.items()} | {f"{series}/step": step})

    def close(self) -> None:
        self.run.finish()


class _MLflow:
    def __init__(self, run_dir: Path, name: str, config: dict) -> None:
        import mlflow

        self.mlflow = mlflow
        mlflow.set_experiment(PROJECT)
        self.run = mlflow.start_run(run_name=name)
        mlflow.log_dict(config, "config.json")

    def log(self, series: str, values: Mapping[str, float], step: int) -> None:
        self.mlflow.log_metrics({f"{series}/{k}": v for k, v in values.items()}, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


class _Trackio:
    def __init__(self, run_dir: Path, name: str, config: dict) -> None:
        import trackio

        self.trackio = trackio
        trackio.init(project=PROJECT, name=name, config=config)

    def log(self, series: str, values: Mapping[str, float], step: int) -> None:
        self.trackio.log({f"{series}/{k}": v for k, v in values.items()} | {f"{series}/step": step})

    def close(self) -> None:
        self.trackio.finish()


BACKENDS = {"tensorboard": _TensorBoard, "wandb": _Wandb, "mlflow": _MLflow, "trackio": _Trackio}


class Trackers:
    """The run's trackers (none by default): `log(series, {name: value}, step)`, then `close()`."""

    def __init__(self, names: Sequence[str] = (), run_dir: Path | None = None, config: dict | None = None) -> None:
        name = Path(run_dir).name if run_dir is not None else PROJECT
        self.backends = [BACKENDS[n](Path(run_dir or "."), name, config or {}) for n in names]

    def log(self, series: str, values: Mapping[str, float], step: int = 0) -> None:
        for backend in self.backends:
            backend.log(series, values, step)

    def log_steps(self, series: str, first_step: int, losses: Sequence[float], lrs: Sequence[float]) -> None:
        """One training epoch's per-step losses and learning rates, from global step `first_step`."""
        for i, (loss, lr) in enumerate(zip(losses, lrs, strict=True)):
            self.log(series, {"loss": loss, "lr": lr}, first_step + i)

    def close(self) -> None:
        for backend in self.backends:
            backend.close()
