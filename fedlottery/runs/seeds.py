"""Seeds as a first-class axis: one run directory per seed (DIR/seed<S>), one table and plots over them.

A difference between two methods means something only next to its spread over seeds, so the table gives
every metric as mean ± std over seeds, and each method's *paired* difference from a baseline (the same seed's
partitions, θ0 and sampling for both), mean ± std over seeds. Plots: accuracy against round and against MiB
with the spread over seeds as bands / error bars, and the per-client distribution of final accuracy.
"""
from __future__ import annotations

import copy
import re
import statistics
from pathlib import Path
from typing import Callable

from fedlottery.runs.families import palette, style
from fedlottery.runs.frontier import plot_frontier
from fedlottery.runs.report import HURT_TITLE, LOCAL, run_hurt, sampled_note, setting
from fedlottery.runs.results import read_csv, read_json

MB = 2**20
SEED_DIR = re.compile(r"^seed(\d+)$")
COLUMNS = [  # (summary key, column title, scale)
    ("personalized_acc_final", "personalised acc %", 100), ("finetuned_acc_final", "fine-tuned acc %", 100),
    ("deployed_acc_final", "deployed acc %", 100), ("paper_metric_best_of_rounds", "paper metric %", 100),
    ("global_acc_final", "global acc %", 100), ("density_mean_final", "density", 1),
    ("bytes_up", "MiB up", 1 / MB), ("bytes_down", "MiB down", 1 / MB), ("values_bytes_up", "MiB up, values only", 1 / MB),
]


def seed_dir(out: Path, seed: int) -> Path:
    return Path(out) / f"seed{seed}"


def run_seeds(cfg, out: Path, seeds: list[int], run: Callable, resume: bool = False) -> None:
    """Run the experiment once per seed into out/seed<S>; with resume, each seed goes on from its checkpoint
    (a seed without one starts afresh). `run(cfg, out_dir, resume=...)` is fedlottery.runtime.simulation.run_federated."""
    from fedlottery.runs.checkpoint import CHECKPOINT_FILE

    for seed in seeds:
        one = copy.deepcopy(cfg)
        one.seed = seed
        where = seed_dir(out, seed)
        run(one, where, resume=resume and (where / CHECKPOINT_FILE).exists())


def is_seeds_dir(out: Path) -> bool:
    """A `--seeds` output directory: no run of its own, at least one finished seed<S>/ inside."""
    out = Path(out)
    return out.is_dir() and not (out / "summary.json").exists() and bool(summaries(out))


def summaries(out: Path) -> dict[int, dict]:
    """seed -> summary.json of every finished seed directory under `out`."""
    found = {}
    for d in sorted(Path(out).iterdir()):
        match = SEED_DIR.match(d.name)
        if match and (d / "summary.json").exists():
            found[int(match.group(1))] = read_json(d / "summary.json")
    return found


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _cell(values: list[float | None], scale: float, digits: int = 2) -> str:
    values = [v * scale for v in values if v is not None]
    if not values:
        return ""
    mean, std = _mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def seed_table(out: Path, baseline: str | None = None) -> str:
    """Mean ± std over seeds per strategy, the paired difference from `baseline` (default: fedavg when run), and
    when the seeds hold a local run, each method's share of clients below their local-only accuracy."""
    runs = summaries(out)
    if not runs:
        raise FileNotFoundError(f"{out} holds no seed<S>/summary.json: run with --seeds first")
    names = list(dict.fromkeys(n for s in runs.values() for n in s["strategies"]))
    baseline = baseline or ("fedavg" if "fedavg" in names else None)
    hurt = {seed: run_hurt(seed_dir(out, seed)) for seed in runs}
    with_hurt = any(hurt.values())
    head = ["strategy", "seeds"] + [title for _, title, _ in COLUMNS]
    if baseline:
        head += [f"Δ personalised vs {baseline} (paired)", f"Δ fine-tuned vs {baseline} (paired)",
                 f"uplink / {baseline}"]
    if with_hurt:
        head.append(HURT_TITLE)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        per_seed = {seed: s["strategies"][name] for seed, s in runs.items() if name in s["strategies"]}
        cells = [name, ",".join(map(str, per_seed))]
        cells += [_cell([s.get(key) for s in per_seed.values()], scale, 3 if key == "density_mean_final" else 2)
                  for key, _, scale in COLUMNS]
        if baseline:
            cells += [_paired(runs, name, baseline, key) for key in ("personalized_acc_final", "finetuned_acc_final")]
            ratios = [s["strategies"][name]["bytes_up"] / s["strategies"][baseline]["bytes_up"]
                      for s in runs.values() if name in s["strategies"] and baseline in s["strategies"]
                      and s["strategies"][baseline]["bytes_up"]]
            cells.append(_cell(ratios, 1, 3))
        if with_hurt:
            cells.append(_hurt_cell(name, [hurt[seed].get(name) for seed in per_seed]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _hurt_cell(name: str, shares: list[float | None]) -> str:
    """The share of clients below their local-only accuracy, mean ± std over the seeds that had a local run."""
    if name == LOCAL:
        return "reference"
    values = [100 * v for v in shares if v is not None]
    if not values:
        return ""
    mean, std = _mean_std(values)
    return f"{mean:.0f}% ± {std:.0f}%"


def _paired(runs: dict[int, dict], name: str, baseline: str, key: str) -> str:
    diffs = []
    for s in runs.values():
        mine, base = s["strategies"].get(name, {}).get(key), s["strategies"].get(baseline, {}).get(key)
        if mine is not None and base is not None:
            diffs.append(mine - base)
    return _cell(diffs, 100) if diffs else ""


def write_seed_record(out: Path, baseline: str | None = None) -> tuple[str, list[Path]]:
    """A --seeds directory's own products: table.md (the seeds it holds, then `seed_table`) and `seed_plots`;
    returns the table and the plots' paths."""
    table = seed_table(out, baseline)
    note = schedule_note(out)
    text = f"seeds {sorted(summaries(out))}\n\n{table}\n" + (f"\n{note}\n" if note else "")
    (Path(out) / "table.md").write_text(text)
    return table, seed_plots(out)


def schedule_note(out: Path) -> str:
    """Which strategies' rows carry no client schedule in some seed (rounds.csv's `sampled`, written since the
    paired schedule of c6eefb4), when others do: a record joined across that change pairs only seeds for them.
    Empty when every row has one or none does."""
    recorded: dict[tuple[int, str], bool] = {}  # (seed, strategy) -> any of its rows has a schedule
    for seed in summaries(out):
        for row in read_csv(seed_dir(out, seed) / "rounds.csv"):
            key = (seed, row["strategy"])
            recorded[key] = recorded.get(key, False) or row.get("sampled") is not None
    old = list(dict.fromkeys(name for (_, name), has in recorded.items() if not has))
    if not old or not any(recorded.values()):
        return ""
    return (f"Client schedule not recorded for {', '.join(old)} (run before the paired schedule, commit c6eefb4): "
            "their paired differences pair each seed's partitions and θ0, not the clients trained each round; the "
            "other strategies trained the same clients in the same rounds.")


def seed_plots(out: Path, into: Path | None = None) -> list[Path]:
    """accuracy_vs_round_seeds.png (mean, band = ± std over seeds), frontier_seeds.png (final accuracy against
    the uplink, fedlottery.runs.frontier) and client_accuracy_seeds.png (per-client final accuracy, all seeds),
    written into `into` (default: `out` itself, as `run --seeds` and `merge` do for the record they write)."""
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out)
    into = Path(into) if into is not None else out
    into.mkdir(parents=True, exist_ok=True)
    runs = summaries(out)  # read once: the seed directories, the title's config and the frontier's figures
    dirs = [seed_dir(out, seed) for seed in runs]
    rounds = [r for d in dirs for r in read_csv(d / "rounds.csv")]
    clients = [r for d in dirs for r in read_csv(d / "clients.csv")]
    names = list(dict.fromkeys(r["strategy"] for r in rounds))
    config = next(iter(runs.values()), {}).get("config", {})
    colours = palette(names, config)
    paths = [into / "accuracy_vs_round_seeds.png", into / "frontier_seeds.png", into / "client_accuracy_seeds.png"]
    title = setting(config) or out.name
    _plot_rounds(rounds, names, colours, config, title + sampled_note(config), paths[0])
    plot_frontier(runs, names, colours, title, paths[1])
    _plot_clients(clients, names, title, paths[2])
    return paths


def _plot_rounds(rounds: list[dict], names: list[str], colours: dict, config: dict, title: str, path: Path) -> None:
    """Personalised accuracy at the evaluated rounds: each method's mean over seeds (its family's marker and line
    style, its own colour), with a ± std band. Lines only join evaluations: nothing was measured between them."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name in names:
        by_round: dict[int, list[float]] = {}
        for r in rounds:
            if r["strategy"] == name and r["personalized_acc_mean"] is not None:
                by_round.setdefault(r["round"], []).append(100 * r["personalized_acc_mean"])
        xs = sorted(by_round)
        means = [statistics.fmean(by_round[x]) for x in xs]
        stds = [statistics.stdev(by_round[x]) if len(by_round[x]) > 1 else 0.0 for x in xs]
        marker, line = style(name, config)
        ax.plot(xs, means, marker=marker, ls=line, lw=1, ms=6, color=colours[name], label=name)
        ax.fill_between(xs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                        color=colours[name], alpha=0.12)
    seeds = len({r.get("seed") for r in rounds}) if rounds and "seed" in rounds[0] else None
    over = f"mean ± std over {seeds} seeds" if seeds else "mean ± std over seeds"
    ax.set(xlabel="round", ylabel=f"personalised accuracy (%), {over}", title=title)
    ax.xaxis.get_major_locator().set_params(integer=True)
    _finish(fig, ax, path)


def _plot_clients(clients: list[dict], names: list[str], run_name: str, path: Path) -> None:
    """The per-client distribution of final personalised accuracy, every seed's clients pooled, one box a method."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    data = [[100 * r["final_acc"] for r in clients if r["strategy"] == name and r["final_acc"] is not None]
            for name in names]
    ax.boxplot(data, tick_labels=names)
    ax.set(ylabel="final personalised accuracy per client (%), all seeds", title=f"{run_name}: clients")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _finish(fig, ax, path: Path) -> None:
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
