"""Paired comparisons: every strategy of a run trains the same clients in the same rounds (fedlottery.schedule), and
what a client draws depends on (seed, round, partition), never on the strategy's name.

A method's gain over FedAvg is a paired difference only if both saw the same clients and the same batches; with a
per-strategy RNG, FLASH's hunt (or any extra draw) shifted every later round's clients, and a strategy's name
changed its clients' batches, so "the same algorithm under another name" gave other numbers."""
import math
import uuid
from pathlib import Path

import pytest
import torch
from flwr.app import Context, Message, MessageType, RecordDict

import fedlottery.runtime.client_app as client_app
import strategies
from fedlottery.runs.results import read_csv, sampled_ids
from fedlottery.runtime.server_app import run_experiment
from fedlottery.schedule import client_seed, draw_ids, scheduled_clients
from strategies import register
from strategies.fedavg import FedAvgStrategy
from strategies.fedpm import FedPMStrategy
from strategies.flash import DENSITY_PREFIX, FlashJMWSTStrategy, FlashOptions
from strategies.base import Reply
from fedlottery.aggregation import ClientWeights
from federation_helpers import Federation, small_config

RENAMED = "fedavg-under-another-name"


# ---- the pure function ---------------------------------------------------------------------------------------------
def test_the_schedule_is_a_pure_function_of_seed_round_population_and_size():
    population = list(range(30))
    first = scheduled_clients(7, 3, population, 5)
    assert first == scheduled_clients(7, 3, reversed(population), 5)  # the population's order does not matter
    assert first == sorted(set(first)) and len(first) == 5 and set(first) <= set(population)
    by_round = [tuple(scheduled_clients(7, r, population, 5)) for r in range(1, 21)]
    by_seed = [tuple(scheduled_clients(s, 3, population, 5)) for s in range(20)]
    assert len(set(by_round)) > 15 and len(set(by_seed)) > 15  # rounds and seeds draw differently
    assert scheduled_clients(7, 3, [p + 100 for p in population], 5) == [p + 100 for p in first]
    assert scheduled_clients(7, 3, population, 30) == population
    with pytest.raises(ValueError, match="cannot draw 31 of 30 clients"):
        scheduled_clients(7, 3, population, 31)


def test_client_streams_differ_by_purpose_round_and_partition_but_name_no_strategy():
    seeds = {client_seed(3, r, p, purpose) for r in (1, 2) for p in (0, 1) for purpose in ("train", "finetune")}
    assert len(seeds) == 8
    assert client_seed(3, 1, 0) == client_seed(3, 1, 0, "train")
    # a purpose's own draw of clients never moves the schedule, and differs from it
    assert draw_ids(3, 1, "flash-hunters", range(30), 5) != scheduled_clients(3, 1, range(30), 5)


# ---- strategies sample the schedule ---------------------------------------------------------------------------------
def _finish_hunt(flash: FlashJMWSTStrategy, hunters: list[int]) -> None:
    densities = {DENSITY_PREFIX + n: 0.3 for n in flash.setup.prunable}
    flash.aggregate(1, [Reply(p, ClientWeights({}, None, 10), 10, dict(densities)) for p in hunters])
    assert flash.hunted


@pytest.mark.parametrize("hunt_fraction, relation", [(0.5, "superset"), (0.1, "subset")])
def test_fedavg_flash_and_fedpm_sample_the_same_clients_after_the_hunt(make_setup, hunt_fraction, relation):
    setup = make_setup(clients=20, per_round=4, seed=11)
    fedavg, fedpm = FedAvgStrategy(setup), FedPMStrategy(setup)
    flash = FlashJMWSTStrategy(setup, FlashOptions(density=0.3, hunt_fraction=hunt_fraction))
    hunters, scheduled = flash.sample(1), fedavg.sample(1)
    assert len(hunters) == math.ceil(hunt_fraction * 20) and len(hunters) != len(scheduled)
    # the documented relation of the hunt round: built on round 1's scheduled clients, topped up or cut down
    if relation == "superset":
        assert set(scheduled) < set(hunters)
    else:
        assert set(hunters) < set(scheduled)
    assert fedpm.sample(1) == scheduled
    _finish_hunt(flash, hunters)
    for rnd in range(2, 12):
        clients = fedavg.sample(rnd)
        assert flash.sample(rnd) == clients == fedpm.sample(rnd), rnd
        assert clients == scheduled_clients(11, rnd, range(20), 4)
    assert fedavg.sample(5) == fedpm.sample(5)  # asking again, out of order, draws the same (no hidden state)


# ---- a renamed FedAvg is FedAvg, bit for bit ------------------------------------------------------------------------
@pytest.fixture
def renamed_fedavg(monkeypatch):
    """FedAvg registered under another name for this test only."""
    monkeypatch.setattr(strategies, "_registered", dict(strategies._registered))
    return register(type("RenamedFedAvg", (FedAvgStrategy,), {"name": RENAMED}))


def test_a_renamed_fedavg_trains_to_bit_identical_weights(tmp_path, flower_run, renamed_fedavg):
    cfg = small_config(["fedavg", RENAMED], clients_per_round=2, model={"name": "mlp_digits"},
                       evaluation={"finetune_epochs": 1})
    runs = {name: Federation(tmp_path / name, name, cfg) for name in ("fedavg", RENAMED)}
    sent = {}
    for name, fed in runs.items():
        messages, _ = fed.train(1)
        sent[name] = sorted(int(m.content["config"]["partition-id"]) for m in messages)
    assert sent["fedavg"] == sent[RENAMED] == scheduled_clients(cfg.seed, 1, range(4), 2)
    ours, theirs = runs["fedavg"].strategy.global_state, runs[RENAMED].strategy.global_state
    assert not all(torch.equal(ours[n], runs["fedavg"].setup.theta0[n]) for n in ours)  # it did train
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    tuned = {name: {p: r["finetuned-acc"] for p, r in fed.evaluate(1).items()} for name, fed in runs.items()}
    assert tuned["fedavg"] == tuned[RENAMED]


# ---- the real round loop writes the schedule it used -------------------------------------------------------------
class InProcessGrid:
    """A Flower Grid stand-in that hands each message to the real ClientApp handlers of in-process clients."""

    def __init__(self, num_clients: int, state_dir: Path):
        """Each node owns its client-state directory (its node config says where), as a simulation's do."""
        self.contexts = {100 + pid: Context(run_id=1, node_id=100 + pid,
                                            node_config={"partition-id": pid, "state-dir": str(state_dir)},
                                            state=RecordDict(), run_config={}) for pid in range(num_clients)}

    def get_node_ids(self):
        return list(self.contexts)

    def send_and_receive(self, messages, timeout=None):
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid.uuid4())  # what Flower sets when it pushes
        return [self._answer(m, self.contexts[m.metadata.dst_node_id]) for m in messages]

    @staticmethod
    def _answer(message: Message, context: Context) -> Message:
        kind = message.metadata.message_type
        if kind == MessageType.QUERY:
            return client_app.setup(message, context)
        return client_app._handle(message, context, training=kind == MessageType.TRAIN)


def test_rounds_csv_records_the_paired_schedule_for_every_strategy(tmp_path, flower_run):
    names = ["fedavg", "flash-jmwst", "fedpm"]
    cfg = small_config(names, rounds=3, clients_per_round=2, model={"name": "mlp_digits"}, local={"epochs": 1},
                       checkpoint={"every": 0},
                       strategy_options={"flash-jmwst": {"hunt_fraction": 0.75, "hunt_epochs": 1}})
    run_experiment(InProcessGrid(4, (tmp_path / "client_state").resolve()), cfg, tmp_path, log=lambda _: None)
    rows = read_csv(tmp_path / "rounds.csv")
    assert [(r["strategy"], r["round"]) for r in rows] == [(n, rnd) for n in names for rnd in (1, 2, 3)]
    for row in rows:
        sampled, scheduled = sampled_ids(row["sampled"]), scheduled_clients(cfg.seed, row["round"], range(4), 2)
        if row["strategy"] == "flash-jmwst" and row["round"] == 1:  # the hunt: the scheduled two plus one
            assert len(sampled) == 3 and set(scheduled) < set(sampled)
        else:
            assert sampled == scheduled, row
        assert row["clients"] == len(sampled)


def test_a_resumed_older_rounds_csv_keeps_its_own_header(tmp_path):
    from fedlottery.runs.results import CsvLog
    from fedlottery.runs.results import LATER_ROUND_COLUMNS, ROUND_COLUMNS

    older = [c for c in ROUND_COLUMNS if c not in LATER_ROUND_COLUMNS]
    CsvLog(tmp_path / "rounds.csv", older).append({"round": 1, "strategy": "fedavg"})
    with pytest.raises(ValueError, match="use another output dir"):  # a fresh run never mixes schemas
        CsvLog(tmp_path / "rounds.csv", ROUND_COLUMNS)
    log = CsvLog(tmp_path / "rounds.csv", ROUND_COLUMNS, optional=LATER_ROUND_COLUMNS)  # a resume goes on
    log.append({"round": 2, "strategy": "fedavg", "sampled": "0 1"})
    rows = read_csv(tmp_path / "rounds.csv")
    assert list(rows[0]) == older and [r["round"] for r in rows] == [1, 2]
    assert sampled_ids("0 1") == [0, 1] and sampled_ids(3) == [3] and sampled_ids(None) == []
