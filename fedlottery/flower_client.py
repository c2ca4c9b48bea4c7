"""Stock Flower messages to a fedlottery client: plain local training and evaluation on its partition.

A ServerApp running any of Flower's own strategies sends `RecordDict({"arrays": ArrayRecord, "config":
ConfigRecord})` and expects `"arrays"` and `"metrics"` (with `"num-examples"`) back; fedlottery's own
messages carry "model" and a config naming the strategy. (Work in progress: see the issue "Speak Flower's
language".)
"""
from __future__ import annotations

from flwr.app import Context, Message


def is_standard(message: Message) -> bool:
    """A message from a stock Flower strategy (not one of fedlottery's, whose config names the strategy)."""
    config = message.content.get("config")
    return "model" not in message.content and not (config is not None and "strategy" in config)


def train(message: Message, context: Context) -> Message:
    raise NotImplementedError("stock Flower training messages are not handled yet")


def evaluate(message: Message, context: Context) -> Message:
    raise NotImplementedError("stock Flower evaluation messages are not handled yet")
