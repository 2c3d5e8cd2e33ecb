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
    """From a run's log.csv: (step, seconds, value) points of the training NELBO, the periodic validation
    estimate, the final validation over the whole set and, in an adaptation run that keeps one, the
    autoregressive loss term (``adapt.ar_loss_weight``)."""
    path = Path(run) / LOG_FILE
    if not path.is_file():
        raise DDLMError(f"no {LOG_FILE} in {run}; pass the --out folder of a `ddlm train` run")
    curves: dict[str, list[tuple[float, float, float]]] = {"train_nelbo": [], "valid_nelbo": [], "final_valid_nelbo": [],
                                                           "train_ar_nll": []}
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            for name, points in curves.items():
                value = number(row.get(name))
                step, seconds = number(row.get("step")), number(row.get("elapsed_s"))
                if not math.isnan(value) and not math.isnan(step):
                    points.append((step, seconds, value))
    if not any(curves.values()):
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


def time_unit(seconds: float) -> tuple[float, str]:
    """(seconds per unit, name) for a time axis reaching ``seconds``: hours, minutes or seconds."""
    for size, name in ((3600.0, "hours"), (60.0, "minutes")):
        if seconds >= 2 * size:
            return size, name
    return 1.0, "seconds"


def sparse_note(run: str, curves: dict[str, list[tuple[float, float, float]]]) -> str | None:
    """One line for a run with a curve of fewer than two points (drawn as dots), else None."""
    sparse = [f"{len(curves[metric])} {label} point{'' if len(curves[metric]) == 1 else 's'}"
              for metric, label in (("train_nelbo", "training"), ("valid_nelbo", "validation")) if len(curves[metric]) < 2]
    if not sparse:
        return None
    return (f"{run} has only {' and '.join(sparse)}, too few for a curve; "
            "train longer or log more often (log.log_every, log.eval_every)")


def plot_runs(runs: Sequence[str | Path], out: str | Path) -> list[str]:
    """Training loss and validation NELBO of each run against steps and against time, runs overlaid.

    Returns a note per run with too few points for a curve (its points are drawn as dots).
    """
    check_figure_path(out)
    logs = {str(run): read_log(run) for run in runs}
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator, StrMethodFormatter

    longest = max((point[1] for curves in logs.values() for points in curves.values() for point in points), default=0)
    unit, unit_name = time_unit(longest)
    figure, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex="col", sharey="row")
    for index, (name, curves) in enumerate(logs.items()):
        color = f"C{index % 10}"
        for row, (metric, label) in enumerate([("train_nelbo", "training loss"), ("valid_nelbo", "validation NELBO")]):
            points = curves[metric]
            dots = metric == "valid_nelbo" or len(points) < 2
            style = {"marker": "o", "markersize": 3} if dots else {"linewidth": 1}
            axes[row][0].plot([p[0] for p in points], [p[2] for p in points], label=name, color=color, **style)
            axes[row][1].plot([p[1] / unit for p in points], [p[2] for p in points], color=color, **style)
            axes[row][0].set_ylabel(f"{label} (nats/token)")
        ar_term = curves["train_ar_nll"]  # an adaptation run's autoregressive term: dashed beside its training loss
        for column, x in enumerate((lambda p: p[0], lambda p: p[1] / unit)):
            axes[0][column].plot([x(p) for p in ar_term], [p[2] for p in ar_term], linestyle="--", linewidth=1,
                                 color=color)
        final = curves["final_valid_nelbo"]  # the whole validation set, once at the end: a star
        for column, x in enumerate((lambda p: p[0], lambda p: p[1] / unit)):
            axes[1][column].plot([x(p) for p in final], [p[2] for p in final], linestyle="none", marker="*",
                                 markersize=9, color=color)
    for column, xlabel in enumerate(["optimizer step", f"training time ({unit_name})"]):
        axes[1][column].set_xlabel(xlabel)
    for axis in axes.flat:
        axis.grid(alpha=0.3)
        axis.set_xlim(left=0)
        axis.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=axis in axes[:, 0]))
    for axis in axes[:, 0]:
        axis.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))  # step labels of 5 digits must not touch
    for row, label in enumerate(["training", "validation"]):
        if not any(curves[metric] for curves in logs.values() for metric in (("train_nelbo",),
                                                                            ("valid_nelbo", "final_valid_nelbo"))[row]):
            for axis in axes[row]:
                axis.text(0.5, 0.5, f"no {label} points logged", transform=axis.transAxes, ha="center", color="gray")
                axis.set_yticks([])
    if any(curves["train_ar_nll"] for curves in logs.values()):
        axes[0][0].plot([], [], linestyle="--", linewidth=1, color="gray", label="autoregressive term (adapt.ar_loss_weight)")
    axes[0][0].legend(fontsize="small")
    if any(curves["final_valid_nelbo"] for curves in logs.values()):
        axes[1][0].plot([], [], linestyle="none", marker="*", markersize=9, color="gray", label="whole validation set, at the end")
        axes[1][0].legend(fontsize="small")
    figure.suptitle("ddlm training curves")
    save_figure(figure, out)
    plt.close(figure)
    return [note for name, curves in logs.items() if (note := sparse_note(name, curves))]


def plot_tradeoff(points: Sequence[dict[str, Any]], out: str | Path, baseline_entropy: float | None = None,
                  tolerance: float = 0.05) -> None:
    """The sampling frontier: judge NLL against model calls and, where the points have ``seconds``, against
    wall time. One numbered point per sampler (label, calls, nll, entropy; optional seconds, and precision drawn as
    the marker), keyed beside the panels; points closer than a label share one. With ``baseline_entropy``, the
    points whose samples' entropy is more than ``tolerance`` below it are drawn in red: less varied text, which
    flatters the judge NLL.
    """
    check_figure_path(out)
    plt = pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.ticker import LogLocator, NullFormatter, StrMethodFormatter

    axes_of = [("calls", "model calls per batch (log scale)")]
    if all("seconds" in point for point in points):
        axes_of.append(("seconds", "seconds per batch (log scale)"))
    figure, axes = plt.subplots(1, len(axes_of), figsize=(2 + 6 * len(axes_of), 6), squeeze=False)
    markers = {"fp32": "s", "bf16": "o"}
    low = [baseline_entropy is not None and point["entropy"] < (1 - tolerance) * baseline_entropy for point in points]
    for axis, (key, label) in zip(axes[0], axes_of):
        for point, is_low in zip(points, low):
            axis.scatter(point[key], point["nll"], s=30, marker=markers.get(point.get("precision"), "o"),
                         color="C3" if is_low else "C0", alpha=0.8)
        axis.set_xscale("log")
        axis.xaxis.set_major_locator(LogLocator(subs=(1, 2, 3, 5)))  # 2, 3, 5, 10, 20, ... as plain numbers
        axis.xaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_xlabel(label)
        axis.set_ylabel("judge NLL (nats/token, lower is better)")
        axis.grid(alpha=0.3)
        number_points(axis, [(point[key], point["nll"]) for point in points])
    handles = [Line2D([], [], linestyle="", marker=marker, color="gray", label=precision)
               for precision, marker in markers.items() if any(point.get("precision") == precision for point in points)]
    if any(low):
        handles += [Line2D([], [], linestyle="", marker="o", color=color, label=text) for color, text in
                    [("C0", "entropy near the baseline's"), ("C3", f"entropy over {tolerance:.0%} lower")]]
    if handles:
        axes[0][0].legend(handles=handles, fontsize="small", loc="best")
    title = "sampling trade-off: cost against sample quality"
    if baseline_entropy is not None:
        title += f" (entropy of the baseline: {baseline_entropy:.2f} nats)"
    figure.suptitle(title)
    key = "\n".join(f"{number:>2}. {point['label']}" for number, point in enumerate(points, start=1))
    axes[0][-1].text(1.04, 1, key, transform=axes[0][-1].transAxes, va="top", fontsize="small", family="monospace")
    save_figure(figure, out)
    plt.close(figure)


def number_points(axis, positions: Sequence[tuple[float, float]], reach: tuple[float, float] = (30, 14)) -> None:
    """Number the points at ``positions`` 1, 2, ...; a point within ``reach`` (pixels across, up) of an earlier
    labelled point joins that point's label ("1, 2") instead of drawing its own over it."""
    axis.get_xlim(), axis.get_ylim()  # the limits the scatter set, before mapping to pixels
    to_pixels = axis.transData.transform
    groups: list[tuple[tuple[float, float], Any, list[str]]] = []  # (where, its pixels, numbers)
    for number, position in enumerate(positions, start=1):
        pixels = to_pixels(position)
        group = next((g for g in groups if abs(pixels[0] - g[1][0]) < reach[0] and abs(pixels[1] - g[1][1]) < reach[1]),
                     None)
        if group is None:
            groups.append((position, pixels, [str(number)]))
        else:
            group[2].append(str(number))
    for position, _, numbers in groups:
        axis.annotate(", ".join(numbers), position, textcoords="offset points", xytext=(5, 4), fontsize=8)
