"""Crafted client replies driven through the real server half (`aggregate_train`) of every built-in strategy:
each bad reply is rejected with its reason, θ_g is exactly what the honest replies alone give, and the run
goes on."""
import copy
import math
import uuid

import pytest
import torch
from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord, RecordDict

from fedlottery.comm import encode_tensor, pack_state
from fedlottery.sparsity import Mask
from strategies import available

STRATEGIES = list(available())
MODEL = "cnn_digits_bn"


def _strategy(name, make_setup):
    setup = make_setup(MODEL, clients=4, per_round=2)
    strategy = available()[name](setup)
    if hasattr(strategy, "hunted"):  # FLASH: past the hunt, so replies carry weights
        strategy.hunted = True
    return strategy


def _round(strategy, server_round=2):
    """Configure a training round and push its messages as Flower would (ids set in place)."""
    messages = list(strategy.configure_train(server_round, None, None, None))
    for m in messages:
        m.metadata.__dict__["_message_id"] = str(uuid.uuid4())
    return messages


def _honest(strategy, message, shift=0.5, metrics=None):
    """A plausible reply: the weights sent plus `shift`, under the mask sent, with the true sample count."""
    conf = message.content["config"]
    pid = int(conf["partition-id"])
    sent = strategy.sent_to(message)
    state = {k: (v + shift if v.is_floating_point() else v.clone()) for k, v in strategy.global_state.items()}
    sent.mask.apply_(state)
    for k in state:
        if strategy._value_type(k) == "mask":  # FedPM: a sampled mask travels, no values
            state[k] = sent.mask[k].clone()
    arrays = pack_state(state, sent.mask, sent.mask, strategy.personal)
    base = {"partition-id": pid, "num-examples": 100}
    return Message(RecordDict({"model": arrays, "metrics": MetricRecord({**base, **(metrics or {})})}),
                   reply_to=message)


def _with(reply, model=None, metrics=None):
    content = RecordDict({"model": model if model is not None else reply.content["model"],
                          "metrics": MetricRecord(metrics) if metrics is not None else reply.content["metrics"]})
    return Message(content, reply_to=_parent(reply))


_PARENTS = {}


def _parent(reply):
    return _PARENTS[reply.metadata.reply_to_message_id]


def _replace_tensor(reply, name, array):
    record = ArrayRecord({k: v for k, v in reply.content["model"].items()})
    record[name] = array
    return _with(reply, model=record)


def _first_weight(strategy):
    return strategy.setup.prunable[0]


def _case_reply(case, strategy, message, honest):
    name = _first_weight(strategy)
    sent = strategy.sent_to(message)
    state = {k: v.clone() for k, v in strategy.global_state.items()}
    metrics = dict(honest.content["metrics"])
    if case in ("nan", "inf_layer", "huge"):
        tensor = state[name].clone()
        if case == "nan":
            tensor.view(-1)[int(torch.nonzero(sent.mask[name].flatten())[0])] = float("nan")
        else:
            tensor = torch.full_like(tensor, math.inf if case == "inf_layer" else 1e30)
        return _replace_tensor(honest, name, encode_tensor(tensor, sent.mask[name], sent.mask[name], "auto"))
    if case.startswith("examples="):
        metrics["num-examples"] = {"-47": -47, "1e12": 10**12, "0": 0, "inf": math.inf, "2.5": 2.5,
                                   "missing": None}[case.split("=")[1]]
        if metrics["num-examples"] is None:
            del metrics["num-examples"]
        return _with(honest, metrics=metrics)
    if case == "missing_tensor":
        return _with(honest, model=ArrayRecord({k: v for k, v in honest.content["model"].items() if k != name}))
    if case == "empty_model":
        return _with(honest, model=ArrayRecord())
    if case == "int64_for_float":
        return _replace_tensor(honest, name, encode_tensor(state[name].round().long(), sent.mask[name],
                                                           sent.mask[name], "auto"))
    if case == "float16_in_float32_run":
        return _replace_tensor(honest, name, encode_tensor(state[name], sent.mask[name], sent.mask[name], "auto",
                                                           values="float16"))
    if case == "undeclared_metric":
        return _with(honest, metrics={**metrics, "free-form": 3.0})
    if case == "metric_out_of_range":
        return _with(honest, metrics={**metrics, "mask-changed": 1e9})
    if case == "nan_metric":
        return _with(honest, metrics={**metrics, "mask-changed": math.nan})
    if case == "wrong_partition":
        return _with(honest, metrics={**metrics, "partition-id": (metrics["partition-id"] + 1) % 4})
    if case == "error_reply":
        return Message(Error(code=0, reason="\x1b[31mTraceback (most recent call last):\n  File x\n"
                                            "ValueError: boom\x1b[0m"), reply_to=message)
    raise AssertionError(case)


CASES = {
    "nan": "non-finite", "inf_layer": "non-finite", "huge": "above",
    "examples=-47": "outside", "examples=1e12": "outside", "examples=0": "outside", "examples=inf": "not an integer",
    "examples=2.5": "not an integer", "examples=missing": "not an integer",
    "missing_tensor": "lacks", "empty_model": "lacks", "int64_for_float": "int64",
    "float16_in_float32_run": "float16", "undeclared_metric": "undeclared", "metric_out_of_range": "outside",
    "nan_metric": "finite", "wrong_partition": "claims partition", "error_reply": "ValueError: boom",
}


BATCHNORM_CASES = {  # (tensor suffix, how it is broken) -> the rejection's reason
    ("running_var", "negative"): "negative running variance", ("running_var", "nan"): "non-finite",
    ("running_var", "inf"): "non-finite", ("num_batches_tracked", "negative"): "negative batch count",
    ("num_batches_tracked", "float"): "float32",
}


def _broken_batchnorm(strategy, honest, suffix, how):
    """The honest reply with one BatchNorm statistic broken, or None when this strategy does not upload it."""
    name = next((n for n in strategy.setup.batchnorm if n.endswith(suffix)), None)
    if name is None or name not in honest.content["model"]:
        return None
    tensor = strategy.global_state[name].clone()
    if suffix == "running_var":
        tensor = tensor.float()
        tensor.view(-1)[0] = {"negative": -0.5, "nan": math.nan, "inf": math.inf}[how]
    else:
        tensor = torch.full_like(tensor, -3) if how == "negative" else tensor.float() + 2.0
    return _replace_tensor(honest, name, encode_tensor(tensor))


TENSOR_CASES = ("nan", "inf_layer", "huge", "missing_tensor", "empty_model", "int64_for_float",
                "float16_in_float32_run")
VALUE_CASES = ("nan", "inf_layer", "huge", "int64_for_float", "float16_in_float32_run")


def _expected_reason(case, strategy):
    """What the rejection must say for this strategy, or None when the case cannot apply to it (it uploads
    no tensors); a strategy whose weights travel as masks alone rejects any values in their place."""
    uploads = set(strategy.global_state) - strategy.personal
    if case in TENSOR_CASES and not uploads:
        return None
    if case in VALUE_CASES and strategy._value_type(_first_weight(strategy)) == "mask":
        return "the run sends mask"
    return CASES[case]


def _run(strategy, replies):
    strategy = copy.deepcopy(strategy)
    _, metrics = strategy.aggregate_train(2, replies)
    return strategy, metrics


def _setup_round(name, make_setup):
    strategy = _strategy(name, make_setup)
    messages = _round(strategy)
    honest = [_honest(strategy, m) for m in messages]
    for m, r in zip(messages, honest):
        _PARENTS[r.metadata.reply_to_message_id] = m
    return strategy, messages, honest


@pytest.mark.parametrize("name", STRATEGIES)
@pytest.mark.parametrize("case", list(CASES))
def test_a_crafted_reply_is_rejected_and_theta_g_is_what_the_honest_replies_give(name, case, make_setup,
                                                                                   flower_run):
    strategy, messages, honest = _setup_round(name, make_setup)
    reason = _expected_reason(case, strategy)
    if reason is None:
        pytest.skip(f"{name} uploads no tensors, so a crafted tensor cannot apply")
    clean, _ = _run(strategy, honest[:1])
    bad = _case_reply(case, strategy, messages[1], honest[1])
    after, metrics = _run(strategy, [honest[0], bad])
    assert metrics["clients"] == 1
    assert len(after.failures) == 1 and reason in after.failures[0], after.failures
    assert "\x1b" not in after.failures[0] and "\n" not in after.failures[0]
    for key in clean.global_state:
        assert torch.equal(clean.global_state[key], after.global_state[key]), key
    pid = int(messages[1].content["config"]["partition-id"])
    assert after.state_version[pid] == 0  # the client will start again from the state the server knows
    assert after.client_holds[pid] == strategy.client_holds[pid]


@pytest.mark.parametrize("name", STRATEGIES)
@pytest.mark.parametrize("suffix,how", list(BATCHNORM_CASES))
def test_broken_batchnorm_statistics_are_rejected(name, suffix, how, make_setup, flower_run):
    """Every strategy that federates BatchNorm (a BN model): a negative or non-finite running variance, a
    negative or fractional batch count, is rejected and θ_g is what the honest replies alone give."""
    strategy, messages, honest = _setup_round(name, make_setup)
    bad = _broken_batchnorm(strategy, honest[1], suffix, how)
    if bad is None:
        pytest.skip(f"{name} uploads no BatchNorm {suffix} (its BatchNorm stays on the client)")
    clean, _ = _run(strategy, honest[:1])
    after, metrics = _run(strategy, [honest[0], bad])
    assert metrics["clients"] == 1
    assert len(after.failures) == 1 and BATCHNORM_CASES[suffix, how] in after.failures[0], after.failures
    for key in clean.global_state:
        assert torch.equal(clean.global_state[key], after.global_state[key]), key


def test_batchnorm_is_federated_by_most_strategies(make_setup, flower_run):
    """The skips above are the strategies that keep BatchNorm personal, not a broken test set-up."""
    uploading = [name for name in STRATEGIES
                 if _broken_batchnorm(*(lambda s, m, h: (s, h[1]))(*_setup_round(name, make_setup)),
                                      "running_var", "negative") is not None]
    assert {"fedavg", "lotteryfl"} <= set(uploading) and "fedbn" not in uploading, uploading


@pytest.mark.parametrize("name", STRATEGIES)
def test_duplicates_and_replies_to_nothing_sent_are_rejected(name, make_setup, flower_run):
    strategy, messages, honest = _setup_round(name, make_setup)
    clean, _ = _run(strategy, honest)
    stray = Message(RecordDict({"model": honest[0].content["model"], "metrics": honest[0].content["metrics"]}),
                    reply_to=messages[0])
    stray.metadata.__dict__["_reply_to_message_id"] = str(uuid.uuid4())  # answers no message of this round
    after, metrics = _run(strategy, [honest[0], honest[0], *honest[1:], stray])
    assert metrics["clients"] == len(messages)
    assert any("second reply" in f for f in after.failures) and any("no message" in f for f in after.failures)
    for key in clean.global_state:
        assert torch.equal(clean.global_state[key], after.global_state[key])


@pytest.mark.parametrize("name", ["lotteryfl", "fedltn", "cell", "flash-jmwst"])
def test_a_mask_outside_what_was_sent_is_rejected(name, make_setup, flower_run):
    strategy = _strategy(name, make_setup)
    sparse = Mask({n: torch.rand(strategy.shapes[n], generator=torch.Generator().manual_seed(1)) > 0.5
                   for n in strategy.shapes})
    for pid in strategy.masks:
        strategy.masks[pid] = sparse
        strategy.client_holds[pid] = sparse
    messages = _round(strategy)
    message = messages[0]
    _PARENTS[message.metadata.message_id] = message
    state = {k: v + 0.5 if v.is_floating_point() else v for k, v in strategy.global_state.items()}
    pid = int(message.content["config"]["partition-id"])
    # Regrown to dense (more weights than the budget), and the same density on another support.
    grown = Mask.ones(strategy.shapes)
    moved = Mask({n: ~sparse[n] if sparse[n].sum() * 2 == sparse[n].numel() else sparse[n].roll(1)
                  for n in strategy.shapes})
    for mask, reason in ((grown, "more than" if strategy.regrows else "regrows"), (moved, "regrows")):
        if strategy.regrows and mask is moved:
            continue  # FLASH may move weights within its budget
        arrays = pack_state(state, mask, sparse, strategy.personal)
        reply = Message(RecordDict({"model": arrays, "metrics": MetricRecord({"partition-id": pid,
                                                                              "num-examples": 100})}),
                        reply_to=message)
        after, metrics = _run(strategy, [reply])
        assert metrics["clients"] == 0 and reason in after.failures[0], after.failures
        assert all(torch.equal(after.global_state[k], strategy.global_state[k]) for k in strategy.global_state)


def test_a_missing_reply_counts_as_a_failure_with_its_cause(make_setup, flower_run):
    strategy, messages, honest = _setup_round("fedavg", make_setup)
    after, metrics = _run(strategy, honest[:1])
    assert metrics["clients"] == 1 and "deadline" in after.failures[0]


def test_evaluation_replies_are_checked_too(make_setup, flower_run):
    strategy = _strategy("fedavg", make_setup)
    messages = list(strategy.configure_evaluate(1, None, None, None))
    for m in messages:
        m.metadata.__dict__["_message_id"] = str(uuid.uuid4())

    def reply(message, **metrics):
        pid = int(message.content["config"]["partition-id"])
        values = {"partition-id": pid, "num-examples": 50, "test-acc": 0.5, "test-loss": 1.0, **metrics}
        return Message(RecordDict({"model": ArrayRecord(), "metrics": MetricRecord(values)}), reply_to=message)

    results = strategy.evaluation_results(1, [reply(messages[0]), reply(messages[1], **{"test-acc": 7.0}),
                                              reply(messages[2], **{"num-examples": 49})])
    assert list(results) == [0]
    assert len(strategy.failures) == 3  # two bad replies and one client that never answered
    assert any("test-acc" in f for f in strategy.failures) and any("deadline" in f for f in strategy.failures)


@pytest.mark.parametrize("name", ["fedavg", "lotteryfl", "fedltn", "cell"])
def test_the_result_does_not_depend_on_the_order_replies_arrive_in(name, make_setup, flower_run):
    """The cause of the old run-to-run drift: float sums in reply-arrival order. Summing the same uploads in
    another order changes θ_g's bits; aggregate_train reduces in partition order, so arrival order cannot."""
    from fedlottery.aggregation import ClientWeights, mean

    setup = make_setup(MODEL, clients=6, per_round=5)
    strategy = available()[name](setup)
    messages = _round(strategy)
    replies = [_honest(strategy, m, shift=0.1 + 0.37 * i) for i, m in enumerate(messages)]
    for m, r in zip(messages, replies):
        _PARENTS[r.metadata.reply_to_message_id] = m
    forward, _ = _run(strategy, replies)
    backward, _ = _run(strategy, list(reversed(replies)))
    assert all(torch.equal(forward.global_state[k], backward.global_state[k]) for k in forward.global_state)
    g = torch.Generator().manual_seed(0)
    uploads = [ClientWeights({"w": torch.randn(10_000, generator=g) * 10 ** (i % 4)}, None, 1.0) for i in range(5)]
    a = mean({"w": torch.zeros(10_000)}, uploads)["w"]
    b = mean({"w": torch.zeros(10_000)}, list(reversed(uploads)))["w"]
    assert not torch.equal(a, b)  # float addition is not associative: order matters without the sort


def test_a_lost_ray_worker_is_told_apart_from_a_clients_own_failure(flower_run):
    from flwr.app import Error, Message, RecordDict
    from flwr.common.constant import ErrorCode

    from fedlottery.runtime.round_loop import lost_worker

    def reply(code, reason):
        ask = Message(RecordDict(), 1, "train")
        ask.metadata.__dict__["_message_id"] = "m1"
        return Message(Error(code=code, reason=reason), reply_to=ask)

    died = ("<class 'ray.exceptions.ActorDiedError'>:<'The actor died unexpectedly before finishing this task.\n"
            "\tclass_name: ClientAppActor\nThe actor is dead because its worker process has died.'>")
    oom = "<class 'ray.exceptions.OutOfMemoryError'>:<'1 worker(s) were killed due to the node running low on memory.'>"
    assert lost_worker(reply(ErrorCode.UNKNOWN, died)).startswith("ActorDiedError: The actor is dead")
    assert lost_worker(reply(ErrorCode.UNKNOWN, oom)).startswith("OutOfMemoryError: 1 worker(s) were killed")
    assert lost_worker(reply(ErrorCode.UNKNOWN, "<class 'ValueError'>:<'The actor pool is empty, unfit'>"))
    crashed = "<class 'flwr.client.client_app.ClientAppException'>:<'RuntimeError: injected train_crash'>"
    assert lost_worker(reply(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, crashed)) is None  # the client's own
    assert lost_worker(reply(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, died)) is None  # raised inside the app
