"""A cheaper message-delivery loop for Flower's simulation runtime (Flower 1.41).

Why this exists
---------------
Flower's simulation runtime moves instruction messages from the LinkState to the client workers in
``flwr.server.superlink.fleet.vce.vce_api.add_messages_to_queue``: every 0.1 s, for EACH registered
supernode, it calls ``state.get_message_ins(node_id, limit=1)``, and ``InMemoryLinkState.get_message_ins``
walks every stored message, calling ``_check_stored_messages`` on each one. One sweep therefore costs
O(supernodes x messages in flight). fedlottery runs one supernode per client, so with thousands of
clients the driver process spends a core in this loop even when nothing is being delivered.

``install()`` swaps that function for :func:`add_messages_to_queue`, which makes ONE pass over the stored
messages per sweep: it expires/validates them once (the state's own ``_check_stored_messages`` over the
whole set of ids), picks at most one undelivered message per destination node (Flower's rule: a node gets
one message per sweep, so its Context is not handed to two messages in the same sweep), stamps
``metadata.delivered_at`` exactly as ``get_message_ins`` does and queues them. Stop-event handling and the
0.1 s wait are Flower's. A sweep costs O(messages in the store), independent of the number of supernodes.

What it relies on (pinned by tests/test_flower_delivery.py)
-----------------------------------------------------------
* ``vce_api.run_api`` starts its extractor thread with ``target=add_messages_to_queue``, looked up in the
  module's globals when ``run_api`` runs, so replacing the module attribute takes effect for every
  simulation started afterwards in this process.
* ``InMemoryLinkState`` (what ``run_simulation`` uses: ``LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, ...)``)
  and its private members: ``lock`` (an RLock guarding the stores), ``message_ins_store`` (dict of
  message id -> Message, insertion ordered, delivered ones included until deleted) and
  ``_check_stored_messages(ids)`` (deletes expired / out-of-federation messages).
* For any other state class (``SqlLinkState``, a subclass overriding ``get_message_ins``) the original
  Flower loop runs unchanged.

Removing it
-----------
When Flower's loop no longer scans the store once per node (check ``add_messages_to_queue`` in
``vce_api.py`` and ``InMemoryLinkState.get_message_ins``), delete the ``install()`` call (in
``fedlottery/runtime/simulation.py``), this module and its test. If the pinned test fails after a Flower upgrade,
re-read those two functions and either update the hashes (behaviour unchanged) or drop the patch.
"""
from __future__ import annotations

import threading
from collections.abc import Mapping
from queue import Queue
from typing import Any, Callable

from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
from flwr.supercore.date import now

SWEEP_INTERVAL_S = 0.1  # Flower's f_stop.wait(0.1)

_original: Callable[..., None] | None = None  # Flower's function, kept while installed


def _uses_in_memory_store(state: Any) -> bool:
    """True when `state` stores messages the way this module reads them (an unmodified InMemoryLinkState)."""
    cls = type(state)
    return (isinstance(state, InMemoryLinkState)
            and cls.get_message_ins is InMemoryLinkState.get_message_ins
            and cls._check_stored_messages is InMemoryLinkState._check_stored_messages)


def sweep(state: InMemoryLinkState, nodes: Mapping[int, Any]) -> list:
    """One delivery pass: validate every stored message once, then take (and mark delivered) the first
    undelivered message of each node in `nodes`, in store order. Returns the messages to queue."""
    picked: dict[int, Any] = {}
    with state.lock:
        store = state.message_ins_store
        if not store:
            return []
        state._check_stored_messages(set(store))  # TTL / federation check, once per sweep
        for msg in store.values():
            metadata = msg.metadata
            dst = metadata.dst_node_id
            if metadata.delivered_at == "" and dst not in picked and dst in nodes:
                picked[dst] = msg
        delivered_at = now().isoformat()
        for msg in picked.values():
            msg.metadata.delivered_at = delivered_at
    return list(picked.values())


def add_messages_to_queue(state: Any, queue: Queue, nodes_mapping: Mapping[int, int],
                          f_stop: threading.Event) -> None:
    """Drop-in for `vce_api.add_messages_to_queue` (same signature): one pass per sweep, not one per node."""
    if not _uses_in_memory_store(state):
        flower_loop()(state, queue, nodes_mapping, f_stop)
        return
    while not f_stop.is_set():
        for msg in sweep(state, nodes_mapping):
            queue.put(msg)
        f_stop.wait(SWEEP_INTERVAL_S)


def flower_loop() -> Callable[..., None]:
    """Flower's own `add_messages_to_queue` (the one `install()` replaced, or the current one)."""
    current = vce_api.add_messages_to_queue
    return _original if current is add_messages_to_queue and _original is not None else current


def install() -> None:
    """Use the one-pass loop for simulations started from now on in this process (idempotent)."""
    global _original
    if vce_api.add_messages_to_queue is add_messages_to_queue:
        return
    _original = vce_api.add_messages_to_queue
    vce_api.add_messages_to_queue = add_messages_to_queue


def uninstall() -> None:
    """Restore Flower's loop (no-op when not installed)."""
    global _original
    if vce_api.add_messages_to_queue is add_messages_to_queue and _original is not None:
        vce_api.add_messages_to_queue = _original
    _original = None


def installed() -> bool:
    return vce_api.add_messages_to_queue is add_messages_to_queue
