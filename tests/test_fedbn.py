"""FedBN: every BatchNorm tensor stays personal, never travels and survives on its client; bad uploads are rejected."""
import copy

import torch
from flwr.app import ArrayRecord, Message, RecordDict

from fedlottery.aggregation import ClientWeights
from fedlottery.comm import encode_tensor
from strategies.base import Reply
from strategies.fedbn import FedBNOptions, FedBNStrategy

from federation_helpers import Federation, small_config


def _reply(pid, state, n=10):
    return Reply(pid, ClientWeights(state, None, n), n, {})


def test_fedbn_keeps_every_batchnorm_tensor_personal(make_setup):
    setup = make_setup("cnn_digits_bn")
    assert any(n.endswith("num_batches_tracked") for n in setup.batchnorm)
    assert FedBNStrategy.personal_names(FedBNOptions(), setup.batchnorm) == frozenset(setup.batchnorm)
    strategy = FedBNStrategy(setup)
    assert strategy.personal == frozenset(setup.batchnorm)


def test_fedbn_aggregation_leaves_batchnorm_untouched_and_averages_the_rest(make_setup):
    setup = make_setup("cnn_digits_bn")
    strategy = FedBNStrategy(setup, FedBNOptions(weighted=True))
    before = {n: t.clone() for n, t in strategy.global_state.items()}
    states = []
    for shift in (1.0, 3.0):  # even uploads that (wrongly) carried other BN values change nothing
        states.append({k: (v + shift if v.is_floating_point() else v + int(shift)) for k, v in setup.theta0.items()})
    strategy.aggregate(1, [_reply(0, states[0], n=10), _reply(1, states[1], n=30)])
    for name, tensor in strategy.global_state.items():
        if name in setup.batchnorm:
            assert torch.equal(tensor, before[name]), name  # bit for bit
        else:
            assert torch.allclose(tensor, (10 * states[0][name] + 30 * states[1][name]) / 40), name
    plain = FedBNStrategy(setup, FedBNOptions(weighted=False))
    plain.aggregate(1, [_reply(0, states[0], n=10), _reply(1, states[1], n=30)])
    name = setup.prunable[0]
    assert torch.allclose(plain.global_state[name], (states[0][name] + states[1][name]) / 2)


def test_fedbn_batchnorm_never_travels_and_survives_on_each_client(tmp_path, flower_run, monkeypatch):
    fed = Federation(tmp_path, "fedbn", small_config(["fedbn"]))
    bn, theta0 = fed.setup.batchnorm, fed.setup.theta0
    shared = set(theta0) - set(bn)
    seen: dict[tuple[int, int], dict] = {}
    real = FedBNStrategy.client_train.__func__

    def spy(cls, task):  # the BatchNorm tensors each client starts its round with
        seen[(task.server_round, task.data.partition_id)] = {n: t.detach().clone()
                                                             for n, t in task.model.state_dict().items() if n in bn}
        return real(cls, task)

    monkeypatch.setattr(FedBNStrategy, "client_train", classmethod(spy))
    kept = {}
    for rnd in (1, 2):
        messages, replies = fed.train(rnd)
        for message in messages:  # down: every shared tensor, no BatchNorm tensor
            assert set(message.content["model"]) == shared
        for reply in replies:  # up: the same
            assert set(reply.content["model"]) == shared
        assert all(torch.equal(fed.strategy.global_state[n], theta0[n]) for n in bn)  # never overwritten
        kept[rnd] = {pid: fed.stored(pid).personal for pid in range(4)}
    for pid in range(4):
        assert all(torch.equal(seen[(1, pid)][n], theta0[n]) for n in bn)  # a fresh client starts from theta_0's
        assert set(kept[2][pid]) == set(bn)
        assert not torch.equal(kept[1][pid][bn[0]], theta0[bn[0]])  # its own statistics, from its own data
        assert all(torch.equal(seen[(2, pid)][n], kept[1][pid][n]) for n in bn)  # round 2 started from them
    assert not torch.equal(kept[2][0][bn[0]], kept[2][1][bn[0]])  # each client its own
    results = fed.evaluate(2)
    assert all(0.0 <= r["test-acc"] <= 1.0 for r in results.values())


def test_fedbn_rejects_a_nan_upload_and_a_batchnorm_upload(tmp_path, flower_run):
    fed = Federation(tmp_path, "fedbn", small_config(["fedbn"]))
    strategy = fed.strategy
    messages = list(strategy.configure_train(1, None, None, None))
    replies = fed._exchange(messages, training=True)
    honest = {int(m.content["config"]["partition-id"]): r for m, r in zip(messages, replies)}
    weight = fed.setup.prunable[0]
    nan_record = ArrayRecord(dict(honest[0].content["model"].items()))
    poisoned = torch.zeros(fed.setup.theta0[weight].shape)
    poisoned.view(-1)[0] = float("nan")
    nan_record[weight] = encode_tensor(poisoned)
    bn_record = ArrayRecord(dict(honest[1].content["model"].items()))
    bn_record[fed.setup.batchnorm[0]] = encode_tensor(fed.setup.theta0[fed.setup.batchnorm[0]])
    forged = {0: nan_record, 1: bn_record}
    crafted = [Message(RecordDict({"model": forged[pid], "metrics": honest[pid].content["metrics"]}),
                       reply_to=next(m for m in messages if int(m.content["config"]["partition-id"]) == pid))
               for pid in forged]
    expected = copy.deepcopy(strategy)  # the same round, given only the honest replies
    expected.aggregate_train(1, [r for pid, r in honest.items() if pid not in forged])
    _, metrics = strategy.aggregate_train(1, crafted + [r for pid, r in honest.items() if pid not in forged])
    assert int(metrics["clients"]) == len(honest) - 2
    causes = " | ".join(strategy.failures)
    assert "non-finite" in causes and "upload has tensors the model lacks" in causes
    assert all(torch.equal(strategy.global_state[n], expected.global_state[n]) for n in strategy.global_state)
