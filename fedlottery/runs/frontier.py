"""The accuracy-against-uplink frontier of a record over seeds: the figure every claim here is read from.

Every claim ("the ticket matches FedAvg at a third of its uplink") is about what clients send up, so the x axis
is the measured uplink alone, on a log scale (compressed uplinks sit two orders of magnitude left of FedAvg),
with a vertical line at one third of FedAvg's. Local training sends nothing and has no place on a log axis: it
is a horizontal line with its ± std band. Each method is one colour and its family's marker, filled as sent and
hollow after fine-tuning, with error bars both ways and its name beside the point; the title says how many seeds
the bars are over.
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path

from fedlottery.runs.families import STYLES, family, style

MB = 2**20
BASELINE = "fedavg"


def _values(runs: dict[int, dict], name: str, key: str, scale: float = 1.0) -> list[float]:
    return [scale * s["strategies"][name][key] for s in runs.values()
            if name in s["strategies"] and s["strategies"][name].get(key) is not None]


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def point(runs: dict[int, dict], name: str) -> dict | None:
    """A method's place on the frontier: uplink MiB, honest and fine-tuned accuracy % (mean, std) and its seeds;
    None when it has no honest accuracy."""
    honest = _values(runs, name, "personalized_acc_final", 100)
    if not honest:
        return None
    tuned = _values(runs, name, "finetuned_acc_final", 100)
    return {"up": _mean_std(_values(runs, name, "bytes_up", 1 / MB)), "honest": _mean_std(honest),
            "tuned": _mean_std(tuned) if tuned else None, "seeds": len(honest)}


def plot_frontier(runs: dict[int, dict], names: list[str], colours: dict, title: str, path: Path) -> None:
    """Write the frontier of `names` over the seeds in `runs` (seed -> summary.json) to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    config = next(iter(runs.values()), {}).get("config", {})
    points = {name: p for name in names if (p := point(runs, name)) is not None}
    seeds = max((p["seeds"] for p in points.values()), default=0)
    fig, ax = plt.subplots(figsize=(9, 5.5))
    labels, markers = [], []
    for name, p in points.items():
        marker, _ = style(name, config)
        colour = colours[name]
        (up, up_sd), (acc, acc_sd) = p["up"], p["honest"]
        if up <= 0:
            _draw_zero_uplink(ax, name, acc, acc_sd, colour)
            continue
        ax.errorbar([up], [acc], xerr=[up_sd], yerr=[acc_sd], fmt=marker, ms=7, capsize=3, color=colour)
        markers.append((up, acc))
        best = acc
        if p["tuned"] is not None:
            tuned, tuned_sd = p["tuned"]
            ax.errorbar([up], [tuned], xerr=[up_sd], yerr=[tuned_sd], fmt=marker, ms=7, mfc="white", capsize=3,
                        color=colour)
            ax.plot([up, up], [acc, tuned], color=colour, lw=0.8, alpha=0.6)
            markers.append((up, tuned))
            best = max(acc, tuned)
        short = f" (n={p['seeds']})" if p["seeds"] < seeds else ""
        labels.append((up, best, name + short, colour))
    _third_of_baseline(ax, points)
    ax.set_xscale("log")
    below = _focus(ax, points)
    _place_labels(ax, labels, markers)
    families = sorted({family(name, config) for name in points}, key=list(STYLES).index)
    handles = [Line2D([], [], marker=STYLES[f][0], color="0.35", ls="none", ms=7, label=f) for f in families]
    handles += [Line2D([], [], marker="o", color="0.35", ls="none", label="filled: as sent"),
                Line2D([], [], marker="o", color="0.35", mfc="white", ls="none", label="hollow: fine-tuned")]
    handles += [line for line in ax.get_lines() if line.get_label() == THIRD_LABEL]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set(xlabel="MiB sent up by clients over the run (log scale), mean ± std",
           ylabel="final personalised accuracy (%), mean ± std")
    ax.set_title(f"{title}\naccuracy against uplink, {seeds} seed{'s' if seeds != 1 else ''}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    _name_below(ax, below)  # measured in the final layout: tight_layout narrows the axes for the legend
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def _focus(ax, points: dict) -> list[tuple[float, str, float]]:
    """Keep the accuracy axis on the comparison: an as-sent point far below every method's better treatment (as
    sent or fine-tuned) would squash the rest into a strip. Points more than half the better treatments' range
    below the lowest of them are left off the axis; returned as (uplink, name, accuracy), for `_name_below`."""
    better = [max(p["honest"][0], p["tuned"][0] if p["tuned"] else -1.0) for p in points.values()]
    if len(better) < 2:
        return []
    cutoff = min(better) - 0.5 * (max(better) - min(better) + 1.0)
    kept = [m - sd for p in points.values() for m, sd in (p["honest"], p["tuned"] or p["honest"]) if m >= cutoff]
    low, high = ax.get_ylim()
    floor = min(kept) - 0.05 * (high - min(kept))
    if floor <= low:
        return []
    ax.set_ylim(floor, high)
    return sorted((p["up"][0], name, p["honest"][0]) for name, p in points.items()
                  if p["honest"][0] < floor and p["up"][0] > 0)


def _name_below(ax, below: list[tuple[float, str, float]]) -> None:
    """Name the points left off the accuracy axis at its bottom edge, each in the lowest row where its drawn text
    overlaps no name already there (rows 10 points apart)."""
    renderer = ax.figure.canvas.get_renderer()
    floor = ax.get_ylim()[0]
    rows: list[list] = []  # the drawn extents of the names in each row
    for up, name, acc in below:
        for row in range(len(rows) + 1):
            note = ax.annotate(f"{name} as sent: {acc:.1f} ↓", xy=(up, floor), xytext=(0, 4 + 10 * row),
                               textcoords="offset points", fontsize=7, ha="center", color="0.3")
            extent = note.get_window_extent(renderer).expanded(1.05, 1.0)
            if row == len(rows) or not any(extent.overlaps(other) for other in rows[row]):
                if row == len(rows):
                    rows.append([])
                rows[row].append(extent)
                break
            note.remove()


def _draw_zero_uplink(ax, name: str, acc: float, acc_sd: float, colour) -> None:
    ax.axhline(acc, color=colour, ls="--", lw=1)
    ax.axhspan(acc - acc_sd, acc + acc_sd, color=colour, alpha=0.12)
    ax.annotate(f"{name} (0 B up)", xy=(0.01, acc), xycoords=("axes fraction", "data"), xytext=(0, 3),
                textcoords="offset points", fontsize=8, color=colour)


THIRD_LABEL = "1/3 of FedAvg's uplink"


def _third_of_baseline(ax, points: dict) -> None:
    base = points.get(BASELINE)
    if base is None or base["up"][0] <= 0:
        return
    third = base["up"][0] / 3
    ax.axvline(third, color="0.4", ls=":", lw=1, label=THIRD_LABEL)  # named in the legend


def _place_labels(ax, labels: list[tuple[float, float, str, object]], markers: list[tuple[float, float]]) -> None:
    """Each name just right of its point, at the nearest height (alternately above and below) that clears the
    names already placed near it (within 0.35 decades of uplink and 3.2% of the accuracy axis) and the other
    methods' markers the name would cover, and stays inside the axes; the x axis is widened on the right so that
    the last names fit."""
    if not labels:
        return
    low, high = ax.get_ylim()
    gap = 0.032 * (high - low)
    left, right = ax.get_xlim()
    ax.set_xlim(left, max(right, 3 * max(x for x, *_ in labels)))
    placed: list[tuple[float, float]] = []
    for x, y, text, colour in sorted(labels, key=lambda item: (item[0], item[1])):
        spot = _free_height(x, y, placed, gap, low + gap / 2, high - gap / 2, markers)
        placed.append((x, spot))
        ax.annotate(text, xy=(x, y), xytext=(x * 1.15, spot), fontsize=7.5, color=colour, va="center",
                    arrowprops={"arrowstyle": "-", "color": colour, "lw": 0.5} if spot != y else None)


LABEL_DECADES = 0.45  # how far right of its point a name reaches, in decades of uplink (7.5 pt, ~12 characters)


def _free_height(x: float, y: float, placed: list[tuple[float, float]], gap: float, low: float,
                 high: float, markers: list[tuple[float, float]] = ()) -> float:
    """The height nearest `y` where a name starting just right of `x` overlaps neither a placed name nor a marker
    it would run across (one lying 0.02-0.45 decades right of `x`: its own marker lies at `x`)."""
    def covers(px: float, py: float, spot: float) -> bool:
        return 0.02 < math.log10(px / x) < LABEL_DECADES and abs(spot - py) < 0.8 * gap

    for step in range(40):
        spot = y + (step + 1) // 2 * gap * (1 if step % 2 else -1)
        inside = low <= spot <= high
        if inside and not any(abs(math.log10(x / px)) < 0.35 and abs(spot - py) < gap for px, py in placed) \
                and not any(covers(px, py, spot) for px, py in markers):
            return spot
    return y
