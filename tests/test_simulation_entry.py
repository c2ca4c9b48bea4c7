"""The two ways into Flower's simulation runtime give the same result files: `fedlottery run` (in-process,
fedlottery/runtime/simulation.py) and `flwr run .` (simulations/flwr_run.sh: local SuperLink, FAB, `flwr-simulation`
process). Plus what a person sees: no foreign warnings, --quiet, the partition table, the ETA; and the Flower
details the in-process entry relies on (the banner it drops, the ClientApp reference that installs the delivery
loop in Flower's own simulation process)."""
import inspect
import logging
import os
import socket
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import pytest
import yaml

from fedlottery.runtime import simulation
from fedlottery.runs.results import Progress, partition_table

ROOT = Path(__file__).resolve().parents[1]
FOREIGN = ("DEPRECATED FEATURE", "FutureWarning", "Manually terminating", "Traceback", "RAY_ACCEL_ENV_VAR")


def _config(tiny_config, tmp_path: Path) -> Path:
    cfg = tiny_config(
        seed=5, strategies=["lotteryfl", "fedavg"], partition={"shard_size": 30},
        strategy_options={"lotteryfl": {"acc_threshold": 0.0, "prune_rate": 0.3, "target_density": 0.3}},
        evaluation={"every": 1, "deployed": True},
    )
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env(**extra: str) -> dict:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", **extra}
    env.pop("RAY_ADDRESS", None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- end to end --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_flwr_run_and_fedlottery_run_write_the_same_results(tmp_path, tiny_config, run_files):
    config = _config(tiny_config, tmp_path)
    ours, theirs = tmp_path / "fedlottery_run", tmp_path / "flwr_run"
    run = subprocess.run([sys.executable, "-m", "fedlottery.cli", "run", str(config), "--out", str(ours)], cwd=ROOT,
                         env=_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert not [w for w in FOREIGN if w in run.stdout + run.stderr], run.stderr
    assert "partitions: 4 clients" in run.stderr and "ETA from [2/4] on" in run.stderr

    # `fedlottery run --entry flwr`: `flwr run .` through simulations/flwr_run.sh (supernodes and CPUs from the
    # config), from another working directory
    env = _env(FLWR_HOME=str(tmp_path / "flwr_home"), FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(_free_port()),
               FLWR_LOCAL_CONTROL_API_PORT=str(_free_port()))
    flwr = subprocess.run([sys.executable, "-m", "fedlottery.cli", "run", str(config), "--out", str(theirs),
                           "--entry", "flwr"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    output = flwr.stdout + flwr.stderr
    assert flwr.returncode == 0, output[-3000:]
    assert "finished:completed" in output and "supernodes=4  cpus/client=1" in output
    # the ClientApp reference installed the one-pass delivery loop in Flower's simulation process
    assert "message delivery: fedlottery.runtime.delivery" in output, output[-3000:]
    assert "FutureWarning" not in output and "Manually terminating" not in output

    assert run_files(theirs) == run_files(ours)

    # plain `flwr run .` as a Flower user types it (docs/flower-ray.md): Flower's own local SuperLink, the node
    # count in --federation-config, settings through --run-config, client state in the SuperNodes' Contexts
    plain, home = tmp_path / "plain_flwr_run", tmp_path / "plain_flwr_home"
    bin_dir = str(Path(sys.executable).parent)  # as in an activated environment: Flower starts flower-superlink by name
    env = _env(FLWR_HOME=str(home), FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1", FLWR_DISABLE_UPDATE_CHECK="1",
               FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(_free_port()), FLWR_LOCAL_CONTROL_API_PORT=str(_free_port()),
               RAY_ADDRESS="local", PATH=os.pathsep.join([bin_dir, os.environ.get("PATH", "")]))
    try:
        typed = subprocess.run(["flwr", "run", ".", "local", "--federation-config", "num-supernodes=4", "--run-config",
                                f'config="{config}" out-dir="{plain}" strategies="lotteryfl,fedavg"', "--stream"],
                               cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    finally:
        _stop_superlinks_under(home)
    assert (plain / "summary.json").exists(), (typed.stdout + typed.stderr)[-3000:]
    assert run_files(plain) == run_files(ours)


def _stop_superlinks_under(home: Path) -> None:
    """Flower leaves the local SuperLink it started running; stop the one whose files are under `home`."""
    import signal

    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if "flower-superlink" in args and str(home) in args:
            os.kill(int(proc.name), signal.SIGTERM)


@pytest.mark.slow
def test_quiet_prints_only_the_table(tmp_path, tiny_config):
    out = tmp_path / "out"
    config = _config(tiny_config, tmp_path)
    run = subprocess.run([sys.executable, "-m", "fedlottery.cli", "run", str(config), "--out", str(out),
                          "--rounds", "1", "--quiet"], cwd=ROOT, env=_env(), capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stderr.strip() == ""
    assert run.stdout.startswith("| run | strategy |") and "written:" in run.stdout


# ---- the in-process entry's reliance on Flower ------------------------------------------------------------
def test_run_simulation_is_what_run_federated_calls_and_its_banner_is_the_one_dropped():
    """Pins Flower 1.41's run_simulation: the keyword arguments run_federated passes, and the banner text the
    filter matches (if Flower rewords it, the banner would show again: update _DropFlowerNoise)."""
    from flwr.simulation import run_simulation

    params = inspect.signature(run_simulation).parameters
    for name in ("server_app", "client_app", "num_supernodes", "backend_name", "backend_config", "verbose_logging"):
        assert name in params
    source = inspect.getsource(run_simulation)
    assert "warn_deprecated_feature(" in source and "The `run_simulation` function is deprecated" in source


def test_the_banner_filter_drops_that_banner_and_nothing_else():
    from flwr.supercore.logger import log, warn_deprecated_feature

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler = Keep(level=logging.DEBUG)
    flower = logging.getLogger("flwr")
    flower.addHandler(handler)
    try:
        with simulation._without_deprecation_banner():
            warn_deprecated_feature("The `run_simulation` function is deprecated and will be removed ...")
            warn_deprecated_feature("Something else is deprecated")
            log(logging.WARNING, "an ordinary warning")
        warn_deprecated_feature("The `run_simulation` function is deprecated and will be removed ...")
    finally:
        flower.removeHandler(handler)
    assert len(seen) == 3
    assert "Something else is deprecated" in seen[0] and seen[1] == "an ordinary warning"
    assert "`run_simulation` function is deprecated" in seen[2]  # outside the block: untouched


def test_the_actor_noise_pattern_matches_flowers_line():
    import re

    from flwr.simulation.ray_transport.ray_actor import VirtualClientEngineActor

    assert '"Manually terminating %s"' in inspect.getsource(VirtualClientEngineActor.terminate)
    assert re.search(simulation.ACTOR_NOISE, "\x1b[93mWARNING \x1b[0m:   Manually terminating ClientAppActor")


@pytest.mark.parametrize("verbosity, flwr_level", [(simulation.NORMAL, None), (simulation.QUIET, "ERROR"),
                                                   (simulation.VERBOSE, "DEBUG")])
def test_configure_output_sets_what_ray_and_flower_read(monkeypatch, verbosity, flwr_level):
    for var in (simulation.RAY_ACCEL_ENV, "FLWR_LOG_LEVEL", "RAY_DEDUP_LOGS_SKIP_REGEX", "PYTHONWARNINGS"):
        monkeypatch.delenv(var, raising=False)
    from flwr.supercore.logger import update_console_handler

    try:
        with warnings.catch_warnings():
            simulation.configure_output(verbosity)
    finally:
        update_console_handler(level=logging.INFO, timestamps=False)
    assert os.environ[simulation.RAY_ACCEL_ENV] == "0"
    assert os.environ.get("FLWR_LOG_LEVEL") == flwr_level
    assert ("RAY_DEDUP_LOGS_SKIP_REGEX" in os.environ) == (verbosity != simulation.VERBOSE)


def test_a_users_own_ray_setting_is_kept(monkeypatch):
    monkeypatch.setenv(simulation.RAY_ACCEL_ENV, "1")
    monkeypatch.delenv("RAY_DEDUP_LOGS_SKIP_REGEX", raising=False)  # restored afterwards
    simulation.configure_output(simulation.NORMAL)
    assert os.environ[simulation.RAY_ACCEL_ENV] == "1"


def _python(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_the_command_line_imports_neither_ray_nor_flower_before_configure_output():
    assert _python("import sys, fedlottery.cli, fedlottery.runtime.simulation, fedlottery.runs.report; "
                   "print(sorted(m for m in ('ray', 'flwr') if m in sys.modules))") == "[]"


def test_flwr_runs_clientapp_reference_installs_the_delivery_loop_only_in_the_simulation_process():
    components = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["components"]
    assert components["clientapp"] == "fedlottery.runtime.simulation:client_app"
    check = ("import sys; from flwr.supercore.object_ref import load_app, validate; "
             "assert validate('fedlottery.runtime.simulation:client_app') == (True, None); "
             "from flwr.clientapp import ClientApp; {pre}"
             "app = load_app('fedlottery.runtime.simulation:client_app', ValueError); assert isinstance(app, ClientApp); "
             "import fedlottery.runtime.client_app; assert app is fedlottery.runtime.client_app.app; "
             "vce = 'flwr.server.superlink.fleet.vce.vce_api'; "
             "print(vce in sys.modules, 'fedlottery.runtime.delivery' in sys.modules and "
             "sys.modules['fedlottery.runtime.delivery'].installed())")
    # a SuperNode / Ray actor without Flower's simulation runtime: nothing imported, nothing patched
    assert _python(check.format(pre="")) == "False False"
    # Flower's simulation process (vce_api loaded before it loads the ClientApp): patched
    assert _python(check.format(pre="import flwr.server.superlink.fleet.vce.vce_api; ")) == "True True"


# ---- what a person sees ------------------------------------------------------------------------------------
def test_partition_table():
    summary = {"num_clients": 20, "train_size": {"min": 40, "mean": 48.25, "max": 60},
               "val_size": {"min": 10, "mean": 12.0, "max": 15}, "test_size": {"min": 71, "mean": 72.0, "max": 74},
               "labels_per_client": {"min": 1, "mean": 2.0, "max": 3}, "total_train": 965, "total_val": 240}
    assert partition_table(summary).splitlines() == [
        "partitions: 20 clients",
        "  per client       min     mean    max    total",
        "  train images      40     48.2     60      965",
        "  val images        10     12.0     15      240",
        "  test images       71     72.0     74",
        "  labels             1      2.0      3",
    ]


def test_eta_leaves_out_the_first_unit(monkeypatch):
    clock = iter([0.0, 30.0, 30.0, 32.0, 32.0, 34.0, 34.0, 36.0, 36.0])  # start; then (step, elapsed) per unit
    monkeypatch.setattr("fedlottery.runs.results.time.perf_counter", lambda: next(clock))
    lines: list[str] = []
    progress = Progress(4, lines.append)
    for k in range(4):
        progress.step(f"round {k + 1}")
    assert lines[0] == "[1/4] round 1 (0:00:30 elapsed, ETA from [2/4] on)"  # 30 s of start-up: no guess
    assert lines[1] == "[2/4] round 2 (0:00:32 elapsed, ETA 0:00:04)"  # 2 s per round after the first, 2 left
    assert lines[3] == "[4/4] round 4 (0:00:36 elapsed, ETA 0:00:00)"


def test_quiet_and_verbose_exclude_each_other(capsys):
    from fedlottery.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["run", "c.yaml", "-q"]).quiet
    assert parser.parse_args(["compare", "c.yaml", "--verbose"]).verbose
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "c.yaml", "--quiet", "--verbose"])


# ---- --entry flwr: the wrapper around simulations/flwr_run.sh -----------------------------------------------
def test_without_run_simulation_the_command_falls_back_to_flwr_run(monkeypatch, capsys, tmp_path):
    from fedlottery import cli
    from fedlottery.runtime import flwr_entry

    args = cli.build_parser().parse_args(["run", "configs/default.yaml"])
    cli._choose_entry(args)
    assert args.entry == "simulation"  # this Flower still has it
    (tmp_path / "simulation").mkdir()  # a Flower whose simulation package lacks run_simulation.py
    monkeypatch.setattr(flwr_entry, "flower_package", lambda: tmp_path)
    args = cli.build_parser().parse_args(["run", "configs/default.yaml"])
    cli._choose_entry(args)
    assert args.entry == "flwr" and "running through `flwr run .`" in capsys.readouterr().err
    chosen = cli.build_parser().parse_args(["run", "configs/default.yaml", "--entry", "simulation"])
    cli._choose_entry(chosen)
    assert chosen.entry == "simulation"  # an explicit choice is kept


def test_flwr_entry_passes_the_effective_experiment_and_the_simulation_section(tmp_path, monkeypatch, tiny_config):
    from fedlottery.runtime import flwr_entry
    from fedlottery.config import to_dict
    from fedlottery.runtime.experiment import load_experiment

    cfg = load_experiment(str(_config(tiny_config, tmp_path)), rounds=7)
    cfg.simulation.num_gpus, cfg.simulation.ray_address = 0.25, "10.0.0.1:6379"
    seen = {}
    fake = tmp_path / "flwr_run.sh"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$SEEN"; env > "$SEEN.env"\n'
                    'echo \'{"strategies": {}}\' > "$OUT/summary.json"\n')
    fake.chmod(0o755)
    out = tmp_path / "out"
    monkeypatch.setattr(flwr_entry, "SCRIPT", fake)
    monkeypatch.setenv("SEEN", str(tmp_path / "seen"))
    monkeypatch.setenv("OUT", str(out))
    assert flwr_entry.run_with_flwr(cfg, out, resume=True) == {"strategies": {}}
    args = (tmp_path / "seen").read_text().splitlines()
    assert args[0] == "--run-config" and f'config="{out / "experiment.yaml"}"' in args[1] and "resume=true" in args[1]
    env = dict(line.split("=", 1) for line in (tmp_path / "seen.env").read_text().splitlines() if "=" in line)
    assert (env["NUM_SUPERNODES"], env["CLIENT_CPUS"], env["CLIENT_GPUS"]) == ("4", "1", "0.25")
    assert env["RAY_ADDRESS"] == "10.0.0.1:6379"
    written = load_experiment(str(out / "experiment.yaml"))
    assert to_dict(written) == to_dict(cfg) and written.rounds == 7  # the command line's override included


def test_a_failed_flwr_run_is_an_error_with_its_log(tmp_path, monkeypatch, capsys, tiny_config):
    from fedlottery.runtime import flwr_entry
    from fedlottery.runtime.experiment import load_experiment

    fake = tmp_path / "flwr_run.sh"
    fake.write_text("#!/usr/bin/env bash\necho 'ServerApp raised ValueError: boom'\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(flwr_entry, "SCRIPT", fake)
    cfg = load_experiment(str(_config(tiny_config, tmp_path)))
    with pytest.raises(RuntimeError, match="did not complete"):
        flwr_entry.run_with_flwr(cfg, tmp_path / "out", quiet=True)
    assert "ServerApp raised ValueError: boom" in capsys.readouterr().err  # held back, shown on failure
    monkeypatch.setattr(flwr_entry, "SCRIPT", tmp_path / "missing.sh")
    with pytest.raises(ValueError, match="needs fedlottery's source tree"):
        flwr_entry.check_flwr_entry()


def test_a_clients_traceback_from_the_engine_is_dropped_unless_verbose():
    """Flower's simulation engine logs a whole traceback for every client that raised (vce_api); the one-line
    cause and fedlottery's failures.log say it already, so only --verbose shows it."""
    def record(message: str, path: str) -> logging.LogRecord:
        return logging.LogRecord("flwr", logging.ERROR, path, 1, message, None, None)

    engine = ".../flwr/server/superlink/fleet/vce/vce_api.py"
    trace = "Traceback (most recent call last):\n  File ..."
    quiet = simulation._DropFlowerNoise(tracebacks=True)
    assert not quiet.filter(record(trace, engine))
    assert not quiet.filter(record("An exception was raised when processing a message by RayBackend",
                                   ".../vce/backend/raybackend.py"))
    remote = record("ray::ClientAppActor.run() (pid=1)\n  File x\n\nException ClientAppException occurred. "
                    "Message: boom\n", engine)
    assert quiet.filter(remote) and remote.getMessage() == ("a client raised: Exception ClientAppException "
                                                            "occurred. Message: boom")
    assert quiet.filter(record(trace, "/my/own/code.py"))  # anyone else's traceback stays
    assert simulation._DropFlowerNoise(tracebacks=False).filter(record(trace, engine))


def test_too_few_supernodes_is_one_line_naming_the_fix_not_a_silent_wait(monkeypatch, tiny_config):
    """Flower's default simulation federation has 2 SuperNodes; a 4-client experiment stops at once with the
    federation-config it needs, instead of waiting ten minutes for nodes that never come."""
    from fedlottery.config import from_dict, FederatedConfig
    from fedlottery.runtime import server_app

    class TwoNodes:
        def get_node_ids(self):
            return [11, 12]

    monkeypatch.setattr(server_app, "SIMULATED_NODES_GRACE", 0.2)
    cfg = from_dict(FederatedConfig, tiny_config())
    with pytest.raises(RuntimeError) as err:
        server_app.discover_clients(TwoNodes(), cfg, "", timeout=0.2)
    assert "has 2 SuperNode(s), the config has partition.num_clients = 4" in str(err.value)
    assert '--federation-config "num-supernodes=4"' in str(err.value) and "\n" not in str(err.value)


def test_run_config_sets_the_common_settings(tiny_config, tmp_path):
    """`flwr run . --run-config` reaches strategies, rounds, seed, clients per round and any --set key."""
    from fedlottery.runtime.server_app import experiment_from_run_config

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config()))
    cfg = experiment_from_run_config({"config": str(path), "strategies": "fedavg, lotteryfl", "num-rounds": 3,
                                      "seed": 7, "clients-per-round": 2, "set": "local.lr=0.05; partition.val_fraction=0.2"})
    assert (cfg.strategies, cfg.rounds, cfg.seed, cfg.clients_per_round) == (["fedavg", "lotteryfl"], 3, 7, 2)
    assert (cfg.local.lr, cfg.partition.val_fraction) == (0.05, 0.2)
    unset = experiment_from_run_config({"config": str(path), "strategies": "", "num-rounds": 0, "seed": -1,
                                        "clients-per-round": 0, "set": ""})
    assert unset == experiment_from_run_config({"config": str(path)})
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert {"strategies", "num-rounds", "seed", "clients-per-round", "set"} <= set(pyproject)


def test_a_clientapp_that_is_not_fedlotterys_is_named_in_one_line():
    from fedlottery.runtime.server_app import setup_failure

    line = setup_failure(7, "No query function registered with name 'default'")
    assert "node 7's ClientApp does not answer fedlottery's setup query" in line and "docs/plugins.md" in line
    assert setup_failure(7, "disk full") == "client setup failed on node 7: disk full"
