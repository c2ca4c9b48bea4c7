"""Shared test set-up: one torch thread (tiny models; avoids oversubscribing 2-core CI machines)."""
import torch

torch.set_num_threads(1)

import pytest  # noqa: E402

from fedlottery.config import LocalTrainingConfig  # noqa: E402
from fedlottery.models import batchnorm_names, build_model, clone_state, head_names, prunable_names  # noqa: E402
from fedlottery.sparsity import Mask  # noqa: E402
from strategies.base import ClientData, ClientTask, ServerSetup  # noqa: E402


def toy_split(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An easy 8x8 two-class problem (the label is which of two pixels is larger)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    return x, x.flatten(1)[:, :2].argmax(1).long()


@pytest.fixture
def make_task():
    """A client task on toy data: make_task(options, model="mlp_digits", state=None, mask=None, **task)."""

    def make(options, model_name="mlp_digits", state=None, mask=None, seed=0, epochs=2, **extra):
        torch.manual_seed(seed)
        model = build_model(model_name, (1, 8, 8), 10)
        theta0 = clone_state(model)
        if state is not None:
            model.load_state_dict(state)
        params = dict(model.named_parameters())
        mask = mask or Mask.ones_like({n: params[n] for n in prunable_names(model)})
        data = ClientData(0, toy_split(128, 1), toy_split(64, 2), toy_split(64, 3))
        local = LocalTrainingConfig(lr=0.05, epochs=epochs, batch_size=32)
        return ClientTask(model, mask, theta0, data, local, options, torch.Generator().manual_seed(seed),
                          extra.pop("server_round", 1), **extra)

    return make


@pytest.fixture
def make_setup():
    """A server setup over `clients` partitions for a model: make_setup(model_name, clients=4, per_round=2)."""

    def make(model_name="mlp_digits", clients=4, per_round=2, seed=0):
        torch.manual_seed(seed)
        model = build_model(model_name, (1, 8, 8), 10)
        return ServerSetup(clone_state(model), prunable_names(model), {p: 100 + p for p in range(clients)},
                           per_round, seed, LocalTrainingConfig(), batchnorm_names(model),
                           train_sizes={p: 100 for p in range(clients)}, test_sizes={p: 50 for p in range(clients)},
                           head=head_names(model))

    return make


@pytest.fixture
def flower_run():
    """Flower messages need a run id outside a running ServerApp; set one for the test, then restore."""
    from flwr.supercore.task_identity import TaskIdentity

    previous = TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # node 0: the ServerApp's side
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = previous
