"""`fedlottery report`: one markdown table and three plots across federated run directories."""
from __future__ import annotations

from pathlib import Path

from fedlottery.runs.results import read_csv, read_json

MB = 2**20


def _pct(value) -> str:
    return "" if value is None else f"{100 * value:.2f}"


LOCAL = "local"  # strategies.local.LocalStrategy.name: the local-only baseline `hurt` compares each client with
HURT_TITLE = "hurt (clients below their local-only acc)"


def hurt_shares(clients: list[dict]) -> dict[tuple[str, int | None], float]:
    """(strategy, seed) -> the share of clients whose final personalised accuracy (clients.csv final_acc) is below
    their own local-only final accuracy, same seed and partition: a mean gain can hide clients that federation
    left worse off than training alone. Clients without both accuracies are left out; {} without a local run."""
    local = {(r.get("seed"), r.get("partition_id")): r["final_acc"] for r in clients
             if r["strategy"] == LOCAL and r.get("final_acc") is not None}
    counts: dict[tuple[str, int | None], list[int]] = {}
    for r in clients:
        key = (r.get("seed"), r.get("partition_id"))
        if r["strategy"] == LOCAL or r.get("final_acc") is None or key not in local:
            continue
        tally = counts.setdefault((r["strategy"], r.get("seed")), [0, 0])
        tally[0] += r["final_acc"] < local[key]
        tally[1] += 1
    return {key: hurt / total for key, (hurt, total) in counts.items()}


def run_hurt(run_dir: Path) -> dict[str, float | None]:
    """strategy -> its hurt share in one run directory (its clients.csv), the local strategy itself -> None; {} when
    the run holds no local strategy."""
    path = Path(run_dir) / "clients.csv"
    rows = read_csv(path) if path.exists() else []
    if not any(r["strategy"] == LOCAL for r in rows):
        return {}
    by_name: dict[str, list[float]] = {}
    for (name, _), share in hurt_shares(rows).items():
        by_name.setdefault(name, []).append(share)
    return {LOCAL: None, **{name: sum(v) / len(v) for name, v in by_name.items()}}


def hurt_cell(name: str, hurt: dict[str, float | None]) -> str:
    """'35%'; 'reference' for the local strategy itself; '' when the run has no local-only clients to compare."""
    if name == LOCAL and LOCAL in hurt:
        return "reference"
    share = hurt.get(name)
    return "" if share is None else f"{100 * share:.0f}%"


def comparison_table(runs: list[tuple[str, dict]], hurt: list[dict[str, float | None]] | None = None) -> str:
    """Rows per (run, strategy): honest personalised accuracy, the paper's metric, global accuracy, MB; and, when a
    run holds the local-only strategy, each method's share of clients hurt (`hurt`: run_hurt per run, in order)."""
    hurt = hurt or [{} for _ in runs]
    with_hurt = any(hurt)
    lines = [
        "| run | strategy | personalised acc % (final, all clients) | paper metric % (best of rounds) | "
        "global acc % | deployed acc % (own last trained weights) | fine-tuned acc % | mean density | MiB up | "
        "MiB down | MiB down as broadcast | MiB up, values only | wall s |" + (f" {HURT_TITLE} |" if with_hurt else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if with_hurt else ""),
    ]
    flagged = timed = False
    for (label, summary), shares in zip(runs, hurt):
        for name, s in summary["strategies"].items():
            std = s.get("personalized_acc_std")
            partial = _partial(s)
            flagged |= bool(partial)
            timing = " ‡" if s.get("hang_guard_drops") else ""
            timed |= bool(timing)
            lines.append(
                f"| {label} | {name}{timing} | {_pct(s['personalized_acc_final'])}"
                + (f" ± {100 * std:.1f}" if std is not None else "") + partial
                + f" | {_pct(s['paper_metric_best_of_rounds'])} | {_pct(s['global_acc_final'])} | "
                f"{_pct(s.get('deployed_acc_final'))} | {_pct(s.get('finetuned_acc_final'))} | "
                f"{s['density_mean_final']:.3f} | "
                f"{s['bytes_up'] / MB:.2f} | {s['bytes_down'] / MB:.2f} | "
                f"{s.get('bytes_down_broadcast', s['bytes_down']) / MB:.2f} | {s['values_bytes_up'] / MB:.2f} | "
                f"{s['wall_s']:.1f} |" + (f" {hurt_cell(name, shares)} |" if with_hurt else "")
            )
    if flagged:
        lines.append("\n\\* evaluation missed clients: the accuracy is over the k of N clients shown, not all "
                     "(see failures.log in the run directory)")
    if timed:
        lines.append("\n‡ the hang guard (simulation.round_timeout) dropped clients: this result depends on the "
                     "machine's speed and load, not only on the config and seed; raise the guard and run again")
    return "\n".join(lines)


def _partial(s: dict) -> str:
    """' *(k/N)' when the final evaluation did not reach every client (older summaries lack the counts)."""
    evaluated, clients = s.get("evaluated_clients_final"), s.get("clients")
    if evaluated is None or clients is None or evaluated >= clients:
        return ""
    return f" \\*({evaluated}/{clients})"


def report(dirs: list[Path], plots_dir: Path | None = None) -> str:
    """The comparison table for `dirs`; with `plots_dir`, also accuracy-vs-round, accuracy-vs-MB and density PNGs
    there. Nothing is ever written into `dirs`: they are records (some committed), and a report reads them."""
    runs = []
    for d in dirs:
        if not (d / "summary.json").exists():
            raise FileNotFoundError(f"{d} has no summary.json: is it a finished `fedlottery run` directory?")
        runs.append((d, read_json(d / "summary.json")))
    table = comparison_table([(d.name, s) for d, s in runs], [run_hurt(d) for d, _ in runs])
    return table + "\n\n" + plots_line(_plot(runs, plots_dir) if plots_dir else None)


def plots_line(paths: list[Path] | None) -> str:
    """The report's last line: where its plots went, or how to ask for them."""
    if paths is None:
        return "plots: none written (add --plots DIR to write them there)"
    return "plots: " + ", ".join(str(p) for p in paths)


PLOTS = ("accuracy_vs_round.png", "accuracy_vs_mb.png", "client_densities.png")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")


def _plot(runs: list[tuple[Path, dict]], out: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fname, fig in zip(PLOTS, figures(runs)):
        fig.savefig(out / fname, dpi=110, bbox_inches="tight")  # "tight" keeps the legend beside the axes
        plt.close(fig)
        paths.append(out / fname)
    return paths


def colours(n: int) -> list[tuple[float, float, float, float]]:
    """n distinct colours: tab10, then tab20's darker-then-lighter halves, then evenly spaced hues."""
    import matplotlib

    if n <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        tab20 = matplotlib.colormaps["tab20"]
        return [tab20(2 * i) for i in range(10)] + [tab20(2 * i + 1) for i in range(n - 10)]
    hues = matplotlib.colormaps["hsv"]
    return [hues(i / n) for i in range(n)]


def experiment_title(runs: list[tuple[Path, dict]]) -> str:
    """What the plots show: the run directory (or directories) and, when they share it, the set-up from the config
    the run recorded in summary.json."""
    names = [str(d) for d, _ in runs]
    head = names[0] if len(names) == 1 else f"{len(names)} runs: " + ", ".join(names)
    if len(head) > 90:
        head = head[:87] + "..."
    setups = {_setup(s.get("config", {})) for _, s in runs}
    return head + (f"\n{setups.pop()}" if len(setups) == 1 and "" not in setups else "")


def sampled_note(config: dict) -> str:
    """A title's second line when evaluations before the last tested a sample of clients (evaluation.sample) or
    left out the fine-tuned column (evaluation.finetune_rounds: last)."""
    evaluation = config.get("evaluation", {})
    sample, tuned_last = evaluation.get("sample", 0), evaluation.get("finetune_rounds") == "last"
    before = ([f"{sample} sampled clients"] if sample else []) + (["no fine-tuned column"] if tuned_last else [])
    return f"\nevaluations before the last: {', '.join(before)}" if before else ""


def setting(config: dict) -> str:
    """The experiment's set-up in one line (data set, model, clients and how they were split, rounds), as a plot
    over seeds is titled; "" when the config does not say."""
    data, model, part = config.get("data", {}), config.get("model", {}), config.get("partition", {})
    if not (data.get("dataset") and model.get("name")):
        return ""
    clients = f"{part['num_clients']} clients ({part.get('scheme', '?')})" if "num_clients" in part else ""
    rounds = f"{config['rounds']} rounds" if "rounds" in config else ""
    return ", ".join(x for x in (data["dataset"], model["name"], clients, rounds) if x)


def _setup(config: dict) -> str:
    head = setting(config)
    if not head:
        return ""
    return head + (f", seed {config['seed']}" if "seed" in config else "") + sampled_note(config)


def _series(runs: list[tuple[Path, dict]]) -> list[dict]:
    """One entry per (run, strategy): label, evaluated rounds, cumulative MiB at them, accuracy %, densities."""
    names = [d.name for d, _ in runs]
    unique = len(set(names)) == len(names)
    series = []
    for d, _ in runs:
        rows = read_csv(d / "rounds.csv")
        crow = read_csv(d / "clients.csv") if (d / "clients.csv").exists() else []
        for name in dict.fromkeys(r["strategy"] for r in rows):
            label = name if len(runs) == 1 else f"{d.name if unique else d}/{name}"
            cumulative, rounds, mib, acc = 0.0, [], [], []
            for r in rows:
                if r["strategy"] != name:
                    continue
                cumulative += (r["bytes_up"] + r["bytes_down"]) / MB
                if r["personalized_acc_mean"] is not None:
                    rounds.append(r["round"])
                    mib.append(cumulative)
                    acc.append(100 * r["personalized_acc_mean"])
            densities = [r["density"] for r in crow if r["strategy"] == name and r["density"] is not None]
            series.append({"label": label, "rounds": rounds, "mib": mib, "acc": acc, "densities": densities})
    return series


def figures(runs: list[tuple[Path, dict]]):
    """The three report figures (matplotlib Figures, in PLOTS order): personalised accuracy at the evaluated rounds
    (markers; the faint dotted line only guides the eye between evaluations), the same against cumulative MiB, and
    the final client densities as side-by-side bars per bin. One colour and marker per (run, strategy) across all
    three; legends beside the axes, never over the data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    series = _series(runs)
    palette = colours(len(series))
    title = experiment_title(runs)
    fig_round, ax_round = plt.subplots(figsize=(7, 4))
    fig_mb, ax_mb = plt.subplots(figsize=(7, 4))
    fig_density, ax_density = plt.subplots(figsize=(7, 4))
    for i, s in enumerate(series):
        style = dict(color=palette[i], marker=_MARKERS[i % len(_MARKERS)], markersize=6, linestyle=":",
                     linewidth=1, label=s["label"])
        ax_round.plot(s["rounds"], s["acc"], **style)
        ax_mb.plot(s["mib"], s["acc"], **style)
    last = max((r for s in series for r in s["rounds"]), default=1)
    ax_round.set_xlim(0.5, last + 0.5)
    ax_round.xaxis.set_major_locator(MaxNLocator(integer=True))
    with_densities = [(s, palette[i]) for i, s in enumerate(series) if s["densities"]]
    if with_densities:
        per_bin = 20 if len(with_densities) <= 3 else 10  # more series side by side: wider bins
        ax_density.hist([s["densities"] for s, _ in with_densities], bins=[i / per_bin for i in range(per_bin + 1)],
                        color=[c for _, c in with_densities], label=[s["label"] for s, _ in with_densities],
                        rwidth=0.9)
    else:
        ax_density.text(0.5, 0.5, "no clients.csv", ha="center", va="center", transform=ax_density.transAxes)
    ax_density.set_xlim(0, 1)
    ax_density.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax_round.set(xlabel="round", ylabel="personalised accuracy (%)")
    ax_mb.set(xlabel="cumulative MiB communicated (up + down)", ylabel="personalised accuracy (%)")
    ax_density.set(xlabel="final client density (fraction of prunable weights kept)", ylabel="clients")
    for fig, ax, what in ((fig_round, ax_round, "personalised accuracy at evaluated rounds"),
                          (fig_mb, ax_mb, "personalised accuracy vs. communication"),
                          (fig_density, ax_density, "final client densities (bars side by side per bin)")):
        ax.set_title(f"{title}\n{what}", fontsize=9)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8, frameon=False)
        fig.tight_layout()
    return fig_round, fig_mb, fig_density
