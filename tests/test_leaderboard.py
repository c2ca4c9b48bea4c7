"""The leaderboard page is generated from the records and current; its verdict, families and frontier behave."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedlottery.runs import families, frontier, leaderboard
from fedlottery.runs.leaderboard import Row, verdict

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "docs" / "leaderboard.yaml"


def test_the_committed_page_is_what_the_records_generate(tmp_path):
    page = leaderboard.build(SPEC, tmp_path / "leaderboard.md", tmp_path / "img")
    committed = (ROOT / "docs" / "leaderboard.md").read_text()
    assert page.read_text() == committed, "docs/leaderboard.md is stale: run fedlottery report --leaderboard " \
                                          "docs/leaderboard.yaml"
    assert sorted(p.name for p in (tmp_path / "img").iterdir()) == sorted(
        p.name for p in (ROOT / "docs" / "img" / "leaderboard").iterdir())


def _row(name, fam, honest, tuned=None, ratio=1.0):
    return Row(name, fam, [0, 1, 2], honest, tuned, (10.0 * ratio, 0.0), ratio, None, 40)


REFS = ["fedavg", "fedbn"]


def test_a_contender_wins_only_when_its_error_bar_clears_the_strongest_reference():
    table = [_row("fedavg", "dense", (80.0, 1.0), (85.0, 1.0)), _row("fedbn", "dense", (84.0, 2.5)),
             _row("ticket", "lottery ticket", (88.0, 1.0), ratio=0.3)]
    v = verdict(table, REFS)
    assert v["reference"].name == "fedbn" and v["contender"].name == "ticket"  # 84 + 2.5 above fedavg's 85 + 1
    assert v["wins"] and v["margin"] == pytest.approx(87.0 - 86.5)
    table[2] = _row("ticket", "lottery ticket", (87.0, 1.0), ratio=0.3)  # 86 < 86.5: the bars overlap
    assert not verdict(table, REFS)["wins"]


def test_a_record_with_fewer_than_three_seeds_decides_no_win():
    """A zero spread over one seed would let any lead 'win': a record still being made stays undecided."""
    from fedlottery.runs.leaderboard import verdict_line

    table = [_row("fedavg", "dense", (80.0, 0.0)), _row("fedbn", "dense", (79.0, 0.0)),
             _row("ticket", "lottery ticket", (88.0, 0.0), ratio=0.3)]
    table[2].seeds = [0]
    v = verdict(table, REFS)
    assert v["margin"] == pytest.approx(8.0) and not v["decided"] and not v["wins"]
    assert "not decided before 3 seeds (1 so far)" in verdict_line(v) and "**wins**" not in verdict_line(v)
    table[2].seeds = [0, 1, 2]
    assert verdict(table, REFS)["wins"]


def test_the_better_treatment_counts_and_uplink_and_family_gate_the_contenders():
    table = [_row("fedavg", "dense", (80.0, 1.0)), _row("fedbn", "dense", (79.0, 1.0)),
             _row("tuned", "sparse training", (70.0, 1.0), (90.0, 1.0), ratio=0.2),
             _row("heavy", "lottery ticket", (95.0, 0.1), ratio=0.34),  # above a third of FedAvg's uplink
             _row("fedper", "personalised", (99.0, 0.1), ratio=0.1)]  # not a sparse or compressed method
    v = verdict(table, REFS)
    assert v["contender"].name == "tuned" and v["contender"].best == (90.0, 1.0, "fine-tuned") and v["wins"]
    assert verdict(table[:2], REFS)["contender"] is None
    assert verdict(table, ["ditto"])["reference"] is None


def test_families_read_variants_from_the_record_config():
    config = {"strategies": ["fedavg", {"name": "fedavg", "label": "fedavg-q8", "comm": {"uplink": {"quantize": {}}}},
                             {"name": "fedltn", "label": "fedltn-p5", "options": {"prune_rate": 0.5}}]}
    assert families.family("fedavg", config) == "dense"
    assert families.family("fedavg-q8", config) == families.COMPRESSED
    assert families.family("fedltn-p5", config) == "lottery ticket"
    assert families.family("someone-elses", config) == families.OTHER
    colours = families.palette(["fedavg", "fedbn", "fedavg-q8"], {"strategies": config["strategies"]})
    assert len(set(colours.values())) == 3


def _summary(strategies: dict) -> dict:
    config = {"data": {"dataset": "mnist"}, "model": {"name": "m"}, "rounds": 4, "strategies": list(strategies)}
    return {"config": config, "strategies": {
        n: {"personalized_acc_final": a, "finetuned_acc_final": t, "bytes_up": up, "bytes_down": up, "rounds": 4}
        for n, (a, t, up) in strategies.items()}}


def test_the_frontier_leaves_far_low_points_off_the_axis_and_names_them(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    captured = {}
    monkeypatch.setattr(plt, "close", lambda fig: captured.setdefault("fig", fig))
    runs = {seed: _summary({"fedavg": (0.90 + d, 0.95, 3 * 2**20), "local": (0.91, 0.91, 0),
                            "ticket": (0.20 + d, 0.93, 2**20)}) for seed, d in ((0, 0.0), (1, 0.01))}
    path = tmp_path / "f.png"
    frontier.plot_frontier(runs, ["fedavg", "local", "ticket"], families.palette(["fedavg", "local", "ticket"],
                           runs[0]["config"]), "a title", path)
    assert path.read_bytes()[:4] == b"\x89PNG"
    ax = captured["fig"].axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert "ticket as sent: 20.5 ↓" in texts and "local (0 B up)" in texts
    assert "1/3 of FedAvg's uplink" in [t.get_text() for t in ax.get_legend().get_texts()]  # off the data
    assert ax.get_ylim()[0] > 80 and ax.get_xscale() == "log"
    assert "2 seeds" in ax.get_title()


def test_names_left_off_the_axis_at_nearby_uplinks_do_not_overlap(tmp_path, monkeypatch):
    """Seven far-low points within a decade of uplink: their names at the bottom edge stack in rows instead of
    printing over each other (the drawn extents, in the final layout, overlap nowhere)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    captured = {}
    monkeypatch.setattr(plt, "close", lambda fig: captured.setdefault("fig", fig))
    names = [f"sparse-method-{i}" for i in range(7)]
    runs = {seed: _summary({"fedavg": (0.94, 0.95, 30 * 2**20),
                            **{n: (0.20, 0.93, (5 + i) * 2**20) for i, n in enumerate(names)}}) for seed in (0, 1)}
    frontier.plot_frontier(runs, ["fedavg", *names], families.palette(["fedavg", *names], runs[0]["config"]),
                           "a title", tmp_path / "f.png")
    fig = captured["fig"]
    renderer = fig.canvas.get_renderer()
    below = [t.get_window_extent(renderer) for t in fig.axes[0].texts if "as sent:" in t.get_text()]
    assert len(below) == 7
    assert not any(a.overlaps(b) for i, a in enumerate(below) for b in below[i + 1:])


def test_rows_rank_by_the_better_treatment_and_count_the_uplink_ratio(tmp_path):
    for seed in (0, 1):
        d = tmp_path / f"seed{seed}"
        d.mkdir()
        (d / "summary.json").write_text(json.dumps(_summary({"fedavg": (0.8, 0.9, 100), "ticket": (0.85, 0.86, 25)})))
    table = leaderboard.rows(tmp_path)
    assert [r.name for r in table] == ["fedavg", "ticket"] and table[1].ratio == pytest.approx(0.25)
    assert "| 2 | ticket | other | 0,1 | 85.00 ± 0.00 | 86.00 ± 0.00 | fine-tuned |" in leaderboard.table_markdown(table)


def test_a_claim_is_a_paired_difference_judged_against_its_spread():
    from fedlottery.runs.leaderboard import claim_verdict, paired_delta

    runs = {seed: _summary({"fedavg": (0.80 + d, 0.85, 100), "mine": (0.83 + 2 * d, 0.84, 25)})
            for seed, d in ((0, 0.0), (1, 0.01), (2, 0.02))}
    delta = paired_delta(runs, "mine", "as sent", "fedavg", "as sent")
    assert delta[0] == pytest.approx(4.0) and delta[1] == pytest.approx(1.0) and delta[2] == 3  # +3, +4, +5
    assert claim_verdict(delta, 0) == "holds" and claim_verdict(delta, 10) == "does not hold"
    assert claim_verdict(delta, 3.5) == "within the spread"
    tuned = paired_delta(runs, "mine", "as sent", "fedavg", "fine-tuned")  # -2, -1, 0
    assert claim_verdict(tuned, 0) == "within the spread" and claim_verdict(tuned, 0, no_worse=True) == "holds"
    assert claim_verdict(paired_delta(runs, "ditto", "as sent", "fedavg", "as sent"), 0) == "not recorded"
    assert claim_verdict((5.0, 0.0, 2), 0) == "not decided (2 of 3 seeds)"  # no spread to judge by yet
