"""`fedlottery report`: the table is unchanged, the three PNGs are written, and the figures read right (checked on
matplotlib's objects, not pixels): evaluated rounds as markers on integer round ticks, a title naming the run,
one distinct colour per line, legends beside the axes, density bars side by side in the legend's own colours."""
import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402

from fedlottery.runs.report import PLOTS, colours, comparison_table, experiment_title, figures, report  # noqa: E402

CONFIG = {"seed": 0, "rounds": 15, "data": {"dataset": "digits"}, "model": {"name": "mlp_digits"},
          "partition": {"scheme": "shards", "num_clients": 6}}


def _strategy(acc: float, density: float, partial: bool = False) -> dict:
    return {"personalized_acc_final": acc, "personalized_acc_std": 0.05, "paper_metric_best_of_rounds": acc + 0.1,
            "global_acc_final": acc - 0.1, "deployed_acc_final": None, "finetuned_acc_final": 0.5,
            "density_mean_final": density, "bytes_up": 3 * 2**20, "bytes_down": 4 * 2**20,
            "bytes_down_broadcast": 2**20, "values_bytes_up": 2 * 2**20, "wall_s": 12.34,
            "evaluated_clients_final": 5 if partial else 6, "clients": 6}


SUMMARIES = [("alpha", {"config": CONFIG, "strategies": {"lotteryfl": _strategy(0.6834, 0.79),
                                                         "fedavg": _strategy(0.8754, 1.0, partial=True)}}),
             ("beta", {"config": CONFIG, "strategies": {"cell": _strategy(0.7, 0.5)}})]
# comparison_table's output for SUMMARIES before the plots were reworked (git show 5f1b477:fedlottery/runs/report.py)
TABLE = (
    "| run | strategy | personalised acc % (final, all clients) | paper metric % (best of rounds) | global acc % | "
    "deployed acc % (own last trained weights) | fine-tuned acc % | mean density | MiB up | MiB down | MiB down as "
    "broadcast | MiB up, values only | wall s |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    "| alpha | lotteryfl | 68.34 ± 5.0 | 78.34 | 58.34 |  | 50.00 | 0.790 | 3.00 | 4.00 | 1.00 | 2.00 | 12.3 |\n"
    "| alpha | fedavg | 87.54 ± 5.0 \\*(5/6) | 97.54 | 77.54 |  | 50.00 | 1.000 | 3.00 | 4.00 | 1.00 | 2.00 | 12.3 |\n"
    "| beta | cell | 70.00 ± 5.0 | 80.00 | 60.00 |  | 50.00 | 0.500 | 3.00 | 4.00 | 1.00 | 2.00 | 12.3 |\n"
    "\n\\* evaluation missed clients: the accuracy is over the k of N clients shown, not all (see failures.log in "
    "the run directory)"
)


def write_run(d: Path, strategies: list[str], config: dict = CONFIG, every: int = 5, rounds: int = 15) -> Path:
    """A finished run directory: rounds.csv evaluated every `every` rounds, clients.csv, summary.json."""
    d.mkdir(parents=True, exist_ok=True)
    with (d / "rounds.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["round", "strategy", "personalized_acc_mean", "bytes_up", "bytes_down", "wall_s"])
        for k, name in enumerate(strategies):
            for rnd in range(1, rounds + 1):
                acc = 0.1 + 0.05 * rnd + 0.01 * k if rnd % every == 0 or rnd == rounds else ""
                w.writerow([rnd, name, acc, 100_000 + k, 200_000, 0.5])
    with (d / "clients.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["strategy", "partition_id", "final_acc", "best_acc", "density"])
        for k, name in enumerate(strategies):
            for pid in range(6):
                w.writerow([name, pid, 0.8, 0.9, 1.0 if k == 0 else round(0.3 + 0.1 * pid, 2)])
    (d / "summary.json").write_text(json.dumps({"config": config, "strategies": {
        name: _strategy(0.5 + 0.01 * k, 0.5) for k, name in enumerate(strategies)}}))
    return d


def _runs(dirs: list[Path]) -> list[tuple[Path, dict]]:
    return [(d, json.loads((d / "summary.json").read_text())) for d in dirs]


@pytest.fixture
def figs():
    opened = []

    def make(dirs):
        made = figures(_runs(dirs))
        opened.extend(made)
        for fig in made:
            fig.canvas.draw()
        return made

    yield make
    for fig in opened:
        plt.close(fig)


def test_comparison_table_is_unchanged():
    assert comparison_table(SUMMARIES) == TABLE


def test_report_writes_the_three_pngs_where_asked_and_nothing_into_the_run(tmp_path):
    run = write_run(tmp_path / "runs" / "default", ["lotteryfl", "fedavg"])
    before = sorted(run.iterdir())
    text = report([run])
    assert text.startswith("| run | strategy |") and text.endswith("(add --plots DIR to write them there)")
    plots = tmp_path / "plots"
    text = report([run], plots)
    for name in PLOTS:
        data = (plots / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
    assert text.endswith("plots: " + ", ".join(str(plots / n) for n in PLOTS))
    assert sorted(run.iterdir()) == before


def test_evaluated_rounds_are_markers_on_integer_ticks(tmp_path, figs):
    fig_round, fig_mb, _ = figs([write_run(tmp_path / "r", ["lotteryfl", "fedavg"], every=5)])
    for fig in (fig_round, fig_mb):
        for line in fig.axes[0].get_lines():
            assert line.get_marker() not in (None, "", "None", " ")
            assert len(line.get_xdata()) == 3  # rounds 5, 10, 15: three markers, not a solid line
            assert line.get_linestyle() == ":"
    ax = fig_round.axes[0]
    assert list(ax.get_lines()[0].get_xdata()) == [5, 10, 15]
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)


def test_titles_name_the_run_and_its_setup(tmp_path, figs):
    run = write_run(tmp_path / "runs" / "default", ["lotteryfl"])
    for fig in figs([run]):
        title = fig.axes[0].get_title()
        assert str(run) in title
        assert "digits, mlp_digits, 6 clients (shards), 15 rounds, seed 0" in title
    two = experiment_title(_runs([run, write_run(tmp_path / "other", ["fedavg"])]))
    assert two.startswith("2 runs: ") and str(run) in two


def test_many_lines_get_distinct_colours_and_the_legend_stays_off_the_data(tmp_path, figs):
    dirs = [write_run(tmp_path / f"run{i}", ["lotteryfl", "fedavg", "cell"]) for i in range(4)]  # 12 lines
    for fig in figs(dirs):
        ax = fig.axes[0]
        legend = ax.get_legend()
        assert legend is not None
        assert legend.get_window_extent().x0 >= ax.get_window_extent().x1  # beside the axes, not over them
    ax = figs(dirs)[0].axes[0]
    lines = ax.get_lines()
    assert len(lines) == 12
    assert len({to_rgba(line.get_color()) for line in lines}) == 12
    assert len({line.get_label() for line in lines}) == 12  # run/strategy labels


def test_density_bars_sit_side_by_side_in_the_legend_colours(tmp_path, figs):
    _, _, fig_density = figs([write_run(tmp_path / "a", ["lotteryfl", "fedavg"]),
                              write_run(tmp_path / "b", ["cell"])])
    ax = fig_density.axes[0]
    legend_colours = [to_rgba(h.get_facecolor()) for h in ax.get_legend().legend_handles]
    assert len(set(legend_colours)) == 3
    spans = []
    for container, colour in zip(ax.containers, legend_colours):
        for bar in container.patches:
            assert to_rgba(bar.get_facecolor()) == colour  # opaque, exactly the legend's colour: nothing blends
            if bar.get_height() > 0:
                spans.append((bar.get_x(), bar.get_x() + bar.get_width()))
    spans.sort()
    assert all(a_end <= b_start + 1e-9 for (_, a_end), (b_start, _) in zip(spans, spans[1:]))  # no overlap


@pytest.mark.parametrize("n", [1, 2, 9, 10, 11, 20, 21, 40])
def test_colours_are_distinct(n):
    assert len(set(colours(n))) == n


# ---- share of clients hurt (below their own local-only accuracy) ----------------------------------------------------
def _clients_csv(where: Path, rows: list[tuple]) -> None:
    """clients.csv rows (strategy, seed, partition_id, final_acc), as the ServerApp writes them."""
    where.mkdir(parents=True, exist_ok=True)
    with (where / "clients.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["strategy", "seed", "partition_id", "final_acc", "best_acc", "density"])
        writer.writerows([(s, seed, p, "" if acc is None else acc, acc, 1.0) for s, seed, p, acc in rows])


LOCAL_ACC = [0.90, 0.60, 0.70, 0.50]


def _hand_made(seed: int, fedavg: list, cell: list) -> list[tuple]:
    return [(name, seed, p, acc) for name, accs in (("local", LOCAL_ACC), ("fedavg", fedavg), ("cell", cell))
            for p, acc in enumerate(accs)]


def test_hurt_is_the_share_of_clients_below_their_own_local_accuracy(tmp_path):
    from fedlottery.runs.report import hurt_shares, run_hurt
    from fedlottery.runs.results import read_csv

    # fedavg: client 0 below (0.80 < 0.90), client 2 equal (not hurt), 1 and 3 above -> 1 of 4
    # cell: client 3 unevaluated (left out), clients 0 and 1 below -> 2 of 3
    _clients_csv(tmp_path / "run", _hand_made(0, [0.80, 0.65, 0.70, 0.90], [0.85, 0.55, 0.95, None]))
    assert hurt_shares(read_csv(tmp_path / "run" / "clients.csv")) == {("fedavg", 0): 0.25, ("cell", 0): 2 / 3}
    assert run_hurt(tmp_path / "run") == {"local": None, "fedavg": 0.25, "cell": 2 / 3}
    summary = {"strategies": {n: _strategy(0.7, 1.0) for n in ("local", "fedavg", "cell")}}
    table = comparison_table([("run", summary)], [run_hurt(tmp_path / "run")])
    rows = {line.split(" | ")[1]: line for line in table.splitlines()[2:]}
    assert "hurt (clients below their local-only acc) |" in table.splitlines()[0]
    assert rows["fedavg"].endswith("| 25% |") and rows["cell"].endswith("| 67% |")
    assert rows["local"].endswith("| reference |")
    # a run without a local strategy: no column at all
    _clients_csv(tmp_path / "plain", [r for r in _hand_made(0, LOCAL_ACC, LOCAL_ACC) if r[0] != "local"])
    assert run_hurt(tmp_path / "plain") == {}
    assert "hurt" not in comparison_table([("plain", summary)], [run_hurt(tmp_path / "plain")])


def test_the_seed_table_gives_hurt_as_mean_and_std_over_seeds(tmp_path):
    from fedlottery.runs.seeds import seed_table

    summary = {"strategies": {n: _strategy(0.7, 1.0) for n in ("local", "fedavg", "cell")}}
    for seed, (fedavg, cell) in {0: ([0.80, 0.65, 0.70, 0.90], [0.1, 0.1, 0.1, 0.1]),  # 25%, 100%
                                 1: ([0.80, 0.50, 0.60, 0.40], [0.1, 0.1, 0.1, 0.1])}.items():  # 100%, 100%
        _clients_csv(tmp_path / f"seed{seed}", _hand_made(seed, fedavg, cell))
        (tmp_path / f"seed{seed}" / "summary.json").write_text(json.dumps(summary))
    rows = {line.split(" | ")[0].lstrip("| "): line for line in seed_table(tmp_path).splitlines()[2:]}
    assert rows["fedavg"].endswith("| 62% ± 53% |")  # mean 62.5 (printed to even), sample std 53.0
    assert rows["cell"].endswith("| 100% ± 0% |") and rows["local"].endswith("| reference |")
