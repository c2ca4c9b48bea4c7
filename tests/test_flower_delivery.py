"""fedlottery.runtime.delivery: Flower internals it relies on, the one-pass sweep, and a real simulation."""
from __future__ import annotations

import hashlib
import inspect
import threading
import time
import uuid
from queue import Queue

import pytest
from flwr.app import Context, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.proto.task_pb2 import Task
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState, RunRecord
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager

from fedlottery.runtime import delivery

# sha256 (first 16 hex digits) of inspect.getsource(...) for the Flower code the patch was written against.
PINNED_SOURCES = {
    "vce_api.add_messages_to_queue": "953f4bd41a931a77",
    "InMemoryLinkState.get_message_ins": "6547c8dcbc62e12f",
    "InMemoryLinkState._check_stored_messages": "2be47567d2478a58",
}


def _source_hash(fn) -> str:
    return hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()[:16]


# ---- (a) the Flower behaviour the patch relies on -----------------------------------------------------------

def test_flower_version_is_the_one_the_patch_was_written_for():
    import flwr

    assert flwr.__version__.startswith("1.41."), (
        f"Flower is {flwr.__version__}; fedlottery/runtime/delivery.py was written for 1.41. Re-read "
        "vce_api.add_messages_to_queue and InMemoryLinkState.get_message_ins: if Flower now delivers in one "
        "pass, drop the patch; otherwise re-check the private attributes it uses and update this test.")


def test_patched_flower_sources_are_unchanged():
    current = {
        "vce_api.add_messages_to_queue": _source_hash(delivery.flower_loop()),
        "InMemoryLinkState.get_message_ins": _source_hash(InMemoryLinkState.get_message_ins),
        "InMemoryLinkState._check_stored_messages": _source_hash(InMemoryLinkState._check_stored_messages),
    }
    changed = {k: v for k, v in current.items() if PINNED_SOURCES[k] != v}
    assert not changed, (
        f"Flower changed {sorted(changed)} (new hashes {changed}). fedlottery/runtime/delivery.py re-implements "
        "the delivery loop (one message per node per sweep, delivered_at stamping, the per-message "
        "TTL/federation check via _check_stored_messages): re-read the new source, keep the replacement in step "
        "(or remove it if Flower's loop no longer scans the store once per node), then update PINNED_SOURCES.")


def test_private_flower_attributes_used_exist():
    # run_api looks the loop up by global name when it starts the extractor thread, so patching the module works
    assert "add_messages_to_queue" in vce_api.run_api.__code__.co_names
    assert list(inspect.signature(delivery.flower_loop()).parameters) == [
        "state", "queue", "nodes_mapping", "f_stop"]
    state = _state_factory().state()
    assert type(state) is InMemoryLinkState  # what run_simulation's LinkStateFactory(FLWR_IN_MEMORY_DB_NAME) makes
    assert isinstance(state.message_ins_store, dict)
    assert isinstance(state.lock, type(threading.RLock()))
    assert callable(state._check_stored_messages)


@pytest.fixture
def not_installed():
    """Start from Flower's loop; put back whatever was there (fedlottery.runtime.simulation installs the patch)."""
    was_installed = delivery.installed()
    delivery.uninstall()
    yield
    delivery.uninstall()
    if was_installed:
        delivery.install()


def test_install_is_idempotent_and_uninstall_restores(not_installed):
    original = vce_api.add_messages_to_queue
    assert original is not delivery.add_messages_to_queue
    delivery.install()
    delivery.install()
    assert vce_api.add_messages_to_queue is delivery.add_messages_to_queue
    assert delivery.flower_loop() is original
    delivery.uninstall()
    assert vce_api.add_messages_to_queue is original
    delivery.uninstall()
    assert vce_api.add_messages_to_queue is original


# ---- (b) the replacement against a real InMemoryLinkState ---------------------------------------------------

RUN_ID = 7


@pytest.fixture
def superlink_identity():
    """Messages take their run id and source node from TaskIdentity: act as the SuperLink of run RUN_ID."""
    previous = TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = RUN_ID, SUPERLINK_NODE_ID, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = previous


def _state_factory() -> LinkStateFactory:
    return LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())


def _state_with_messages(num_nodes: int, dst_partitions: list[int]):
    """A run, `num_nodes` registered nodes and one stored message per entry of `dst_partitions` (the
    partition of its destination node; group_id = its position), stored in that order."""
    factory = _state_factory()
    state = factory.state()
    run = Run.create_empty(run_id=RUN_ID)
    run.primary_task_id = 1
    run.federation_id = NOOP_FEDERATION_ID
    state.run_ids[RUN_ID] = RunRecord(run=run)
    state.task_store[1] = Task(task_id=1, run_id=RUN_ID)
    nodes = vce_api._register_nodes(num_nodes, factory)
    node_of = {p: n for n, p in nodes.items()}
    messages = []
    for i, p in enumerate(dst_partitions):
        msg = Message(RecordDict(), dst_node_id=node_of[p], message_type="query", group_id=str(i))
        msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())  # as InMemoryGrid.push_messages does
        assert state.store_message_ins(msg) is not None
        messages.append(msg)
    return state, nodes, messages


LAYOUT = [0, 1, 1, 2, 0, 3, 1, 4, 4, 4, 0, 2]  # destination partition of each message, in sending order


def _drain(state, nodes, one_sweep) -> list[list[str]]:
    sweeps = []
    while True:
        got = one_sweep(state, nodes)
        if not got:
            return sweeps
        sweeps.append(sorted(m.metadata.group_id for m in got))


def test_sweep_delivers_each_message_once_at_most_one_per_node_per_sweep(superlink_identity):
    state, nodes, messages = _state_with_messages(6, LAYOUT)
    sweeps = _drain(state, nodes, delivery.sweep)
    delivered = [g for s in sweeps for g in s]
    assert sorted(delivered) == sorted(str(i) for i in range(len(LAYOUT)))  # each exactly once
    for s in sweeps:
        assert len({LAYOUT[int(g)] for g in s}) == len(s)  # at most one per node per sweep
    assert len(sweeps) == max(LAYOUT.count(p) for p in set(LAYOUT))  # node 1 and node 4 hold three each
    for msg in messages:
        assert msg.metadata.delivered_at != ""
    assert len(state.message_ins_store) == len(LAYOUT)  # delivered messages stay until their reply is pulled


def test_sweep_picks_what_flowers_loop_picks(superlink_identity):
    """Same messages per sweep as Flower's per-node get_message_ins(limit=1) loop, on an identical store."""

    def flower_sweep(state, nodes):
        return [m for n in nodes for m in state.get_message_ins(node_id=n, limit=1)]

    ours = _drain(*_state_with_messages(6, LAYOUT)[:2], delivery.sweep)
    flowers = _drain(*_state_with_messages(6, LAYOUT)[:2], flower_sweep)
    assert ours == flowers


def test_sweep_drops_expired_messages_and_skips_unknown_nodes(superlink_identity):
    state, nodes, messages = _state_with_messages(4, [0, 1, 2, 3])
    messages[1].metadata.created_at -= messages[1].metadata.ttl + 1  # expired
    del nodes[next(n for n, p in nodes.items() if p == 3)]  # not one of this runtime's supernodes
    got = delivery.sweep(state, nodes)
    assert sorted(m.metadata.group_id for m in got) == ["0", "2"]
    assert messages[1].metadata.message_id not in state.message_ins_store  # deleted, as Flower does
    assert messages[3].metadata.delivered_at == ""  # left for whoever serves that node
    assert delivery.sweep(state, nodes) == []


def test_loop_thread_queues_everything_and_stops(superlink_identity):
    state, nodes, messages = _state_with_messages(5, LAYOUT[:10])
    queue: Queue = Queue()
    f_stop = threading.Event()
    thread = threading.Thread(target=delivery.add_messages_to_queue, args=(state, queue, nodes, f_stop))
    thread.start()
    deadline = time.monotonic() + 5
    while queue.qsize() < 10 and time.monotonic() < deadline:
        time.sleep(0.02)
    f_stop.set()
    thread.join(timeout=2)
    assert not thread.is_alive()
    queued = [queue.get_nowait() for _ in range(queue.qsize())]
    assert sorted(m.metadata.group_id for m in queued) == sorted(str(i) for i in range(10))


def test_other_state_classes_get_flowers_loop():
    class OtherState:  # e.g. SqlLinkState: only the public LinkState API
        def __init__(self):
            self.calls = []

        def get_message_ins(self, node_id, limit):
            self.calls.append((node_id, limit))
            return []

    state, f_stop = OtherState(), threading.Event()
    f_stop.set()  # Flower's loop checks the event first: run it once by hand instead
    delivery.add_messages_to_queue(state, Queue(), {11: 0, 12: 1}, f_stop)
    assert state.calls == []
    f_stop.clear()
    thread = threading.Thread(target=delivery.add_messages_to_queue,
                              args=(state, Queue(), {11: 0, 12: 1}, f_stop))
    thread.start()
    time.sleep(0.05)
    f_stop.set()
    thread.join(timeout=2)
    assert state.calls[:2] == [(11, 1), (12, 1)]  # Flower's per-node calls


# ---- (c) a real simulation with the patch installed --------------------------------------------------------

@pytest.mark.slow
def test_run_simulation_delivers_every_message_with_the_patch(monkeypatch, not_installed):
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    num_nodes, sweeps, replies, errors = 30, [0], {}, []
    real_sweep = delivery.sweep

    def counting_sweep(state, nodes):
        sweeps[0] += 1
        return real_sweep(state, nodes)

    monkeypatch.setattr(delivery, "sweep", counting_sweep)

    client = ClientApp()

    @client.query()
    def _query(msg: Message, context: Context) -> Message:
        from flwr.app import MetricRecord

        return Message(RecordDict({"m": MetricRecord({"partition": context.node_config["partition-id"]})}),
                       reply_to=msg)

    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        try:
            nodes: list[int] = []
            while len(nodes) < num_nodes:
                nodes = list(grid.get_node_ids())
                time.sleep(0.05)
            for rnd, per_node in ((1, 1), (2, 2)):  # round 2: two messages to every node at once
                out = [Message(RecordDict(), dst_node_id=n, message_type="query") for n in nodes for _ in
                       range(per_node)]
                got = list(grid.send_and_receive(out, timeout=60))
                replies[rnd] = [(r.has_error(), r.metadata.src_node_id,
                                 None if r.has_error() else dict(r.content["m"])) for r in got]
        except BaseException as err:  # noqa: BLE001 - reported by the test below
            errors.append(err)

    identity = TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id  # run_simulation sets it
    delivery.install()
    try:
        run_simulation(server_app=server, client_app=client, num_supernodes=num_nodes, backend_name="ray",
                       backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                       "init_args": {"include_dashboard": False, "log_to_driver": False}})
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = identity
    assert not errors, errors
    assert sweeps[0] > 0  # the replacement loop did the delivering
    assert len(replies[1]) == num_nodes and len(replies[2]) == 2 * num_nodes
    for rnd in (1, 2):
        assert not any(err for err, _, _ in replies[rnd])
    assert sorted(m["partition"] for _, _, m in replies[1]) == list(range(num_nodes))
    per_node: dict[int, int] = {}
    for _, src, _ in replies[2]:
        per_node[src] = per_node.get(src, 0) + 1
    assert per_node == {n: 2 for n in per_node} and len(per_node) == num_nodes
