"""A picture of forecast scaling for one Deployment: load, forecast and capacity over time.

From the recorded decisions alone (what the scaler saw and did), so it can be drawn
after the fact by anyone who can read the records:

- actual load: the Deployment's CPU (cores) at each decision;
- forecast: the peak each decision expected over its horizon, and the last decision's
  whole forecast;
- capacity: replicas × the target CPU per pod, as the replicas were after each decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


class PlotError(ValueError):
    """Nothing to draw; the message says why."""


def plot(decisions: Sequence[dict[str, Any]], out: Path, title: str) -> Path:
    """Write a PNG of `decisions` (records, oldest first) to `out`; returns `out`.

    Raises:
        PlotError: no decision carries a measured load.
    """
    made = [d for d in decisions if d.get("current_cores") is not None]
    if not made:
        raise PlotError(f"{title}: no decision with a measured load to draw")
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    start = made[0]["at"]
    # Minutes, or seconds for a short record (a new opt-in, a short run).
    unit, per = ("minutes", 60) if made[-1]["at"] - start >= 600 else ("seconds", 1)

    def minutes(t: float) -> float:
        return (t - start) / per

    at = [minutes(d["at"]) for d in made]
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    try:
        ax.plot(at, [d["current_cores"] for d in made], color="tab:blue", label="actual load")
        ax.plot(at, [d["peak_cores"] for d in made], color="tab:orange", linestyle="--",
                label="forecast peak over the horizon")  # fmt: skip
        last = made[-1]
        step = last.get("step_s") or 0
        if last.get("forecast") and step:
            ahead = [minutes(last["at"] + (i + 1) * step) for i in range(len(last["forecast"]))]
            ax.plot(ahead, last["forecast"], color="tab:orange", linewidth=2.5,
                    label="last forecast")  # fmt: skip
        sized = [d for d in made if d.get("target_cores")]
        if sized:
            ax.step([minutes(d["at"]) for d in sized],
                    [d["replicas_after"] * d["target_cores"] for d in sized],
                    where="post", color="tab:green", label="capacity (replicas × target per pod)")  # fmt: skip
        ax.set_xlabel(f"{unit} since the first decision")
        ax.set_ylabel("CPU (cores)")
        ax.set_ylim(bottom=0)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize="small", framealpha=0.9)
        fig.tight_layout()
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, format="png")
    finally:
        plt.close(fig)
    return out
