"""Seeds as an axis: mean ± std over seeds, paired differences against a baseline, one directory per seed."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedlottery.runs.seeds import seed_table

ROOT = Path(__file__).resolve().parents[1]


def _summary(accs: dict[str, float], up: dict[str, int]) -> dict:
    return {"strategies": {n: {"personalized_acc_final": a, "finetuned_acc_final": None, "deployed_acc_final": None,
                               "paper_metric_best_of_rounds": a, "global_acc_final": a, "density_mean_final": 1.0,
                               "bytes_up": up[n], "bytes_down": up[n], "values_bytes_up": up[n]}
                           for n, a in accs.items()}}


def test_the_table_gives_mean_std_and_paired_differences(tmp_path):
    for seed, (a, b) in {0: (0.80, 0.70), 1: (0.90, 0.76), 2: (0.85, 0.79)}.items():
        d = tmp_path / f"seed{seed}"
        d.mkdir()
        (d / "summary.json").write_text(json.dumps(_summary({"fedavg": b, "mine": a}, {"fedavg": 100, "mine": 25})))
    table = seed_table(tmp_path)
    row = next(line for line in table.splitlines() if line.startswith("| mine "))
    assert "| 0,1,2 |" in row and "85.00 ± 5.00" in row  # mean ± sample std of 80, 90, 85
    # paired: 10, 14, 6 points -> 10.00 ± 4.00; uplink 0.25 of the baseline's
    assert "10.00 ± 4.00" in row and "0.250 ± 0.000" in row
    assert "Δ personalised vs fedavg (paired)" in table


@pytest.mark.slow
def test_run_with_seeds_writes_one_directory_per_seed_and_the_table(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "strategies: [fedavg, lotteryfl]\nrounds: 2\nclients_per_round: 2\ndata: {dataset: digits}\n"
        "model: {name: mlp_digits}\npartition: {scheme: shards, num_clients: 4, shard_size: 40, "
        "shards_per_client: 2, val_fraction: 0.25}\nlocal: {lr: 0.05, epochs: 1}\nsimulation: {num_cpus: 1}\n")
    out = tmp_path / "out"
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    done = subprocess.run([sys.executable, "-m", "fedlottery.cli", "run", str(config), "--out", str(out),
                           "--seeds", "0,1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for seed in (0, 1):
        rows = (out / f"seed{seed}" / "rounds.csv").read_text().splitlines()
        header = rows[0].split(",")
        assert {r.split(",")[header.index("seed")] for r in rows[1:]} == {str(seed)}
    table = (out / "table.md").read_text()
    assert "| lotteryfl | 0,1 |" in table and "±" in table
    for png in ("accuracy_vs_round_seeds.png", "frontier_seeds.png", "client_accuracy_seeds.png"):
        assert (out / png).stat().st_size > 1000
    again = subprocess.run([sys.executable, "-m", "fedlottery.cli", "run", str(config), "--out", str(out),
                            "--seeds", "0,1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "--overwrite" in again.stderr  # results are never mixed silently


def test_report_on_a_seeds_directory_gives_the_table_and_plots_over_seeds(tmp_path, capsys):
    from fedlottery.cli import main

    for seed, (a, b) in {0: (0.80, 0.70), 1: (0.90, 0.76)}.items():
        d = tmp_path / f"seed{seed}"
        d.mkdir()
        summary = _summary({"fedavg": b, "mine": a}, {"fedavg": 100, "mine": 25})
        summary["strategies"]["mine"]["finetuned_acc_final"] = a + 0.05
        (d / "summary.json").write_text(json.dumps(summary))
        (d / "rounds.csv").write_text("round,strategy,personalized_acc_mean\n"
                                      f"1,fedavg,{b}\n1,mine,{a}\n")
        (d / "clients.csv").write_text(f"strategy,final_acc\nfedavg,{b}\nmine,{a}\n")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(["report", str(tmp_path), "--baseline", "mine"]) == 0
    out = capsys.readouterr().out
    assert "Δ personalised vs mine (paired)" in out and "| fedavg | 0,1 | 73.00 ± 4.24 |" in out
    assert "--plots DIR" in out
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # a report reads, never writes
    plots = tmp_path.parent / f"{tmp_path.name}_plots"
    assert main(["report", str(tmp_path), "--plots", str(plots)]) == 0
    assert (plots / "frontier_seeds.png").stat().st_size > 1000
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    (tmp_path / "seed0" / "summary.json").unlink()
    (tmp_path / "seed1" / "summary.json").unlink()
    assert main(["report", str(tmp_path)]) == 2  # neither a run nor a seeds directory: an error, not a table


def _rounds(where: Path, cells: dict[str, str]) -> None:
    where.mkdir(exist_ok=True)
    (where / "summary.json").write_text(json.dumps(_summary({n: 0.5 for n in cells}, {n: 1 for n in cells})))
    rows = "".join(f"{r},{n},{cell}\n" for n, cell in cells.items() for r in (1, 2))
    (where / "rounds.csv").write_text("round,strategy,sampled\n" + rows)


def test_a_record_joined_across_the_paired_schedule_names_the_strategies_without_one(tmp_path):
    from fedlottery.runs.seeds import schedule_note
    for seed in (0, 1):
        _rounds(tmp_path / f"seed{seed}", {"fedavg": "", "fedbn": "", "ditto": "3 7"})
    note = schedule_note(tmp_path)
    assert note.startswith("Client schedule not recorded for fedavg, fedbn (")
    _rounds(tmp_path / "seed1", {"fedavg": "1 2", "fedbn": "4", "ditto": "3 7"})
    assert schedule_note(tmp_path).startswith("Client schedule not recorded for fedavg, fedbn (")  # seed 0's rows
    for seed in (0, 1):
        _rounds(tmp_path / f"seed{seed}", {"fedavg": "", "ditto": ""})
    assert schedule_note(tmp_path) == ""  # none recorded: nothing is mixed
    for seed in (0, 1):
        _rounds(tmp_path / f"seed{seed}", {"fedavg": "1", "ditto": "2 3"})
    assert schedule_note(tmp_path) == ""
