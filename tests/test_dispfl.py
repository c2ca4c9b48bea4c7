"""DisPFL through a relay: neighbours drawn per (seed, round, partition) apart from the sampler; each entry averaged
over the chosen neighbours (and the client) that hold it, then the client's own mask; the downlink carries exactly
the neighbours' sparse models, each with its mask coded in full; the uplink the client's values plus mask change."""
import dataclasses

import torch

from dst_helpers import dst_config, expected_bytes, record_bytes
from fedlottery.comm import unpack_state
from fedlottery.sparsity import Mask
from strategies.base import RELAY_PREFIX
from strategies.dispfl import DisPFLOptions, DisPFLStrategy, neighbour_average
from federation_helpers import Federation


def test_neighbours_are_other_clients_fixed_by_seed_round_and_partition(make_setup):
    strategy = DisPFLStrategy(make_setup("mlp_digits", clients=10), DisPFLOptions(neighbours=0.3))
    scheduled = strategy.sample(7)
    picks = strategy.neighbours_of(4, 7)
    assert len(picks) == 3 and 4 not in picks and picks == strategy.neighbours_of(4, 7)
    assert strategy.sample(7) == scheduled  # drawing neighbours never moves the paired schedule
    again = DisPFLStrategy(make_setup("mlp_digits", clients=10), DisPFLOptions(neighbours=0.3))
    again.sample(1)  # a sampler that moved on changes nothing
    assert again.neighbours_of(4, 7) == picks
    draws = {tuple(strategy.neighbours_of(p, r)) for p in range(10) for r in range(1, 6)}
    assert len(draws) > 10  # they do vary with round and partition
    other_seed = DisPFLStrategy(dataclasses.replace(make_setup("mlp_digits", clients=10), seed=5),
                                DisPFLOptions(neighbours=0.3))
    assert [other_seed.neighbours_of(p, 7) for p in range(10)] != [strategy.neighbours_of(p, 7) for p in range(10)]
    assert DisPFLStrategy(make_setup("mlp_digits", clients=10), DisPFLOptions(neighbours=4)).neighbour_count() == 4


def test_average_is_over_the_holders_among_the_chosen_only_then_the_own_mask():
    own_mask = Mask({"w": torch.tensor([True, True, True, True, False])})
    a = Mask({"w": torch.tensor([True, False, True, False, True])})
    b = Mask({"w": torch.tensor([True, True, False, False, True])})
    own = {"w": torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0]), "b": torch.tensor([0.0])}
    others = [({"w": torch.tensor([4.0, 0.0, 7.0, 0.0, 9.0]), "b": torch.tensor([3.0])}, a),
              ({"w": torch.tensor([7.0, 5.0, 0.0, 0.0, 9.0]), "b": torch.tensor([6.0])}, b)]
    got = neighbour_average(own, own_mask, others, include_self=True)
    assert got["w"].tolist() == [4.0, 3.0, 4.0, 1.0, 0.0] and got["b"].tolist() == [3.0]
    alone = neighbour_average(own, own_mask, others, include_self=False)
    assert alone["w"].tolist() == [5.5, 5.0, 7.0, 1.0, 0.0]  # entry 3: nobody chosen holds it, own value stays


def test_relay_sends_the_neighbours_sparse_models_and_meters_what_they_would_send(tmp_path, flower_run):
    fed = Federation(tmp_path, "dispfl", dst_config("dispfl", density=0.3, neighbours=2))
    prunable = set(fed.setup.prunable)
    for rnd in (1, 2):
        stored = {p: fed.strategy.last_model(p) for p in fed.strategy.masks}
        masks = {p: fed.strategy.masks[p] for p in fed.strategy.masks}
        messages, replies = fed.train(rnd)
        for message, reply in zip(messages, replies):
            pid = int(message.content["config"]["partition-id"])
            relays = {k for k in message.content.array_records if k.startswith(RELAY_PREFIX)}
            chosen = fed.strategy.neighbours_of(pid, rnd)
            assert relays == {f"{RELAY_PREFIX}{j}" for j in chosen} and len(message.content["model"]) == 0
            down = 0
            for j in chosen:
                record = message.content[f"{RELAY_PREFIX}{j}"]
                state, mask = unpack_state(record, fed.setup.theta0, None, prunable)
                assert mask == masks[j] and all(torch.equal(state[n], stored[j][n]) for n in state)
                measured, values = record_bytes(record, prunable)
                assert values == 4 * masks[j].num_kept()
                assert abs(measured - expected_bytes(stored[j], masks[j], None)) <= 0.03 * measured
                down += measured
            assert down > 2 * 4 * 0.3 * masks[pid].numel()  # two neighbours' values, and their masks
            assert reply.content["metrics"]["neighbours"] == 2.0  # the client decoded and averaged both
            sent = fed.strategy.sent_to(message).mask
            up_state, up_mask = unpack_state(reply.content["model"], fed.setup.theta0, sent, prunable)
            measured, values = record_bytes(reply.content["model"], prunable)
            assert up_mask.kept_per_layer() == sent.kept_per_layer() and up_mask != sent
            assert values == 4 * up_mask.num_kept()
            assert abs(measured - expected_bytes(up_state, up_mask, sent)) <= 0.03 * measured
    assert len(fed.evaluate(2)) == 6
