"""fedlottery's strategies in your own Flower app: a ServerApp and a ClientApp for your model and data.

A Flower project that already has a model factory and a data loader can run LotteryFL, FedLTN, FLASH or any
fedlottery strategy, with the byte meter, the reply checks and the paired schedule, without rewriting either:

    # my_app/apps.py, named by [tool.flwr.app.components] in the project's pyproject.toml
    from fedlottery.flower import apps
    from my_app.nets import build          # (input_shape, num_classes) -> nn.Module
    from my_app.data import load           # () -> (train, test[, num_classes]), see docs/plugins.md

    server_app, client_app = apps("config.yaml", model=build, data=load)

Both apps must be built from the same arguments (one module, as above): the server sends every client the
experiment, with your functions named by their import paths, and each client imports them from there. The
model and data contracts are those of plug-ins (docs/plugins.md); fedlottery splits the data into the config's
partitions, one per SuperNode (`partition-id`), so every strategy of a run trains the same clients on the same
shards.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from flwr.app import Context
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedlottery.errors import ConfigError


def import_path(fn: Callable) -> str:
    """`module:qualname` of a module-level function or class, so that another process can import it; a lambda,
    a nested function or one defined in `__main__` cannot be found there, and is refused in one line."""
    module, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or module == "__main__" or "<" in name:
        raise ValueError(f"{fn!r}: give a function or class defined at the top level of an importable module "
                         "(the clients import it by its path)")
    return f"{module}:{name}"


def apps(config: str | Path, *, model: Callable | None = None, data: Callable | None = None,
         out_dir: str | Path = "runs/flwr", settings: list[str] = ()) -> tuple[ServerApp, ClientApp]:
    """(ServerApp, ClientApp) running the experiment `config` (a fedlottery YAML file) with `model` as
    model.name and `data` as data.dataset when given. `--run-config` keys work as for fedlottery's own app
    (`strategies`, `num-rounds`, `seed`, `clients-per-round`, `set`, `out-dir`): see docs/flower-ray.md."""
    overrides = list(settings)
    if model is not None:
        overrides.append(f"model.name={import_path(model)}")
    if data is not None:
        overrides.append(f"data.dataset={import_path(data)}")
    return _server_app(Path(config), overrides, Path(out_dir)), client_app()


def client_app() -> ClientApp:
    """fedlottery's ClientApp: it learns the experiment (and so your model and data) from the server's setup
    query, then runs each strategy's client half."""
    from fedlottery.runtime.client_app import app

    return app


def _server_app(config: Path, overrides: list[str], out_dir: Path) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        from fedlottery.runtime.server_app import experiment_from_run_config, run_experiment

        run_config: dict[str, Any] = dict(context.run_config)
        run_config["config"] = str(config.resolve())
        run_config["set"] = "; ".join([*overrides, *filter(None, str(run_config.get("set", "")).split(";"))])
        if run_config.get("resume"):
            raise ConfigError("resume: a SuperNode's Context, where this app keeps client state, does not outlive "
                              "its run; start the run again (or run the experiment with fedlottery run --resume)")
        cfg = experiment_from_run_config(run_config)
        run_experiment(grid, cfg, Path(str(run_config.get("out-dir", out_dir))), client_state="context")

    return app
