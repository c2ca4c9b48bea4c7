"""`fedlottery merge`: a strategy run later joins a recorded run of the same experiment, and nothing else does."""
import copy

import pytest

from fedlottery.cli import main
from fedlottery.config import FederatedConfig, from_dict, to_dict
from fedlottery.errors import ConfigError
from fedlottery.runs.merge import merge
from fedlottery.runs.results import CsvLog, read_csv, read_json, write_json

ROUND_COLUMNS = ["round", "strategy", "seed", "personalized_acc_mean"]
CLIENT_COLUMNS = ["strategy", "seed", "partition_id", "final_acc"]


def _config(**changes) -> dict:
    data = {"seed": 0, "strategies": ["fedavg"], "rounds": 2, "clients_per_round": 2, "data": {"dataset": "digits"},
            "partition": {"num_clients": 4}}
    data.update(changes)
    return to_dict(from_dict(FederatedConfig, data))


def _run(where, finished, unfinished=(), config=None, acc=0.5, columns=ROUND_COLUMNS):
    """A run directory as a run leaves it: rows of every strategy it started, summary of those it finished."""
    where.mkdir(parents=True)
    rounds, clients = CsvLog(where / "rounds.csv", columns), CsvLog(where / "clients.csv", CLIENT_COLUMNS)
    for name in [*finished, *unfinished]:
        for rnd in (1, 2):
            rounds.append({"round": rnd, "strategy": name, "seed": 0, "personalized_acc_mean": acc,
                           "sampled": f"{rnd} 3"})
        clients.append({"strategy": name, "seed": 0, "partition_id": 0, "final_acc": acc})
    config = copy.deepcopy(config or _config())
    config["strategies"] = [*finished, *unfinished]
    summary = {"acc": acc, "personalized_acc_final": acc, "bytes_up": 1000, "bytes_down": 2000}
    write_json(where / "summary.json", {"config": config, "strategies": {n: dict(summary) for n in finished}})
    return where


def test_adds_the_finished_strategies_and_drops_unfinished_rows_on_both_sides(tmp_path):
    into = _run(tmp_path / "record", ["fedavg", "fedbn"], unfinished=["fedpm"], acc=0.5)
    source = _run(tmp_path / "new", ["fedselect"], unfinished=["flash-jmwst"],
                  config=_config(strategy_options={"fedselect": {"grow_rate": 0.3}}), acc=0.9)
    lines = merge(source, into)
    assert lines == [f"{into}: added fedselect from {source}"]
    rows = read_csv(into / "rounds.csv")
    assert [(r["strategy"], r["round"]) for r in rows] == [
        ("fedavg", 1), ("fedavg", 2), ("fedbn", 1), ("fedbn", 2), ("fedselect", 1), ("fedselect", 2)]
    assert [r["final_acc"] for r in read_csv(into / "clients.csv")] == [0.5, 0.5, 0.9]
    summary = read_json(into / "summary.json")
    assert list(summary["strategies"]) == ["fedavg", "fedbn", "fedselect"]
    assert summary["config"]["strategies"] == ["fedavg", "fedbn", "fedselect"]
    assert summary["config"]["strategy_options"]["fedselect"] == {"grow_rate": 0.3}
    assert (into / "rounds.csv").read_bytes().count(b"\r\n") == 7  # the line ends CsvLog writes


def test_refuses_another_experiment_naming_the_setting(tmp_path):
    into = _run(tmp_path / "record", ["fedavg"])
    source = _run(tmp_path / "new", ["fedbn"], config=_config(rounds=3))
    before = (into / "rounds.csv").read_bytes()
    with pytest.raises(ConfigError, match="differs in rounds"):
        merge(source, into)
    assert (into / "rounds.csv").read_bytes() == before


def test_a_setting_one_run_predates_counts_at_its_default(tmp_path):
    old = _config()
    del old["evaluation"]["sample"]  # a record made before evaluation.sample existed
    into = _run(tmp_path / "record", ["fedavg"], config=old)
    merge(_run(tmp_path / "new", ["fedbn"]), into)
    assert list(read_json(into / "summary.json")["strategies"]) == ["fedavg", "fedbn"]


def test_a_strategy_both_hold_needs_replace(tmp_path):
    into = _run(tmp_path / "record", ["fedavg", "fedbn"], acc=0.5)
    source = _run(tmp_path / "new", ["fedbn"], acc=0.9)
    with pytest.raises(ConfigError, match="already holds fedbn; pass --replace"):
        merge(source, into)
    assert merge(source, into, replace=True)[0].endswith("(replaced fedbn)")
    rows = read_csv(into / "rounds.csv")
    assert [(r["strategy"], r["personalized_acc_mean"]) for r in rows if r["round"] == 1] == [
        ("fedavg", 0.5), ("fedbn", 0.9)]


def test_seeds_directories_merge_seed_by_seed_through_the_cli(tmp_path, capsys):
    for seed in (0, 1):
        _run(tmp_path / "record" / f"seed{seed}", ["fedavg"])
        _run(tmp_path / "new" / f"seed{seed}", ["fedselect"])
    assert main(["merge", str(tmp_path / "new"), str(tmp_path / "record")]) == 0
    out = capsys.readouterr().out
    assert "seed0: added fedselect" in out and "seed1: added fedselect" in out
    for seed in (0, 1):
        assert list(read_json(tmp_path / "record" / f"seed{seed}" / "summary.json")["strategies"]) == [
            "fedavg", "fedselect"]
    assert main(["merge", str(tmp_path / "nowhere"), str(tmp_path / "record")]) == 2
    assert "nothing to merge" in capsys.readouterr().err


def test_only_the_named_strategies_are_taken(tmp_path, capsys):
    variant = _run(tmp_path / "variant", ["flash-jmwst"],
                   config=_config(strategy_options={"flash-jmwst": {"personal_bn": True}}), acc=0.7)
    record = _run(tmp_path / "record", ["fedavg", "fedbn", "flash-jmwst"], acc=0.5)
    assert main(["merge", str(record), str(variant), "--strategies", "fedavg,fedbn"]) == 0
    summary = read_json(variant / "summary.json")
    assert list(summary["strategies"]) == ["flash-jmwst", "fedavg", "fedbn"]
    assert summary["config"]["strategy_options"] == {"flash-jmwst": {"personal_bn": True}}  # the variant's own
    assert [(r["strategy"], r["final_acc"]) for r in read_csv(variant / "clients.csv")] == [
        ("flash-jmwst", 0.7), ("fedavg", 0.5), ("fedbn", 0.5)]
    before = (variant / "rounds.csv").read_bytes()
    with pytest.raises(ConfigError, match="holds no finished local"):
        merge(record, variant, only=["fedavg", "local"])
    assert (variant / "rounds.csv").read_bytes() == before


def test_a_seed_run_by_another_process_joins_a_seeds_record(tmp_path, capsys):
    for seed in (0, 1):
        _run(tmp_path / "record" / f"seed{seed}", ["fedavg", "fedbn"], config=_config(seed=seed))
    other = _run(tmp_path / "other" / "seed2", ["fedavg", "fedbn"], config=_config(seed=2))
    (other / "client_state").mkdir()  # a run's working files stay behind
    assert main(["merge", str(tmp_path / "other"), str(tmp_path / "record")]) == 0
    out = capsys.readouterr().out
    assert "added seed 2" in out and "table.md" in out
    joined = tmp_path / "record" / "seed2"
    assert sorted(p.name for p in joined.iterdir()) == ["clients.csv", "rounds.csv", "summary.json"]
    assert (joined / "rounds.csv").read_bytes() == (other / "rounds.csv").read_bytes()
    assert (tmp_path / "record" / "table.md").read_text().startswith("seeds [0, 1, 2]")


def test_a_seed_of_another_experiment_or_missing_a_strategy_is_refused(tmp_path):
    _run(tmp_path / "record" / "seed0", ["fedavg", "fedbn"])
    _run(tmp_path / "other" / "seed1", ["fedavg", "fedbn"], config=_config(seed=1, rounds=3))
    with pytest.raises(ConfigError, match="different experiments.*rounds"):
        merge(tmp_path / "other", tmp_path / "record")
    _run(tmp_path / "short" / "seed1", ["fedavg"], config=_config(seed=1))
    with pytest.raises(ConfigError, match="lacks fedbn"):
        merge(tmp_path / "short", tmp_path / "record")
    assert not (tmp_path / "record" / "seed1").exists()


def test_where_the_fine_tuned_column_is_computed_does_not_split_an_experiment(tmp_path):
    _run(tmp_path / "record", ["fedavg"])
    _run(tmp_path / "new", ["fedbn"], config=_config(evaluation={"finetune_epochs": 0, "finetune_rounds": "last"}))
    assert "added fedbn" in merge(tmp_path / "new", tmp_path / "record")[0]


def test_the_first_seed_starts_a_new_record_and_a_foreign_directory_is_refused(tmp_path, capsys):
    _run(tmp_path / "out0" / "seed0", ["fedavg", "fedbn"])
    assert main(["merge", str(tmp_path / "out0"), str(tmp_path / "record")]) == 0
    assert "started the record with seed 0" in capsys.readouterr().out
    assert read_json(tmp_path / "record" / "seed0" / "summary.json")["strategies"].keys() == {"fedavg", "fedbn"}
    assert (tmp_path / "record" / "table.md").read_text().startswith("seeds [0]")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        merge(tmp_path / "out0", tmp_path / "elsewhere")


def test_the_hang_guard_does_not_split_an_experiment(tmp_path):
    _run(tmp_path / "record", ["fedavg"], config=_config(simulation={"round_timeout": 600}))
    _run(tmp_path / "new", ["fedbn"], config=_config(simulation={"round_timeout": 1800}))
    assert "added fedbn" in merge(tmp_path / "new", tmp_path / "record")[0]


@pytest.mark.parametrize("older", ["record", "new"])
def test_a_record_older_than_a_column_takes_the_newer_header_its_cells_empty(tmp_path, older):
    newer_columns = ["round", "strategy", "seed", "sampled", "personalized_acc_mean"]
    columns = {side: ROUND_COLUMNS if side == older else newer_columns for side in ("record", "new")}
    _run(tmp_path / "record", ["fedavg"], columns=columns["record"])
    _run(tmp_path / "new", ["ditto"], columns=columns["new"])
    merge(tmp_path / "new", tmp_path / "record")
    with (tmp_path / "record" / "rounds.csv").open() as f:
        assert f.readline().strip() == ",".join(newer_columns)
    sampled = {(r["strategy"], r["round"]): r["sampled"] for r in read_csv(tmp_path / "record" / "rounds.csv")}
    old, new = ("fedavg", "ditto") if older == "record" else ("ditto", "fedavg")
    assert sampled == {(old, 1): None, (old, 2): None, (new, 1): "1 3", (new, 2): "2 3"}


def test_columns_other_than_later_additions_still_refuse(tmp_path):
    _run(tmp_path / "record", ["fedavg"])
    _run(tmp_path / "new", ["fedbn"], columns=["round", "strategy", "seed", "global_acc", "personalized_acc_mean"])
    with pytest.raises(ConfigError, match="different columns"):
        merge(tmp_path / "new", tmp_path / "record")
