"""End-to-end IMP on the embedded digits set, through the runner and the CLI."""
import json

import pytest
import torch

from fedlottery.cli import main
from fedlottery.config import ImpConfig, from_dict
from fedlottery.imp import LEVEL_COLUMNS, EarlyBird, ImpRunner
from fedlottery.runs.results import read_csv
from fedlottery.sparsity import Mask


def _config(**pruning):
    return from_dict(ImpConfig, {
        "seeds": [0],
        "data": {"dataset": "digits", "val_size": 200},
        "model": {"name": "mlp_digits"},
        "training": {"iterations": 60, "eval_every": 20, "batch_size": 64},
        "pruning": {"rate": 0.5, "output_rate": 0.25, "levels": 3, **pruning},
        "controls": {"variants": ["reinit", "random_mask"], "levels": [2]},
    })


def test_imp_runner_writes_levels_masks_summary_plot(tmp_path):
    rows = ImpRunner(_config(), tmp_path, log=lambda _: None).run()
    table = read_csv(tmp_path / "levels.csv")
    assert list(table[0]) == LEVEL_COLUMNS
    assert [(r["level"], r["variant"]) for r in table] == [
        (0, "ticket"), (1, "ticket"), (2, "ticket"), (2, "reinit"), (2, "random_mask"), (3, "ticket")]
    assert len(rows) == 6
    pct = [r["percent_remaining"] for r in table if r["variant"] == "ticket"]
    assert pct[0] == 100 and pct == sorted(pct, reverse=True)
    # Controls share the ticket's exact per-layer density.
    level2 = {r["variant"]: r["percent_remaining"] for r in table if r["level"] == 2}
    assert level2["reinit"] == level2["random_mask"] == level2["ticket"]
    masks = [Mask.load(tmp_path / "masks" / f"seed0_level{i}.npz") for i in range(4)]
    for before, after in zip(masks, masks[1:]):  # iterative: each level's mask nests in the last
        assert all(not (after[n] & ~before[n]).any() for n in before)
    assert abs(100 * masks[3].density() - pct[3]) < 1e-3
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["config"]["pruning"]["rate"] == 0.5 and len(summary["levels"]) == 6
    assert summary["torch_threads"] == torch.get_num_threads()
    assert (tmp_path / "accuracy_vs_remaining.png").stat().st_size > 1000
    assert all(0.5 < r["test_acc_final"] <= 1 for r in table)  # digits is easy: a broken loop shows here


def test_imp_is_reproducible(tmp_path):
    a = ImpRunner(_config(levels=1), tmp_path / "a", log=lambda _: None).run()
    b = ImpRunner(_config(levels=1), tmp_path / "b", log=lambda _: None).run()
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]  # noqa: E731
    assert strip(a) == strip(b)


@pytest.mark.parametrize("extra", [
    {"style": "one_shot"}, {"scope": "global"}, {"rewind": "iteration", "rewind_iteration": 10},
    {"rewind": "lr"}, {"rewind": "finetune"}, {"target_density": 0.3},
])
def test_imp_variants_run(tmp_path, extra):
    cfg = _config(**extra)
    cfg.controls.variants = []
    rows = ImpRunner(cfg, tmp_path, log=lambda _: None).run()
    assert rows[-1]["percent_remaining"] < 100
    if "target_density" in extra:
        assert min(r["percent_remaining"] for r in rows) >= 30 - 0.01
        assert len(rows) < 4  # stopped once the target was reached


def test_early_bird_fires_when_masks_stop_moving():
    masks = iter([Mask.ones({"a": (10,)})] * 5)
    bird = EarlyBird(lambda params: next(masks), epsilon=0.1, patience=2)
    fired = [bird(e, torch.nn.Linear(1, 1)) for e in range(1, 5)]
    assert fired == [False, False, True, True] and bird.epoch == 3 and bird.distances == [0.0] * 3


def test_early_bird_stop_shortens_training(tmp_path):
    cfg = _config(levels=1)
    cfg.training.iterations = 400
    cfg.early_bird.enabled, cfg.early_bird.stop, cfg.early_bird.epsilon = True, True, 0.5
    cfg.controls.variants = []
    rows = ImpRunner(cfg, tmp_path, log=lambda _: None).run()
    assert rows[0]["early_bird_epoch"] is not None and rows[0]["iterations"] < 400


def test_cli_imp_runs_and_refuses_to_overwrite(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(
        "data: {dataset: digits, val_size: 100}\n"
        "training: {iterations: 30, eval_every: 10}\n"
        "pruning: {levels: 1}\ncontrols: {variants: [reinit], levels: [1]}\n"
    )
    out = tmp_path / "out"
    assert main(["imp", str(config), "--out", str(out)]) == 0
    assert "| ticket | 1 |" in capsys.readouterr().out
    assert main(["imp", str(config), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["imp", str(config), "--out", str(out), "--overwrite", "--seeds", "4",
                 "--set", "supermask.enabled=true"]) == 0
    table = read_csv(out / "levels.csv")
    assert {r["seed"] for r in table} == {4} and "supermask" in {r["variant"] for r in table}
    assert "| supermask | 0 |" in capsys.readouterr().out
    assert main(["imp", str(config), "--out", str(out), "--overwrite", "--set", "supermask.lr=0"]) == 2
    assert "supermask.lr" in capsys.readouterr().err


def test_cli_reports_config_errors(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("pruning: {rate: 2}\n")
    assert main(["imp", str(config)]) == 2
    assert "pruning.rate" in capsys.readouterr().err


def test_supermask_run_learns_a_mask_over_frozen_theta0(tmp_path):
    """The supermask row is theta_0 under the saved mask, untouched weights: rebuilding that model from the seed
    gives the recorded accuracy. theta_0 itself is near chance (10%); a mask learned over the same weights is
    far above it."""
    from fedlottery.imp import _splits
    from fedlottery.models import prunable_names
    from fedlottery.training import evaluate

    cfg = _config(levels=1)
    cfg.controls.variants, cfg.training.iterations, cfg.supermask.enabled = [], 120, True
    runner = ImpRunner(cfg, tmp_path, log=lambda _: None)
    rows = runner.run()
    assert [(r["level"], r["variant"]) for r in rows] == [(0, "ticket"), (0, "supermask"), (1, "ticket")]
    row = rows[1]
    kept = Mask.load(tmp_path / "masks" / "seed0_supermask.npz")
    assert abs(100 * kept.density() - row["percent_remaining"]) < 1e-3 and 20 < row["percent_remaining"] < 80
    model = runner._fresh_model(0)  # theta_0, rebuilt from the seed
    untrained = evaluate(model, _splits(runner.dataset, 200, 0, "cpu").test)[1]
    with torch.no_grad():
        for name in prunable_names(model):
            model.state_dict()[name].mul_(kept[name].to(torch.float32))
    assert evaluate(model, _splits(runner.dataset, 200, 0, "cpu").test)[1] == pytest.approx(row["test_acc_early_stop"])
    assert untrained < 0.3 < 0.6 < row["test_acc_early_stop"]
    again = ImpRunner(cfg, tmp_path / "again", log=lambda _: None).run()
    assert [r["test_acc_early_stop"] for r in again] == [r["test_acc_early_stop"] for r in rows]


def test_supermask_options_are_checked():
    from fedlottery.config import ConfigError

    with pytest.raises(ConfigError, match="supermask.lr"):
        from_dict(ImpConfig, {"supermask": {"enabled": True, "lr": 0}})
