"""The checkpoint format: plain data with a version, loaded with weights_only=True; a committed checkpoint from a
real run resumes; every strategy's state survives the round trip; anything else is refused in one line."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedlottery.errors import CheckpointError
from fedlottery.plain_state import PlainStateError, from_plain, to_plain
from fedlottery.runs.checkpoint import CHECKPOINT_FILE, VERSION, load_checkpoint, save_checkpoint
from fedlottery.runtime.round_loop import StrategyRun
from fedlottery.sparsity import Mask
from fedlottery.sparsity.mask_table import MaskTable
from strategies import available

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "checkpoint_v1"


# ---- the committed checkpoint ---------------------------------------------------------------------------------
def test_the_committed_checkpoint_loads_with_weights_only():
    payload = load_checkpoint(FIXTURE / "run")
    assert payload["version"] == VERSION and payload["strategy"]["name"] == "fedltn"
    run = StrategyRun.from_state_dict(payload["run"])
    assert run.name == "fedltn" and run.rows and run.meter.total("up") > 0
    state = {k: from_plain(v) for k, v in payload["strategy"]["state"].items()}
    assert isinstance(state["masks"], MaskTable) and len(state["masks"]) == 4
    assert set(state["velocity"]) <= set(state["global_state"])


@pytest.mark.slow
def test_the_committed_checkpoint_resumes_to_a_finished_run(tmp_path):
    """Written by commit 7227867 (tests/fixtures/make_checkpoint_fixture.py), kept as it was: a resume
    keeps the rows the checkpoint covers and finishes both strategies."""
    out = tmp_path / "run"
    shutil.copytree(FIXTURE / "run", out)
    kept = (FIXTURE / "run" / "rounds.csv").read_text().splitlines()
    payload = load_checkpoint(out)
    covered = payload["files"]["rounds.csv"]
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    done = subprocess.run([sys.executable, "-m", "fedlottery.cli", "run", str(FIXTURE / "config.yaml"), "--out",
                           str(out), "--resume", "-q"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = (out / "rounds.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 + 4
    prefix = (FIXTURE / "run" / "rounds.csv").read_bytes()[:covered].decode().splitlines()
    assert rows[:len(prefix)] == prefix and len(prefix) <= len(kept)


# ---- every strategy's declared state ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(available()))
def test_every_strategy_declares_its_state_and_it_round_trips(name, make_setup, tmp_path):
    cls = available()[name]
    strategy = cls(make_setup("cnn_digits_bn"))
    undeclared = set(vars(strategy)) - set(cls.state_fields) - set(cls.rebuilt_fields)
    assert not undeclared, f"{name}: attributes neither saved nor rebuilt: {sorted(undeclared)}"
    strategy.failures.append("round 1 train partition 0: a test")
    torch.save(strategy.state_dict(), tmp_path / "state.pt")
    fresh = cls(make_setup("cnn_digits_bn"))
    fresh.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert _same(fresh.state_dict(), strategy.state_dict())


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_plain_state_round_trips_masks_tables_and_rngs():
    import random

    mask = Mask({"w": torch.tensor([[True, False, True], [False, False, True]])})
    table = MaskTable()
    table.assign([0, 1, 2], mask)
    table[3] = Mask.ones({"w": (2, 3)})
    rng = random.Random(7)
    rng.random()
    generator = torch.Generator().manual_seed(3)
    value = {"mask": mask, "table": table, "rng": rng, "gen": generator, "set": frozenset({2, 1}), "t": (1, "a")}
    buffer = io.BytesIO()
    torch.save(to_plain(value), buffer)
    back = from_plain(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    assert back["mask"] == mask and [back["table"][p] for p in range(4)] == [table[p] for p in range(4)]
    assert back["rng"].random() == rng.random()
    assert torch.equal(torch.rand(3, generator=back["gen"]), torch.rand(3, generator=generator))
    assert back["set"] == frozenset({1, 2}) and back["t"] == (1, "a")


def test_an_object_without_a_plain_form_is_refused_by_name():
    class Live:
        pass

    with pytest.raises(PlainStateError, match=r"^fedavg\.extra\['x'\]: a .*Live has no plain form"):
        to_plain({"x": Live()}, "fedavg.extra")


# ---- refused, never executed ----------------------------------------------------------------------------------
class _RunsACommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _write(tmp_path: Path, data: bytes) -> Path:
    (tmp_path / CHECKPOINT_FILE).write_bytes(data)
    return tmp_path


def test_a_checkpoint_whose_pickle_would_run_a_command_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    buffer = io.BytesIO()
    torch.save({"format": "fedlottery-checkpoint", "version": VERSION, "run": _RunsACommand(marker)}, buffer)
    with pytest.raises(CheckpointError, match=r"holds pickled Python objects \(posix.system\).*refused without running them"):
        load_checkpoint(_write(tmp_path, buffer.getvalue()))
    assert not marker.exists()


def test_empty_truncated_corrupt_and_foreign_checkpoints_are_one_line_errors(tmp_path):
    save_checkpoint(tmp_path, {"config": {}, "round": 1})
    whole = (tmp_path / CHECKPOINT_FILE).read_bytes()
    assert load_checkpoint(tmp_path)["round"] == 1
    cases = {
        "empty": (b"", r"is empty \(0 bytes\)"),
        "truncated": (whole[: len(whole) // 2], "is truncated or corrupt"),
        "corrupt": (b"\x00garbage" * 40, "is truncated or corrupt"),
    }
    foreign = io.BytesIO()
    torch.save({"config": {}, "round": 1}, foreign)  # plain, but not ours (e.g. the old format)
    cases["foreign"] = (foreign.getvalue(), "is not a fedlottery checkpoint")
    newer = io.BytesIO()
    torch.save({"format": "fedlottery-checkpoint", "version": VERSION + 1}, newer)
    cases["newer"] = (newer.getvalue(), f"is checkpoint format version {VERSION + 1}")
    for name, (data, pattern) in cases.items():
        with pytest.raises(CheckpointError, match=pattern) as err:
            load_checkpoint(_write(tmp_path, data))
        assert "\n" not in str(err.value) and "--overwrite" in str(err.value), name


@pytest.mark.slow
def test_resume_on_a_crafted_checkpoint_is_exit_2_and_one_line(tmp_path):
    marker = tmp_path / "ran"
    out = tmp_path / "out"
    out.mkdir()
    buffer = io.BytesIO()
    torch.save({"format": "fedlottery-checkpoint", "version": VERSION, "run": _RunsACommand(marker)}, buffer)
    (out / CHECKPOINT_FILE).write_bytes(buffer.getvalue())
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    done = subprocess.run([sys.executable, "-m", "fedlottery.cli", "run", "configs/default.yaml", "--out", str(out),
                           "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "refused without running them" in lines[0], done.stderr
    assert not marker.exists()
