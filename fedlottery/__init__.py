"""fedlottery: federated lottery-ticket simulator."""

__version__ = "0.1.0"
