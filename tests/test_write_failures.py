"""A write that fails mid-run (disk full, permission lost, directory removed) is one line: exit 2, the rounds
finished before it on disk, the checkpoint whole, and the line saying --resume goes on, which it then does."""
from __future__ import annotations

import errno
from pathlib import Path

import pytest
import yaml

from fedlottery.cli import main
from fedlottery.errors import ResultsWriteError
from fedlottery.runs.checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from fedlottery.runs.results import CsvLog
from fedlottery.runtime.server_app import results_write_error

def test_the_line_says_where_the_checkpoint_stands(tmp_path):
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "rounds.csv"))
    line = str(results_write_error(tmp_path, full))
    assert "No space left on device" in line and "nothing to resume" in line and "--overwrite" in line
    save_checkpoint(tmp_path, {"strategy_index": 0, "round": 3, "strategy": {"name": "fedavg", "state": {}}})
    line = str(results_write_error(tmp_path, full))
    assert "after fedavg round 3" in line and "--resume" in line and "\n" not in line


def test_a_checkpoint_that_cannot_be_written_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    import torch

    save_checkpoint(tmp_path, {"round": 1})

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, {"round": 2})
    monkeypatch.undo()
    assert load_checkpoint(tmp_path)["round"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_FILE]


def _rows(out: Path) -> list[str]:
    return (out / "rounds.csv").read_text().splitlines()[1:]


@pytest.mark.slow
def test_disk_full_mid_run_is_one_line_and_resume_finishes(tmp_path, capsys, monkeypatch, tiny_config):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config(rounds=4, partition={"shard_size": 30, "val_fraction": 0.2},
                                                  evaluation={"every": 2})))
    out = tmp_path / "out"
    real_append, written = CsvLog.append, []

    def fills_the_disk_at_round_3(self, row):
        if self.path.name == "rounds.csv" and row["round"] == 3:
            with self.path.open("a") as f:
                f.write("3,fedavg,1,2,0.")  # half a row, as a full disk leaves it
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        written.append(row["round"])
        return real_append(self, row)

    monkeypatch.setattr(CsvLog, "append", fills_the_disk_at_round_3)
    assert main(["run", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("fedlottery: error:")]
    print(lines[0] if lines else err[-2000:])
    assert len(lines) == 1, err[-3000:]
    assert "No space left on device" in lines[0] and "after fedavg round 2" in lines[0] and "--resume" in lines[0]
    assert load_checkpoint(out)["round"] == 2  # consistent: the last finished round
    assert [r.split(",")[0] for r in _rows(out)][:2] == ["1", "2"]
    monkeypatch.undo()
    assert main(["run", str(config), "--out", str(out), "--resume"]) == 0, capsys.readouterr().err[-3000:]
    assert [r.split(",")[0] for r in _rows(out)] == ["1", "2", "3", "4"]  # the half row was cut back


def test_a_client_that_cannot_write_its_state_stops_the_run(flower_run):
    """Client state lives on the same disk: a full disk there is no client's own failure (every client would
    fail alike, silently changing the run), so the server stops with the same one line."""
    from flwr.app import Error, Message, RecordDict
    from flwr.common.constant import ErrorCode

    from fedlottery.runtime import round_loop

    ask = Message(RecordDict(), 1, "train")
    ask.metadata.__dict__["_message_id"] = "m1"
    reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                          reason="OSError: [Errno 28] No space left on device: '/runs/x/client_state/fedavg/0/.2.tmp'"),
                    reply_to=ask)

    class Grid:
        def send_and_receive(self, messages, timeout):
            return [reply]

    with pytest.raises(OSError) as err:
        round_loop.send(Grid(), [ask], 10.0, 2, "training", None, round_loop.StrategyRun("fedavg"))
    assert err.value.errno == errno.ENOSPC and "could not write its state" in str(err.value)
    assert not isinstance(err.value, ResultsWriteError)  # run_experiment turns it into the one line


def test_run_experiment_turns_a_failed_write_into_the_one_line(tmp_path, monkeypatch):
    from fedlottery.runtime import server_app

    def fails(*args):
        raise OSError(errno.EACCES, "Permission denied", str(tmp_path / "summary.json"))

    monkeypatch.setattr(server_app, "_run_experiment", fails)
    with pytest.raises(ResultsWriteError, match="Permission denied .*nothing to resume"):
        server_app.run_experiment(None, None, tmp_path)

    def bug(*args):
        raise OSError(errno.ECONNREFUSED, "Connection refused")  # not a write: stays what it is

    monkeypatch.setattr(server_app, "_run_experiment", bug)
    with pytest.raises(OSError) as err:
        server_app.run_experiment(None, None, tmp_path)
    assert not isinstance(err.value, ResultsWriteError)
