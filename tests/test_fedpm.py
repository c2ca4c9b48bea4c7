"""FedPM: masks over frozen random weights. The upload is one sampled mask at about n*H(p) bits, the server's
Beta posterior is the hand computation, a client round moves the probabilities and never the weights."""
import copy
import math
import uuid

import pytest
import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

from fedlottery.comm import decode_tensor, encode_tensor, pack_state, unpack_state
from fedlottery.comm.codec import codec_of, encode_mask, values_bytes_of
from fedlottery.config import LocalTrainingConfig
from fedlottery.config import from_dict
from fedlottery.errors import ConfigError
from fedlottery.models import build_model, clone_state, prunable_names
from fedlottery.sparsity import Mask
from fedlottery.training import evaluate
from strategies.base import ClientData, ClientTask
from strategies.fedpm import FedPMOptions, FedPMStrategy, mask_entropy_bits
from federation_helpers import Federation, small_config


def _toy(n, seed, input_shape):
    """The conftest toy problem at any input size: the label says which of two pixels is larger."""
    x = torch.randn(n, *input_shape, generator=torch.Generator().manual_seed(seed))
    return x, x.flatten(1)[:, :2].argmax(1).long()


def _task(model_name="cnn_digits_bn", options=None, theta=None, input_shape=(1, 8, 8), epochs=2, seed=0, n=128):
    """A FedPM client task as the ClientApp builds it: the model holds theta_0, with theta_g in the prunable
    slots (what the downlink carried)."""
    torch.manual_seed(seed)
    model = build_model(model_name, input_shape, 10)
    theta0 = clone_state(model)
    names = prunable_names(model)
    theta = theta or {k: torch.full(theta0[k].shape, 0.5) for k in names}
    model.load_state_dict({**theta0, **theta})
    data = ClientData(0, _toy(n, 1, input_shape), _toy(64, 2, input_shape), _toy(256, 3, input_shape))
    return ClientTask(model, Mask.ones({k: theta0[k].shape for k in names}), theta0, data,
                      LocalTrainingConfig(lr=0.05, epochs=epochs, batch_size=32), options or FedPMOptions(),
                      torch.Generator().manual_seed(seed), 1)


# ---- (a) the upload: one binary mask at about n * H(p) bits --------------------------------------------------
def test_a_real_upload_is_one_binary_mask_within_3_percent_of_its_entropy():
    task = _task("lenet_300_100", input_shape=(1, 28, 28), epochs=1, n=64)  # 266,200 prunable weights
    update = FedPMStrategy.client_train(task)
    names = list(task.mask)
    assert set(update.upload) == set(names)
    assert all(update.upload[k].dtype == torch.bool for k in names)
    personal = FedPMStrategy.personal_tensors(task.options, list(task.theta0), names, [])
    record = pack_state(update.upload, update.mask, task.mask, personal)  # what the ClientApp sends up
    assert set(record) == set(names)  # only the prunable tensors, each a mask alone
    for k in names:
        codec, vtype = codec_of(record[k])
        assert vtype == "mask" and codec in ("bitmap", "indices", "rice")
        assert values_bytes_of(record[k]) == 0  # no values at all
        mask, keep = decode_tensor(record[k])
        assert torch.equal(mask, update.upload[k]) and torch.equal(keep, update.upload[k])
    n = sum(update.upload[k].numel() for k in names)
    density = sum(int(update.upload[k].sum()) for k in names) / n
    assert n >= 100_000 and update.metrics["density"] == pytest.approx(density)
    measured = record.count_bytes()  # Flower's own count of the uplink record
    bound = mask_entropy_bits(n, density) / 8
    assert abs(measured / bound - 1) < 0.03, (measured, bound, density)


@pytest.mark.parametrize("kind", ["iid-0.05", "iid-0.1", "iid-0.2", "iid-0.3", "polarised"])
def test_mask_uploads_cost_about_n_entropy_bits_and_less_than_one_bit_a_weight(kind):
    g = torch.Generator().manual_seed(7)
    shapes = {"conv.weight": (64, 32, 3, 3), "fc.weight": (300, 400)}  # 138,432 entries
    if kind == "polarised":  # what trained probabilities look like: most weights near 0, some near 1
        probs = {k: torch.where(torch.rand(s, generator=g) < 0.75, torch.tensor(0.04), torch.tensor(0.93))
                 for k, s in shapes.items()}
    else:
        probs = {k: torch.full(s, float(kind.split("-")[1])) for k, s in shapes.items()}
    upload = {k: torch.rand(p.shape, generator=g) < p for k, p in probs.items()}
    record = pack_state(upload)
    n = sum(m.numel() for m in upload.values())
    density = sum(int(m.sum()) for m in upload.values()) / n
    bound = mask_entropy_bits(n, density) / 8
    assert abs(record.count_bytes() / bound - 1) < 0.03, (record.count_bytes(), bound)
    assert record.count_bytes() * 8 < n  # below 1 bit per weight
    back, uploaded = unpack_state(record, {k: torch.zeros(s) for k, s in shapes.items()}, prunable=set(shapes))
    assert all(torch.equal(uploaded[k], upload[k]) and torch.equal(back[k], upload[k].float()) for k in shapes)


def test_mask_encoding_round_trips_and_refuses_damage():
    g = torch.Generator().manual_seed(1)
    for n in (0, 1, 9, 1000):
        keep = torch.rand(n, generator=g) < 0.3
        for codec in ("auto", "bitmap", "indices", "rice"):
            array = encode_mask(keep, codec)
            got, kept = decode_tensor(array)
            assert got.dtype == torch.bool and torch.equal(got, keep) and torch.equal(kept, keep)
    array = encode_mask(torch.rand(1000, generator=g) < 0.3, "bitmap")
    broken = bytearray(array.data)
    broken[len(broken) // 2] ^= 0xFF
    from flwr.app import Array

    from fedlottery.comm import CodecError

    with pytest.raises(CodecError):
        decode_tensor(Array(dtype=array.dtype, shape=array.shape, stype=array.stype, data=bytes(broken)))
    with pytest.raises(ValueError):
        encode_mask(torch.ones(4, dtype=torch.bool), "dense")


# ---- (b) the server's posterior ------------------------------------------------------------------------------
def _masks_reply(pid, masks, n=10):
    from fedlottery.aggregation import ClientWeights
    from strategies.base import Reply

    return Reply(pid, ClientWeights({k: m.float() for k, m in masks.items()}, None, n), n, {})


def _three_clients(setup):
    """Three clients' masks: the first 4 entries of the first tensor are hand-picked, the rest all ones."""
    first = setup.prunable[0]
    picked = [[1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 0]]
    masks = []
    for bits in picked:
        m = {k: torch.ones(setup.theta0[k].shape, dtype=torch.bool) for k in setup.prunable}
        m[first].view(-1)[:4] = torch.tensor(bits, dtype=torch.bool)
        masks.append(m)
    return first, masks


def test_posterior_update_matches_the_hand_computation(make_setup):
    setup = make_setup("mlp_digits")
    strategy = FedPMStrategy(setup, FedPMOptions())
    first, masks = _three_clients(setup)
    strategy.aggregate(1, [_masks_reply(pid, m) for pid, m in enumerate(masks)])
    # alpha = 1 + sum m = [4, 2, 2, 1]; beta = 1 + sum (1 - m) = [1, 3, 3, 4]; mode = (alpha-1)/(alpha+beta-2)
    assert strategy.alpha[first].view(-1)[:4].tolist() == [4, 2, 2, 1]
    assert strategy.beta[first].view(-1)[:4].tolist() == [1, 3, 3, 4]
    assert strategy.global_state[first].view(-1)[:4].tolist() == pytest.approx([1, 1 / 3, 1 / 3, 0])
    assert bool((strategy.global_state[setup.prunable[1]] == 1).all())
    # reset every round (default): round 2 sees only its own uploads
    strategy.aggregate(2, [_masks_reply(0, masks[2])])
    assert strategy.global_state[first].view(-1)[:4].tolist() == pytest.approx([1, 0, 0, 0])
    # prior (2, 3), never reset: the counts accumulate over rounds
    keep = FedPMStrategy(setup, FedPMOptions(prior_alpha=2, prior_beta=3, reset_every=0))
    keep.aggregate(1, [_masks_reply(pid, m) for pid, m in enumerate(masks)])
    keep.aggregate(2, [_masks_reply(0, masks[1])])
    alpha = torch.tensor([2 + 3 + 1, 2 + 1 + 0, 2 + 1 + 1, 2 + 0 + 0], dtype=torch.float32)
    beta = torch.tensor([3 + 0 + 0, 3 + 2 + 1, 3 + 2 + 0, 3 + 3 + 1], dtype=torch.float32)
    assert torch.allclose(keep.global_state[first].view(-1)[:4], (alpha - 1) / (alpha + beta - 2))
    # alpha + beta = 2 (flat prior, no evidence this round): theta_g keeps its value
    flat = FedPMStrategy(setup, FedPMOptions())
    before = {k: flat.global_state[k].clone() for k in setup.prunable}
    flat.aggregate(1, [])
    assert all(torch.equal(flat.global_state[k], before[k]) for k in setup.prunable)
    # warm-up schedule: reset in rounds 1..2, then every 3rd round
    sched = FedPMStrategy(setup, FedPMOptions(reset_every=3, reset_warmup=2))
    assert [r for r in range(1, 10) if sched.reset_due(r)] == [1, 2, 3, 6, 9]


def test_posterior_through_real_replies_and_crafted_ones_rejected(make_setup, flower_run):
    setup = make_setup("mlp_digits", clients=4, per_round=4)
    strategy = FedPMStrategy(setup, FedPMOptions())
    first, masks = _three_clients(setup)
    messages = list(strategy.configure_train(1, None, None, None))
    for m in messages:
        m.metadata.__dict__["_message_id"] = str(uuid.uuid4())
    down = messages[0].content["model"]  # theta_g, float32 values only; nothing but the prunable tensors
    assert set(down) == set(setup.prunable) and all(codec_of(a) == ("known", "float32") for a in down.values())
    assert FedPMStrategy.personal_tensors(None, list(setup.theta0), setup.prunable, setup.batchnorm) == \
        frozenset(setup.theta0) - frozenset(setup.prunable) == strategy.personal

    def reply(message, record, **metrics):
        pid = int(message.content["config"]["partition-id"])
        return Message(RecordDict({"model": record, "metrics": MetricRecord(
            {"partition-id": pid, "num-examples": 50, "density": 0.5, **metrics})}), reply_to=message)

    honest = [reply(messages[i], pack_state(masks[i])) for i in range(3)]
    probs = ArrayRecord({k: encode_tensor(strategy.global_state[k]) for k in setup.prunable})  # values, not a mask
    bias = ArrayRecord(dict(pack_state(masks[0]).items()))
    bias[next(k for k in setup.theta0 if k not in setup.prunable)] = encode_tensor(torch.zeros(10))
    crafted = [reply(messages[3], probs)]
    expected = copy.deepcopy(strategy)
    expected.aggregate_train(1, honest)
    _, metrics = strategy.aggregate_train(1, honest + crafted)
    assert int(metrics["clients"]) == 3 and "values are float32, the run sends mask" in strategy.failures[0]
    assert all(torch.equal(strategy.global_state[k], expected.global_state[k]) for k in setup.prunable)
    assert strategy.global_state[first].view(-1)[:4].tolist() == pytest.approx([1, 1 / 3, 1 / 3, 0])
    assert strategy.density_mean() == pytest.approx(
        sum(int((strategy.global_state[k] > 0.5).sum()) for k in setup.prunable)
        / sum(strategy.global_state[k].numel() for k in setup.prunable))
    assert all(strategy.masks.density(pid) == 1.0 for pid in range(4))  # clients still receive all of theta_g
    # round 2: a tensor the model keeps home, a NaN metric, a wrong shape, damaged bytes
    messages = list(strategy.configure_train(2, None, None, None))
    for m in messages:
        m.metadata.__dict__["_message_id"] = str(uuid.uuid4())
    wrong_shape = ArrayRecord(dict(pack_state(masks[0]).items()))
    wrong_shape[first] = encode_mask(torch.ones(3, dtype=torch.bool))
    damaged = ArrayRecord(dict(pack_state(masks[0]).items()))
    from flwr.app import Array
    raw = bytearray(damaged[first].data)
    raw[len(raw) // 2] ^= 0xFF
    damaged[first] = Array(dtype=damaged[first].dtype, shape=damaged[first].shape, stype=damaged[first].stype,
                           data=bytes(raw))
    bad = [reply(messages[0], bias), reply(messages[1], pack_state(masks[1]), density=math.nan),
           reply(messages[2], wrong_shape), reply(messages[3], damaged)]
    before = {k: strategy.global_state[k].clone() for k in setup.prunable}
    strategy.failures.clear()
    _, metrics = strategy.aggregate_train(2, bad)
    assert int(metrics["clients"]) == 0 and len(strategy.failures) == 4
    causes = " | ".join(strategy.failures)
    for cause in ("upload has tensors the model lacks", "not a finite number", "shape", "CRC32"):
        assert cause in causes, causes
    assert all(torch.equal(strategy.global_state[k], before[k]) for k in setup.prunable)


def test_options_are_checked():
    for bad in ({"prior_alpha": 0.5}, {"prob_clip": 0.5}, {"reset_every": -1}, {"lr": 0}, {"eval_mask": "mode"}):
        with pytest.raises(ConfigError):
            from_dict(FedPMOptions, bad, "strategy_options.fedpm")


# ---- (c) a client round --------------------------------------------------------------------------------------
def test_a_client_round_moves_the_probabilities_and_never_the_weights():
    g = torch.Generator().manual_seed(3)
    probe = _task()
    names = list(probe.mask)
    theta_g = {k: torch.sigmoid(torch.randn(probe.theta0[k].shape, generator=g)) for k in names}
    task = _task(theta={k: v.clone() for k, v in theta_g.items()}, epochs=4)
    theta0 = {k: v.clone() for k, v in task.theta0.items()}
    frozen = [n for n, _ in task.model.named_parameters()]  # weights, biases and BatchNorm affine parameters
    final = FedPMStrategy.train_probabilities(task)
    params = dict(task.model.named_parameters())
    assert all(torch.equal(params[n].detach(), theta0[n]) for n in frozen)  # exactly theta_0, every parameter
    change = torch.cat([(final[k] - theta_g[k]).abs().flatten() for k in names])
    assert float(change.max()) > 0.2 and float(change.mean()) > 0.01  # the probabilities moved
    # ... towards a better subnetwork of the frozen weights: theta_0 under sigmoid(s) > 0.5 beats theta_g > 0.5
    def accuracy(keep):
        model = copy.deepcopy(task.model)
        model.load_state_dict({**theta0, **{k: theta0[k] * keep[k] for k in names}})
        return evaluate(model, task.data.train)[1]

    assert accuracy({k: final[k] > 0.5 for k in names}) > accuracy({k: theta_g[k] > 0.5 for k in names}) + 0.05


def test_a_client_round_uploads_one_sample_and_keeps_theta0_under_its_mask():
    task = _task(epochs=1)
    theta0 = {k: v.clone() for k, v in task.theta0.items()}
    update = FedPMStrategy.client_train(task)
    names = list(task.mask)
    assert update.mask == task.mask  # the client keeps the dense mask: the sample is payload, not its mask
    assert set(update.upload) == set(names) and all(m.dtype == torch.bool for m in update.upload.values())
    for k in names:  # the deployed model: theta_0 under its own thresholded probabilities
        keep = update.state[k] != 0
        assert torch.equal(update.state[k], theta0[k] * keep)
    for n, _ in task.model.named_parameters():
        if n not in names:
            assert torch.equal(update.state[n], theta0[n])  # biases, BatchNorm weight and bias: theta_0
    bn_mean = next(k for k in update.state if k.endswith("running_mean"))
    assert not torch.equal(update.state[bn_mean], theta0[bn_mean])  # its own BatchNorm statistics
    density = sum(int(m.sum()) for m in update.upload.values()) / sum(m.numel() for m in update.upload.values())
    assert update.metrics["density"] == pytest.approx(density) and 0 < density < 1


def test_sample_mode_deploys_the_uploaded_mask():
    task = _task(options=FedPMOptions(eval_mask="sample"), epochs=1)
    update = FedPMStrategy.client_train(task)
    assert all(torch.equal(update.state[k] != 0, update.upload[k] & (task.theta0[k] != 0)) for k in task.mask)


def test_evaluation_sends_theta0_under_the_evaluation_mask(make_setup, flower_run):
    setup = make_setup("cnn_digits_bn")
    for mode in ("threshold", "sample"):
        strategy = FedPMStrategy(setup, FedPMOptions(eval_mask=mode))
        message = strategy.downlink(1, "evaluate", 4)
        record = message.content["model"]
        assert set(record) == set(setup.prunable)
        state, mask = unpack_state(record, setup.theta0, Mask.ones(strategy.shapes), set(setup.prunable))
        expected = strategy.evaluation_mask(1, 4)
        assert mask == expected
        from strategies.base import mask_crc
        assert message.content["config"]["mask-crc"] == mask_crc(expected)
        assert all(torch.equal(state[k], setup.theta0[k] * expected[k]) for k in setup.prunable)
        if mode == "threshold":
            assert all(torch.equal(expected[k], strategy.global_state[k] > 0.5) for k in setup.prunable)
        glob = strategy.global_model_state()
        assert set(glob) == set(setup.theta0)


# ---- through the real ClientApp ------------------------------------------------------------------------------
def test_fedpm_rounds_through_the_client_app(tmp_path, flower_run):
    cfg = small_config(["fedpm"], evaluation={"deployed": True})
    fed = Federation(tmp_path, "fedpm", cfg)
    theta0, prunable = fed.setup.theta0, fed.setup.prunable
    n = sum(theta0[k].numel() for k in prunable)
    start = {k: fed.strategy.global_state[k].clone() for k in prunable}
    messages, replies = fed.train(1)
    for reply in replies:  # up: the prunable tensors as masks alone, nothing else
        record = reply.content["model"]
        assert set(record) == set(prunable) and all(codec_of(a)[1] == "mask" for a in record.values())
        assert record.count_bytes() < n / 8 + 200  # at most a bitmap, plus headers and names
    assert any(not torch.equal(fed.strategy.global_state[k], start[k]) for k in prunable)
    uploads = [unpack_state(r.content["model"], theta0, None, set(prunable))[0] for r in replies]
    for k in prunable:  # reset every round, prior (1, 1): theta_g is the mean of the round's masks
        assert torch.allclose(fed.strategy.global_state[k], sum(u[k] for u in uploads) / len(uploads))
    stored = fed.stored(0)
    assert set(stored.personal) == set(theta0) - set(prunable)  # biases and BatchNorm stay home
    results = fed.evaluate(1)
    assert all(0 <= r["test-acc"] <= 1 and 0 <= r["deployed-acc"] <= 1 for r in results.values())
    fed.train(2)
