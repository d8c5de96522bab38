"""Tuning curves: best-so-far GFLOPS against trial number, one line per task.

The series are computed without matplotlib (:func:`tuning_curves`), so they
can be tested and reused; only :func:`plot_curves` needs it, imported lazily
with the non-interactive Agg backend so it works on headless nodes.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from farm.errors import FarmError
from farm.log import LogRecord
from farm.log.query import TaskKey, matches

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'kernelfarm[plot]'"


class PlotError(FarmError):
    """matplotlib is missing, or there is nothing to plot."""


@dataclass
class TaskCurve:
    """One task's trials in log order: every measurement counts as a trial,
    failures included (they spent a device slot), with 0 GFLOPS."""

    task: TaskKey
    gflops: list[float] = field(default_factory=list)
    best: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def label(self) -> str:
        name, h, args, device = self.task
        tag = f"{name}@{h[:8]}" if h else name
        return f"{tag}({','.join(map(str, args))}) on {device}"

    @property
    def trials(self) -> int:
        return len(self.gflops)

    def add(self, r: LogRecord) -> None:
        g = r.gflops if r.ok else 0.0
        self.errors += 0 if r.ok else 1
        self.gflops.append(g)
        self.best.append(max(g, self.best[-1] if self.best else 0.0))


def tuning_curves(records: Iterable[LogRecord], workload: str | None = None,
                  device: str | None = None) -> list[TaskCurve]:
    """Best-so-far series per (workload instance, device key), sorted by task."""
    curves: dict[TaskKey, TaskCurve] = {}
    for r in records:
        if not matches(r, workload=workload, device=device):
            continue
        curves.setdefault(r.task_key, TaskCurve(r.task_key)).add(r)
    return [curves[k] for k in sorted(curves)]


def _pyplot() -> object:
    try:
        import matplotlib

        matplotlib.use("Agg")  # headless: no display on cluster nodes
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise PlotError(f"plotting needs matplotlib: {INSTALL_HINT}") from e
    return plt


def wants_log_scale(curves: list[TaskCurve], ratio: float = 20.0) -> bool:
    """True when task bests differ so much (a GPU next to a Pi) that a linear
    axis would flatten the slow tasks into the x axis."""
    bests = [c.best[-1] for c in curves if c.best and c.best[-1] > 0]
    return len(bests) > 1 and max(bests) / min(bests) > ratio


def plot_curves(curves: list[TaskCurve], out: str | os.PathLike[str], title: str = "",
                show_trials: bool = True, yscale: str = "auto") -> None:
    """Draw ``curves`` into an image file (format from the extension: .png, .svg, .pdf).

    ``yscale`` is "linear", "log", or "auto" (log when task bests differ > 20x).
    """
    if not curves:
        raise PlotError("no measurements to plot (check --workload / --device)")
    if yscale not in ("auto", "linear", "log"):
        raise PlotError(f"yscale must be auto, linear or log, got {yscale!r}")
    log_y = yscale == "log" or (yscale == "auto" and wants_log_scale(curves))
    plt = _pyplot()
    # Taller with more tasks: the legend sits under the axes, one line per task.
    fig, ax = plt.subplots(figsize=(9, 5 + 0.22 * len(curves)), dpi=120)  # type: ignore[attr-defined]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]  # type: ignore[attr-defined]
    for i, c in enumerate(curves):
        color = colors[i % len(colors)]
        xs = list(range(1, c.trials + 1))
        label = f"{c.label}: best {c.best[-1]:.1f} GFLOPS in {c.trials} trials"
        if c.errors:
            label += f", {c.errors} failed"
        ax.step(xs, c.best, where="post", color=color, linewidth=2.0, label=label, zorder=2)
        if show_trials:
            # Each measurement as a faint dot: shows how much the tuner explores.
            ok = [(x, g) for x, g in zip(xs, c.gflops) if g > 0]
            if ok:
                ax.scatter(*zip(*ok), s=10, color=color, alpha=0.3, linewidths=0, zorder=1)
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("trial (measurements of the task, in log order)")
    ylabel = "GFLOPS: best so far (lines), each trial (dots)" if show_trials else "best-so-far GFLOPS"
    ax.set_ylabel(ylabel + (", log scale" if log_y else ""))
    ax.set_title(title or "Tuning progress: best-so-far GFLOPS per task")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trials are whole numbers
    ax.set_xlim(left=0)
    if log_y:
        ax.set_yscale("log")
        ax.grid(True, which="minor", axis="y", alpha=0.15)
    else:
        ax.set_ylim(bottom=0)
    ax.grid(True, which="major", alpha=0.35)
    # Under the axes, never over the curves.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=8, frameon=False,
              ncol=1 if len(curves) <= 8 else 2)
    fig.savefig(os.fspath(out), bbox_inches="tight")
    plt.close(fig)  # type: ignore[attr-defined]
    log.info("wrote %s (%d tasks)", out, len(curves))


# --- a network: estimated end-to-end latency against trials spent ------------------------------------

Weights = dict[tuple[str, tuple[int, ...]], float]  # (workload name, args) -> occurrences in the network


@dataclass
class NetworkCurve:
    """Estimated end-to-end latency (sum of weight x best latency so far) after each trial spent on
    a network's tasks; it starts once every task has a correct result."""

    label: str
    trials: list[int] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)


def network_curve(records: Sequence[LogRecord], weights: Weights, device: str | None = None,
                  label: str = "") -> NetworkCurve:
    """The curve of one device key's campaign on ``weights``' tasks, trials counted in log order."""
    keys = {r.device_key for r in records if (r.workload, r.args) in weights} if device is None else {device}
    if len(keys) > 1:
        raise PlotError(f"the network was tuned on several device keys ({', '.join(sorted(keys))}); "
                        "pick one with --device")
    best: dict[tuple[str, tuple[int, ...]], float] = {}
    out = NetworkCurve(label or f"on {next(iter(keys), '?')}")
    n = 0
    for r in records:
        k = (r.workload, tuple(r.args))
        if k not in weights or r.device_key not in keys:
            continue
        n += 1
        if r.ok and r.costs and (k not in best or r.median_s < best[k]):
            best[k] = r.median_s
        if len(best) == len(weights):
            out.trials.append(n)
            out.latency_s.append(sum(w * best[t] for t, w in weights.items()))
    return out


def plot_network(curves: list[NetworkCurve], out: str | os.PathLike[str], title: str = "",
                 numpy_s: float | None = None) -> None:
    """Draw estimated end-to-end latency (ms) against trials spent, one line per curve; ``numpy_s``,
    the same sum of numpy baselines, as a horizontal line."""
    curves = [c for c in curves if c.trials]
    if not curves:
        raise PlotError("no curve to plot: no trial left every task of the network with a correct result")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=120)  # type: ignore[attr-defined]
    for c in curves:
        ms = [s * 1e3 for s in c.latency_s]
        ax.step(c.trials, ms, where="post", linewidth=2.0,
                label=f"{c.label}: {ms[-1]:.2f} ms after {c.trials[-1]} trials")
    if numpy_s:
        ax.axhline(numpy_s * 1e3, color="0.4", linestyle="--", linewidth=1.2,
                   label=f"numpy baselines: {numpy_s * 1e3:.2f} ms")
    ax.set_xlabel("trials spent (all the network's tasks on the device key)")
    ax.set_ylabel("estimated end-to-end latency, ms (sum of count x best latency)")
    ax.set_title(title or "Estimated end-to-end latency against trials")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.35)
    ax.legend(loc="upper right", fontsize=8)
    fig.savefig(os.fspath(out), bbox_inches="tight")
    plt.close(fig)  # type: ignore[attr-defined]
    log.info("wrote %s (%d curves)", out, len(curves))
