"""FedDST: one global mask at the target density, readjusted by clients on the (r - 1) % r_adj == 0 rounds at the
cosine-annealed rate; the server's masked mean over holders and the union re-pruned by magnitude to the budget."""
import dataclasses
import math

import torch

from dst_helpers import dst_config, expected_bytes, record_bytes
from fedlottery.aggregation import ClientWeights
from fedlottery.sparsity import Mask
from strategies.base import Reply
from strategies.feddst import FedDSTOptions, FedDSTStrategy
from federation_helpers import Federation


def _swap(mask: Mask, generator: torch.Generator) -> Mask:
    """The mask with a few kept entries per layer moved elsewhere (a client's readjustment)."""
    out = {}
    for name, keep in mask.items():
        flat = keep.clone().reshape(-1)
        on, off = flat.nonzero().squeeze(1), (~flat).nonzero().squeeze(1)
        k = min(3, len(on), len(off))
        flat[on[torch.randperm(len(on), generator=generator)[:k]]] = False
        flat[off[torch.randperm(len(off), generator=generator)[:k]]] = True
        out[name] = flat.reshape(keep.shape)
    return Mask(out)


def test_server_mask_is_the_top_magnitude_part_of_the_union_at_exactly_the_budget(make_setup):
    strategy = FedDSTStrategy(make_setup("mlp_digits"), FedDSTOptions(density=0.3))
    start, generator = strategy.global_mask, torch.Generator().manual_seed(1)
    replies, uploads = [], []
    for pid, n in ((0, 10), (1, 30)):
        mask = _swap(start, generator)
        state = {k: torch.randn(v.shape, generator=generator) for k, v in strategy.global_state.items()}
        state = {k: (v * mask[k] if k in mask else v) for k, v in state.items()}
        uploads.append((state, mask, n))
        replies.append(Reply(pid, ClientWeights(state, mask, n), n, {}))
    strategy.aggregate(1, replies)
    new, repruned = strategy.global_mask, 0
    assert new.kept_per_layer() == start.kept_per_layer()  # exactly the budget, layer by layer
    for name in new:
        union = uploads[0][1][name] | uploads[1][1][name]
        num = sum(n * s[name] * m[name] for s, m, n in uploads)
        den = sum(n * m[name].float() for _, m, n in uploads)
        aggregate = torch.where(den > 0, num / den.clamp_min(1e-30), torch.zeros(()))
        assert not (new[name] & ~union).any()  # inside the union
        kept, dropped = aggregate[new[name]].abs(), aggregate[union & ~new[name]].abs()
        if len(dropped):  # (ERK leaves small layers full: nothing to re-prune there)
            repruned += 1
            assert kept.min() >= dropped.max()  # the top-|w| part of it
        assert torch.allclose(strategy.global_state[name], aggregate * new[name])  # sum n w m / sum n m, masked
    assert repruned >= 2 and all(strategy.masks[p] == new for p in strategy.masks)  # everyone gets the one global mask


def test_readjustment_only_on_the_right_rounds_at_the_annealed_rate(make_setup):
    setup = dataclasses.replace(make_setup("mlp_digits"), rounds=40)  # T_end = 20
    strategy = FedDSTStrategy(setup, FedDSTOptions(alpha=0.4, r_adj=5))
    rates = {r: strategy.rate(r) for r in range(1, 41)}
    assert {r for r, a in rates.items() if a > 0} == {1, 6, 11, 16}  # (r - 1) % 5 == 0, before T_end
    for r in (1, 6, 11, 16):
        assert math.isclose(rates[r], 0.4 * (1 + math.cos(math.pi * r / 20)) / 2)


def test_a_readjusting_client_keeps_each_layer_count_and_moves_weights(make_task, make_setup):
    mask = FedDSTStrategy(make_setup("mlp_digits"), FedDSTOptions(density=0.3)).global_mask
    moved = FedDSTStrategy.client_train(make_task(FedDSTOptions(), mask=mask, instructions={"rate": 0.3}))
    still = FedDSTStrategy.client_train(make_task(FedDSTOptions(), mask=mask, instructions={"rate": 0.0}))
    assert moved.mask.kept_per_layer() == mask.kept_per_layer() and moved.mask != mask
    assert still.mask == mask
    changed = sum(int((moved.mask[n] & ~mask[n]).sum()) for n in mask)
    assert changed > 0.1 * mask.num_kept()  # round(0.3 * kept) dropped per layer; most regrow elsewhere


def test_uplink_is_the_kept_values_plus_the_coded_mask_change(tmp_path, flower_run):
    fed = Federation(tmp_path, "feddst", dst_config("feddst", density=0.3, r_adj=2))
    for rnd in (1, 2):  # round 1 readjusts (the mask changes), round 2 does not (values only)
        messages, replies = fed.train(rnd)
        for message, reply in zip(messages, replies):
            sent = fed.strategy.sent_to(message).mask
            state, mask = _decoded(fed, reply, sent)
            measured, values = record_bytes(reply.content["model"], fed.setup.prunable)
            assert values == 4 * mask.num_kept() and abs(mask.density() - 0.3) < 0.01
            assert abs(measured - expected_bytes(state, mask, sent)) <= 0.03 * measured
            assert (mask != sent) == (rnd == 1)
    assert fed.evaluate(2)  # the global model under the global mask, on every client's test set


def _decoded(fed, reply, sent):
    from fedlottery.comm import unpack_state

    return unpack_state(reply.content["model"], fed.strategy.global_state, sent, set(fed.setup.prunable))
