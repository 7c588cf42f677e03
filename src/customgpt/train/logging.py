"""What a run reports: a progress bar, ``metrics.jsonl`` (its fields: docs/training.md,
"Metrics and plots"), PNG plots, optional TensorBoard (matplotlib and TensorBoard are
imported only when used).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from customgpt.errors import ConfigError, CustomGPTError
from customgpt.io import atomic_path, atomic_write_text

METRICS_NAME = "metrics.jsonl"


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every record of a run's ``metrics.jsonl`` (a torn last line from a crash is skipped)."""
    path = Path(run_dir) / METRICS_NAME
    if not path.is_file():
        return []
    records = []
    for line in filter(str.strip, path.read_text(encoding="utf-8").splitlines()):
        with contextlib.suppress(json.JSONDecodeError):
            records.append(json.loads(line))
    return records


class MetricsLogger:
    """Appends records to ``run_dir/metrics.jsonl`` (one JSON object per line, flushed as written:
    a killed run keeps everything logged before it died) and, optionally, TensorBoard.

    Args:
        run_dir: the run folder.
        enabled: False on every rank but 0 (all methods become no-ops).
        tensorboard: also write TensorBoard scalars to ``run_dir/tensorboard``.
        resume_step: when resuming from a checkpoint at this step, drop later records first.
    """

    def __init__(
        self, run_dir: str | Path, *, enabled: bool = True, tensorboard: bool = False, resume_step: int | None = None
    ) -> None:
        self.path = Path(run_dir) / METRICS_NAME
        self._fh = None
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if resume_step is not None:
            kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= resume_step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held open for the run
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise ConfigError(
                    "logging.tensorboard: TensorBoard is not installed (pip install tensorboard, "
                    "or pip install 'customgpt[tensorboard]')"
                ) from exc
            self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def log(self, record: dict[str, Any]) -> None:
        """Write one record (must include ``step``)."""
        if self._fh is None:  # disabled, or closed
            return
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        if self._tb is not None:
            step = int(record["step"])
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, step)
                elif key == "sample" and isinstance(value, str):
                    self._tb.add_text("sample", value, step)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class Progress:
    """A tqdm bar over optimizer steps showing loss, LR and tokens/s (tqdm adds the ETA).

    With ``enabled`` False there is no bar, and :meth:`write` prints only when ``echo`` is True
    (rank 0 with the bar turned off; other ranks show nothing at all).
    """

    def __init__(self, total: int, *, initial: int = 0, enabled: bool = True, echo: bool = False,
                 desc: str = "train") -> None:
        self.echo = echo
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)

    def update(self, *, loss: float | None = None, lr: float | None = None,
               tokens_per_s: float | None = None) -> None:
        if self._bar is None:
            return
        values = {"loss": (loss, ".3f"), "lr": (lr, ".2e"), "tok/s": (tokens_per_s, ",.0f")}
        self._bar.set_postfix({k: format(v, f) for k, (v, f) in values.items() if v is not None}, refresh=False)
        self._bar.update()

    def write(self, text: str) -> None:
        """Print a line without breaking the bar (a plain print when there is no bar and ``echo``)."""
        if self._bar is not None:
            self._bar.write(text)
        elif self.echo:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class Throughput:
    """Tokens per second over the steps since the last call (wall clock)."""

    def __init__(self) -> None:
        self._last = time.perf_counter()

    def rate(self, tokens: int) -> float:
        now = time.perf_counter()
        elapsed, self._last = now - self._last, now
        return tokens / elapsed if elapsed > 0 else math.inf


# --------------------------------------------------------------------------- plots


def metric_series(records: Iterable[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the records whose ``key`` holds a finite number, for :func:`line_figure`."""
    xs, ys = [], []
    for r in records:
        value = r.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            xs.append(r["step"])
            ys.append(value)
    return xs, ys


def line_figure(path: Path, lines: Sequence[tuple[str, Sequence[float], Sequence[float], str]], *, xlabel: str,
                ylabel: str, title: str | None = None, figsize: tuple[float, float] = (7, 4.5), dpi: int = 110) -> Path:
    """Draw ``lines`` (label, xs, ys, matplotlib style such as ``"o-"``; empty ones skipped) on one
    set of axes and write it to ``path`` as a PNG, atomically; the legend appears with two or
    more lines. Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only; works without a display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize)
    drawn = [(label, xs, ys, style) for label, xs, ys, style in lines if len(xs)]
    for label, xs, ys, style in drawn:
        ax.plot(xs, ys, style, label=label, markersize=3, linewidth=1.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(drawn) > 1:
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return path


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Draw ``loss.png`` (train and validation loss by step) and ``lr.png`` from ``metrics.jsonl``.

    Returns the files written (into ``out_dir``, default the run folder).
    """
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    if not records:
        raise CustomGPTError(f"no metrics to plot: {run_dir / METRICS_NAME} is missing or empty")
    out = Path(out_dir) if out_dir is not None else run_dir
    out.mkdir(parents=True, exist_ok=True)
    written = [line_figure(out / "loss.png", [("train", *metric_series(records, "loss"), "-"),
                                              ("validation", *metric_series(records, "val_loss"), "o-")],
                           xlabel="optimizer step", ylabel="cross-entropy loss", title=f"loss: {run_dir.name}")]
    xs, ys = metric_series(records, "lr")
    if xs:
        written.append(line_figure(out / "lr.png", [("learning rate", xs, ys, "-")], xlabel="optimizer step",
                                   ylabel="learning rate", title=f"learning rate: {run_dir.name}", figsize=(7, 3.5)))
    return written

