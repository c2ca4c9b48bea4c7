"""FedSpa: a personalised mask per client at one fixed density (different between clients, seeded by partition),
kept at that density by client-side drop-and-regrow; the server's mean over holders only; own subnetwork down."""
import torch

from dst_helpers import dst_config, expected_bytes, record_bytes
from fedlottery.aggregation import ClientWeights
from fedlottery.comm import unpack_state
from fedlottery.sparsity import Mask
from strategies.base import Reply
from strategies.fedspa import FedSpaOptions, FedSpaStrategy
from federation_helpers import Federation


def test_initial_masks_are_personal_at_the_density_and_derived_alike_on_both_sides(make_setup):
    setup = make_setup("mlp_digits", clients=4)
    strategy = FedSpaStrategy(setup, FedSpaOptions(density=0.3))
    masks = [strategy.masks[p] for p in range(4)]
    assert all(abs(m.density() - 0.3) < 1e-3 for m in masks)
    assert all(masks[i].hamming(masks[j]) > 0.1 for i in range(4) for j in range(i))
    client_side = FedSpaStrategy.initial_mask(FedSpaOptions(density=0.3), setup.seed, 2, setup.theta0, setup.prunable)
    assert client_side == masks[2] and strategy.client_holds[2] == masks[2]  # nothing to send for it


def test_server_mean_is_over_holders_only(make_setup):
    setup = make_setup("mlp_digits", clients=3)
    strategy = FedSpaStrategy(setup, FedSpaOptions(density=0.3))
    before = {n: t.clone() for n, t in strategy.global_state.items()}
    ups = []
    for pid, value in ((0, 1.0), (1, 3.0)):
        mask = strategy.masks[pid]
        ups.append((mask, value))
    replies = [Reply(p, ClientWeights({n: (torch.full_like(t, v) * m[n] if n in m else torch.full_like(t, v))
                                       for n, t in before.items()}, m, 5), 5, {}) for p, (m, v) in enumerate(ups)]
    strategy.aggregate(1, replies)
    for name in setup.prunable:
        a, b = ups[0][0][name], ups[1][0][name]
        got = strategy.global_state[name]
        assert torch.all(got[a & b] == 2.0) and torch.all(got[a & ~b] == 1.0) and torch.all(got[~a & b] == 3.0)
        assert torch.equal(got[~a & ~b], before[name][~a & ~b])  # nobody held it: unchanged
    bias = next(n for n in before if n not in setup.prunable)
    assert torch.all(strategy.global_state[bias] == 2.0)


def test_masks_stay_at_the_density_differ_between_clients_and_uplink_is_values_plus_mask_change(tmp_path,
                                                                                               flower_run):
    fed = Federation(tmp_path, "fedspa", dst_config("fedspa", density=0.3))
    messages, replies = fed.train(1)
    for message, reply in zip(messages, replies):
        pid = int(message.content["config"]["partition-id"])
        sent = fed.strategy.sent_to(message).mask
        down, down_mask = unpack_state(message.content["model"], fed.strategy.global_state, sent,
                                       set(fed.setup.prunable))
        assert down_mask == sent == fed.strategy.initial_mask(fed.strategy.options, fed.setup.seed, pid,
                                                              fed.setup.theta0, fed.setup.prunable)
        assert all(torch.all(down[n][~sent[n]] == 0) for n in sent)  # only its own subnetwork went down
        measured_down, values_down = record_bytes(message.content["model"], fed.setup.prunable)
        assert values_down == 4 * sent.num_kept()  # the mask itself: known to the client, not sent
        state, mask = unpack_state(reply.content["model"], fed.strategy.global_state, sent, set(fed.setup.prunable))
        measured, values = record_bytes(reply.content["model"], fed.setup.prunable)
        assert mask != sent and mask.kept_per_layer() == sent.kept_per_layer()
        assert values == 4 * mask.num_kept() and abs(mask.density() - 0.3) < 0.01
        assert abs(measured - expected_bytes(state, mask, sent)) <= 0.03 * measured
    after = [fed.strategy.masks[p] for p in fed.strategy.masks]
    assert len({tuple(m.kept_per_layer().values()) for m in after}) == 1  # one density (one budget) for all
    assert min(after[i].hamming(after[j]) for i in range(len(after)) for j in range(i)) > 0.1
    assert len(fed.evaluate(1)) == 6
