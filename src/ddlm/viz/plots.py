"""Plots with matplotlib (the ``plot`` extra): training curves of runs, and the sampling benchmark's trade-off."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ddlm.errors import DDLMError
from ddlm.fileio import atomic_path
from ddlm.training.logger import LOG_FILE

FIGURE_FORMATS = (".png", ".svg", ".pdf")


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed), or a one-line error naming the extra."""
    try:
        import matplotlib
    except ImportError:
        raise DDLMError("plots need matplotlib: pip install 'ddlm[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_log(run: str | Path) -> dict[str, list[tuple[float, float, float]]]:
    """From a run's log.csv: (step, seconds, value) points of the training and validation NELBO."""
    path = Path(run) / LOG_FILE
    if not path.is_file():
        raise DDLMError(f"no {LOG_FILE} in {run}; pass the --out folder of a `ddlm train` run")
    curves: dict[str, list[tuple[float, float, float]]] = {"train_nelbo": [], "valid_nelbo": []}
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            for name, points in curves.items():
                value = number(row.get(name))
                step, seconds = number(row.get("step")), number(row.get("elapsed_s"))
                if not math.isnan(value) and not math.isnan(step):
                    points.append((step, seconds, value))
    if not curves["train_nelbo"] and not curves["valid_nelbo"]:
        raise DDLMError(f"{path} holds no logged losses yet; plot it after the first logging interval")
    return curves


def number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def check_figure_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() not in FIGURE_FORMATS:
        raise DDLMError(f"cannot write {path.name}: figures are {', '.join(FIGURE_FORMATS)} files")
    return path


def save_figure(figure, path: str | Path) -> None:
    path = check_figure_path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=path.suffix.lstrip(".").lower(), dpi=120, bbox_inches="tight")


def plot_runs(runs: Sequence[str | Path], out: str | Path) -> None:
    """Training loss and validation NELBO of each run against steps and against time, runs overlaid."""
    check_figure_path(out)
    logs = {str(run): read_log(run) for run in runs}
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator, StrMethodFormatter

    figure, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharey="row")
    for name, curves in logs.items():
        for row, (metric, label) in enumerate([("train_nelbo", "training loss"), ("valid_nelbo", "validation NELBO")]):
            points = curves[metric]
            style = {"marker": "o", "markersize": 3} if metric == "valid_nelbo" else {"linewidth": 1}
            axes[row][0].plot([p[0] for p in points], [p[2] for p in points], label=name, **style)
            axes[row][1].plot([p[1] / 60 for p in points], [p[2] for p in points], label=name, **style)
            axes[row][0].set_ylabel(f"{label} (nats/token)")
    for column, xlabel in enumerate(["optimizer step", "training time (minutes)"]):
        axes[1][column].set_xlabel(xlabel)
    for axis in axes.flat:
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))  # step labels of 5 digits must not touch
        axis.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    axes[0][0].legend(fontsize="small")
    figure.suptitle("ddlm training curves")
    save_figure(figure, out)
    plt.close(figure)


def plot_tradeoff(points: Sequence[dict[str, Any]], out: str | Path, baseline_entropy: float | None = None) -> None:
    """The sampling frontier: judge NLL against model calls and, where the points have ``seconds``, against
    wall time; one numbered point per sampler (label, calls, nll, entropy; optional seconds and
    precision, drawn as the marker), keyed on the right. Samplers on the same point share one annotation.
    """
    check_figure_path(out)
    plt = pyplot()
    axes_of = [("calls", "model calls per batch (log scale)")]
    if all("seconds" in point for point in points):
        axes_of.append(("seconds", "seconds per batch (log scale)"))
    figure, axes = plt.subplots(1, len(axes_of), figsize=(8 + 5 * len(axes_of), 6), squeeze=False)
    markers = {"fp32": "s", "bf16": "o"}
    for axis, (key, label) in zip(axes[0], axes_of):
        numbers: dict[tuple[float, float], list[str]] = {}
        for number, point in enumerate(points, start=1):
            legend = f"{number}. {point['label']} (entropy {point['entropy']:.2f})"
            axis.scatter(point[key], point["nll"], s=30, marker=markers.get(point.get("precision"), "o"),
                         color=f"C{(number - 1) % 10}", label=legend)
            numbers.setdefault((point[key], point["nll"]), []).append(str(number))
        for (x, nll), labels in numbers.items():
            axis.annotate(", ".join(labels), (x, nll), textcoords="offset points", xytext=(5, 4), fontsize=8)
        axis.set_xscale("log")
        axis.set_xlabel(label)
        axis.set_ylabel("judge NLL (nats/token, lower is better)")
        axis.grid(alpha=0.3)
    title = "sampling trade-off: cost against sample quality"
    if baseline_entropy is not None:
        title += f" (entropy of the baseline: {baseline_entropy:.2f} nats)"
    figure.suptitle(title)
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize="small", frameon=False)
    save_figure(figure, out)
    plt.close(figure)
