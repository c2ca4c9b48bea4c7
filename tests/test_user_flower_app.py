"""A user's own Flower app (tests/fixtures/user_flower_app: their model factory and data loader) runs fedlottery's
strategies through fedlottery.flower.apps under Flower's simulation, with the byte meter and the reply checks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedlottery.flower import import_path

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "tests" / "fixtures" / "user_flower_app"
SCRIPT = """
import sys
from flwr.simulation import run_simulation
from user_app.apps import client_app, server_app
run_simulation(server_app=server_app, client_app=client_app, num_supernodes=3, backend_name="ray",
               backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                               "init_args": {"num_cpus": 2, "include_dashboard": False}})
"""


@pytest.mark.slow
def test_a_users_flower_app_runs_lottery_strategies_on_its_own_model_and_data(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(APP), str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "FLWR_TELEMETRY_ENABLED": "0", "RAY_ADDRESS": "local"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    summary_path = tmp_path / "runs" / "flwr" / "summary.json"
    assert summary_path.exists(), (done.stdout + done.stderr)[-4000:]
    summary = json.loads(summary_path.read_text())
    assert summary["config"]["model"]["name"] == "user_app.nets:build"
    assert summary["config"]["data"]["dataset"] == "user_app.data:load"
    assert list(summary["strategies"]) == ["lotteryfl", "flash-jmwst", "fedavg"]
    for name, s in summary["strategies"].items():
        assert s["rounds"] == 2 and s["failures"] == [] and s["bytes_up"] > 0, name
        assert s["personalized_acc_final"] is not None and s["evaluated_clients_final"] == 3
    assert summary["strategies"]["flash-jmwst"]["density_mean_final"] == pytest.approx(0.3, abs=0.02)
    assert summary["strategies"]["flash-jmwst"]["bytes_up"] < 0.6 * summary["strategies"]["fedavg"]["bytes_up"]


def test_a_function_the_clients_cannot_import_is_refused_in_one_line():
    def nested(input_shape, num_classes):
        return None

    with pytest.raises(ValueError, match="top level of an importable module"):
        import_path(nested)
    with pytest.raises(ValueError, match="top level"):
        import_path(lambda: None)
    from fedlottery.models import build_model

    assert import_path(build_model) == "fedlottery.models:build_model"
