"""`fedlottery report`: one markdown table and three plots across federated run directories."""
from __future__ import annotations

from pathlib import Path

from fedlottery.results import read_csv, read_json

MB = 2**20


def _pct(value) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def comparison_table(runs: list[tuple[str, dict]]) -> str:
    """Rows per (run, strategy): honest personalised accuracy, the paper's metric, global accuracy, MB."""
    lines = [
        "| run | strategy | personalised acc % (final, all clients) | paper metric % (best of rounds) | "
        "global acc % | deployed acc % (own last trained weights) | fine-tuned acc % | mean density | MiB up | "
        "MiB down | MiB down as broadcast | MiB up, values only | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    flagged = False
    for label, summary in runs:
        for name, s in summary["strategies"].items():
            std = s.get("personalized_acc_std")
            partial = _partial(s)
            flagged |= bool(partial)
            lines.append(
                f"| {label} | {name} | {_pct(s['personalized_acc_final'])}"
                + (f" ± {100 * std:.1f}" if std is not None else "") + partial
                + f" | {_pct(s['paper_metric_best_of_rounds'])} | {_pct(s['global_acc_final'])} | "
                f"{_pct(s.get('deployed_acc_final'))} | {_pct(s.get('finetuned_acc_final'))} | "
                f"{s['density_mean_final']:.3f} | "
                f"{s['bytes_up'] / MB:.2f} | {s['bytes_down'] / MB:.2f} | "
                f"{s.get('bytes_down_broadcast', s['bytes_down']) / MB:.2f} | {s['values_bytes_up'] / MB:.2f} | "
                f"{s['wall_s']:.1f} |"
            )
    if flagged:
        lines.append("\n\\* evaluation missed clients: the accuracy is over the k of N clients shown, not all "
                     "(see failures.log in the run directory)")
    return "\n".join(lines)


def _partial(s: dict) -> str:
    """' *(k/N)' when the final evaluation did not reach every client (older summaries lack the counts)."""
    evaluated, clients = s.get("evaluated_clients_final"), s.get("clients")
    if evaluated is None or clients is None or evaluated >= clients:
        return ""
    return f" \\*({evaluated}/{clients})"


def report(dirs: list[Path], plots_dir: Path | None = None) -> str:
    """The comparison table for `dirs`, plus accuracy-vs-round, accuracy-vs-MB and density PNGs."""
    runs = []
    for d in dirs:
        if not (d / "summary.json").exists():
            raise FileNotFoundError(f"{d} has no summary.json: is it a finished `fedlottery run` directory?")
        runs.append((d, read_json(d / "summary.json")))
    plots_dir = plots_dir or dirs[0]
    plots_dir.mkdir(parents=True, exist_ok=True)
    paths = _plot(runs, plots_dir)
    table = comparison_table([(d.name, s) for d, s in runs])
    return table + "\n\nplots: " + ", ".join(str(p) for p in paths)


def _plot(runs: list[tuple[Path, dict]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_round, ax_round = plt.subplots(figsize=(6, 4))
    fig_mb, ax_mb = plt.subplots(figsize=(6, 4))
    fig_density, ax_density = plt.subplots(figsize=(6, 4))
    for d, _ in runs:
        rows = read_csv(d / "rounds.csv")
        for name in dict.fromkeys(r["strategy"] for r in rows):
            mine = [r for r in rows if r["strategy"] == name]
            label = f"{d.name}/{name}" if len(runs) > 1 else name
            cumulative, xs_round, xs_mb, ys = 0.0, [], [], []
            for r in mine:
                cumulative += (r["bytes_up"] + r["bytes_down"]) / MB
                if r["personalized_acc_mean"] is not None:
                    xs_round.append(r["round"])
                    xs_mb.append(cumulative)
                    ys.append(100 * r["personalized_acc_mean"])
            ax_round.plot(xs_round, ys, label=label)
            ax_mb.plot(xs_mb, ys, label=label)
        clients = d / "clients.csv"
        if clients.exists():
            crow = read_csv(clients)
            for name in dict.fromkeys(r["strategy"] for r in crow):
                densities = [r["density"] for r in crow if r["strategy"] == name]
                ax_density.hist(densities, bins=20, range=(0, 1), alpha=0.5,
                                label=f"{d.name}/{name}" if len(runs) > 1 else name)
    ax_round.set(xlabel="round", ylabel="personalised accuracy (%)")
    ax_mb.set(xlabel="cumulative MiB communicated (up + down)", ylabel="personalised accuracy (%)")
    ax_density.set(xlabel="final client density", ylabel="clients")
    paths = []
    for fig, ax, fname in ((fig_round, ax_round, "accuracy_vs_round.png"), (fig_mb, ax_mb, "accuracy_vs_mb.png"),
                           (fig_density, ax_density, "client_densities.png")):
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
        paths.append(out / fname)
    return paths
