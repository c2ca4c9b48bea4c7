"""CELL: the decaying accuracy gate, pruning with rewinding, one dense broadcast, sample-weighted aggregation."""
import pytest
import torch

from fedlottery.aggregation import ClientWeights
from fedlottery.sparsity import Mask
from strategies.base import Reply
from strategies.cell import CELLOptions, CELLStrategy, cell_gate
from strategies.fedavg import FedAvgOptions, FedAvgStrategy


def _reply(pid, state, mask, n=10, metrics=None):
    return Reply(pid, ClientWeights(state, mask, n), n, metrics or {})


def test_cell_threshold_decays_on_failure_and_resets_on_success():
    opts = CELLOptions(threshold=0.5, alpha=0.8, gamma=0.2, gamma_max=0.5)
    memory: dict = {}
    assert cell_gate(memory, 0.4, opts) is None and memory["zeta"] == pytest.approx(0.4)
    assert cell_gate(memory, 0.35, opts) is None and memory["zeta"] == pytest.approx(0.32)
    assert cell_gate(memory, 0.35, opts) == pytest.approx(0.2) and memory["zeta"] == 0.5  # success: prune, reset
    assert cell_gate(memory, 0.6, opts) == pytest.approx(0.4)
    assert cell_gate(memory, 0.6, opts) == pytest.approx(0.5)  # capped at gamma_max
    assert cell_gate(memory, 0.6, opts) is None and memory["gamma"] == pytest.approx(0.5)


def test_cell_client_prunes_to_gamma_and_rewinds(make_task):
    task = make_task(CELLOptions(threshold=0.01), memory={})
    update = CELLStrategy.client_train(task)
    assert update.mask.density() == pytest.approx(0.8, abs=1e-3)
    assert task.memory["gamma"] == pytest.approx(0.2) and task.memory["zeta"] == 0.01
    failing = make_task(CELLOptions(threshold=0.999), memory={})
    update = CELLStrategy.client_train(failing)
    assert update.mask.density() == 1.0 and failing.memory["zeta"] == pytest.approx(0.999 * 0.9)


def test_cell_broadcasts_one_dense_model_and_weights_dense_stragglers_by_samples(make_setup, flower_run):
    setup = make_setup()
    strategy = CELLStrategy(setup, CELLOptions())
    name = setup.prunable[0]
    sparse = Mask({n: torch.rand(setup.theta0[n].shape) > 0.5 for n in setup.prunable})
    strategy.masks[1] = sparse
    down = [strategy.downlink(p, "train", 1).content["model"] for p in (0, 1)]
    assert all(a.stype.split(".")[1] == "dense" for a in down[1].values())
    assert all(down[0][k].data == down[1][k].data for k in down[0])
    dense_state = {k: torch.full_like(v, 1.0) for k, v in setup.theta0.items()}
    sparse_state = {k: torch.full_like(v, 3.0) for k, v in setup.theta0.items()}
    sparse.apply_(sparse_state)
    strategy.aggregate(1, [_reply(0, dense_state, None, n=30), _reply(1, sparse_state, sparse, n=10)])
    keep = sparse[name]
    assert torch.allclose(strategy.global_state[name][keep], torch.tensor((30 * 1.0 + 10 * 3.0) / 40))
    assert torch.allclose(strategy.global_state[name][~keep], torch.tensor(1.0))  # only the dense client holds it
    fedavg = FedAvgStrategy(setup, FedAvgOptions())
    fedavg.aggregate(1, [_reply(0, dense_state, None, n=30), _reply(1, sparse_state, sparse, n=10)])
    plain = CELLStrategy(setup, CELLOptions(aggregation="mean"))
    plain.aggregate(1, [_reply(0, dense_state, None, n=30), _reply(1, sparse_state, sparse, n=10)])
    assert torch.allclose(plain.global_state[name], fedavg.global_state[name])
