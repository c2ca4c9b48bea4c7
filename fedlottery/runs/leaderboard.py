"""The leaderboard page: every method on every recorded setting, generated from the records, never hand-copied.

A YAML spec (docs/leaderboard.yaml) lists the settings: a title, the `--seeds` record directory, the command that
made it and notes (cuts, labels). `build` reads each record's seed summaries and writes one markdown page with,
per setting, a table ranked by each method's better treatment (as sent or fine-tuned, whichever has the higher
mean: every method gets the same choice), its frontier plot, and the verdict of the question the project asks:
does a sparse or compressed method beat the strongest references by more than the spread over seeds, at no more
than a third of FedAvg's uplink? Regenerating the page from unchanged records changes nothing (a test checks).
"""
from __future__ import annotations

import os
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

import yaml

from fedlottery.runs.families import family, palette
from fedlottery.runs.frontier import MB, plot_frontier
from fedlottery.runs.report import LOCAL, run_hurt, setting
from fedlottery.runs.seeds import schedule_note, seed_dir, summaries

BASELINE = "fedavg"
CONTENDERS = ("lottery ticket", "sparse training", "supermask", "compressed uplink", "other")  # may "win"
MAX_UPLINK = 1 / 3  # of FedAvg's measured uplink
MIN_SEEDS = 3  # a spread over fewer seeds decides nothing: no win, no claim verdict before three
GENERATED = "<!-- generated from the records by `{command}`: do not edit by hand -->"


@dataclass
class Row:
    """One method on one setting, over the seeds it was run with (accuracies in %, uplink in MiB)."""

    name: str
    family: str
    seeds: list[int]
    honest: tuple[float, float]
    tuned: tuple[float, float] | None
    up: tuple[float, float]
    ratio: float | None
    hurt: tuple[float, float] | None
    rounds: int | None

    @property
    def best(self) -> tuple[float, float, str]:
        """(mean, std, which): the better of the two treatments by mean."""
        if self.tuned is not None and self.tuned[0] > self.honest[0]:
            return (*self.tuned, "fine-tuned")
        return (*self.honest, "as sent")


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def rows(record: Path, runs: dict[int, dict] | None = None) -> list[Row]:
    """Every method of a `--seeds` record, ranked by its better treatment's mean (best first); `runs` are its
    seed summaries when the caller has read them already."""
    runs = summaries(record) if runs is None else runs
    if not runs:
        raise FileNotFoundError(f"{record} holds no seed<S>/summary.json: is it a --seeds record?")
    config = next(iter(runs.values()))["config"]
    hurt = {seed: run_hurt(seed_dir(record, seed)) for seed in runs}
    base = [s["strategies"][BASELINE]["bytes_up"] for s in runs.values() if BASELINE in s["strategies"]]
    base_up = statistics.fmean(base) if base else None
    out = []
    for name in dict.fromkeys(n for s in runs.values() for n in s["strategies"]):
        per_seed = {seed: s["strategies"][name] for seed, s in runs.items() if name in s["strategies"]}
        row = _row(name, family(name, config), per_seed, hurt, base_up)
        if row is not None:
            out.append(row)
    return sorted(out, key=lambda r: -r.best[0])


def _row(name: str, fam: str, per_seed: dict[int, dict], hurt: dict[int, dict], base_up: float | None) -> Row | None:
    """One method's Row from its seeds' summaries; None when no seed has an honest accuracy."""
    def percents(key: str) -> list[float]:
        return [100 * v[key] for v in per_seed.values() if v.get(key) is not None]

    honest, tuned = percents("personalized_acc_final"), percents("finetuned_acc_final")
    if not honest:
        return None
    up = [v["bytes_up"] / MB for v in per_seed.values()]
    shares = [100 * hurt[seed][name] for seed in per_seed if hurt[seed].get(name) is not None]
    return Row(name, fam, list(per_seed), _mean_std(honest), _mean_std(tuned) if tuned else None, _mean_std(up),
               statistics.fmean(up) * MB / base_up if base_up else None,
               _mean_std(shares) if shares and name != LOCAL else None,
               max((v.get("rounds") or 0) for v in per_seed.values()) or None)


def verdict(table: list[Row], references: list[str]) -> dict:
    """Whether a contender (a sparse or compressed method at <= 1/3 of FedAvg's uplink) beats every reference
    by more than the spread: its better treatment's mean - std above each reference's mean + std. Returns the
    closest contender (largest margin, in points), the reference it is measured against, `wins`, and `decided`
    (both have MIN_SEEDS seeds: on fewer the spread means little, so a record still being made never wins)."""
    refs = [r for r in table if r.name in references]
    if not refs:
        return {"wins": False, "contender": None, "reference": None, "margin": None, "missing": references}
    strongest = max(refs, key=lambda r: r.best[0] + r.best[1])
    ceiling = strongest.best[0] + strongest.best[1]
    contenders = [r for r in table if r.family in CONTENDERS and r.ratio is not None and r.ratio <= MAX_UPLINK]
    if not contenders:
        return {"wins": False, "contender": None, "reference": strongest, "margin": None,
                "missing": [n for n in references if n not in {r.name for r in refs}]}
    closest = max(contenders, key=lambda r: r.best[0] - r.best[1])
    margin = closest.best[0] - closest.best[1] - ceiling
    seeds = min(len(closest.seeds), len(strongest.seeds))
    return {"wins": margin > 0 and seeds >= MIN_SEEDS, "decided": seeds >= MIN_SEEDS, "seeds": seeds,
            "contender": closest, "reference": strongest, "margin": margin,
            "missing": [n for n in references if n not in {r.name for r in refs}]}


METRICS = {"as sent": "personalized_acc_final", "fine-tuned": "finetuned_acc_final"}


def paired_delta(runs: dict[int, dict], method: str, metric: str, against: str, against_metric: str
                 ) -> tuple[float, float, int] | None:
    """(mean, std, seeds) over seeds of method's `metric` minus against's `against_metric`, in points, each seed
    paired with itself; None when no seed has both."""
    deltas = []
    for s in runs.values():
        mine = s["strategies"].get(method, {}).get(METRICS[metric])
        theirs = s["strategies"].get(against, {}).get(METRICS[against_metric])
        if mine is not None and theirs is not None:
            deltas.append(100 * (mine - theirs))
    if not deltas:
        return None
    return (*_mean_std(deltas), len(deltas))


def claim_verdict(delta: tuple[float, float, int] | None, above: float, no_worse: bool = False) -> str:
    """A claim that one method beats another by more than `above` points: "holds" when the paired difference's
    mean - std clears it, "does not hold" when its mean + std stays under it, "within the spread" between. A
    `no_worse` claim ("no accuracy lost") holds unless mean + std stays under `above`. "not recorded" without
    the two methods on one seed; "not decided" on fewer than MIN_SEEDS seeds."""
    if delta is None:
        return "not recorded"
    mean, std, seeds = delta
    if seeds < MIN_SEEDS:
        return f"not decided ({seeds} of {MIN_SEEDS} seeds)"
    if mean + std < above:
        return "does not hold"
    if no_worse or mean - std > above:
        return "holds"
    return "within the spread"


def claims_markdown(claims: list[dict], records: dict[str, dict[int, dict]]) -> str:
    """The claims table: each paper's claim as a paired difference on one setting (`records`: setting title ->
    its seed summaries), with its verdict."""
    head = ["paper", "claim", "setting", "tested as", "measured (paired, points)", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in claims:
        delta = paired_delta(records[c["setting"]], c["method"], c["metric"], c["against"], c["against_metric"])
        sign = "≥" if c.get("no_worse") else ">"
        tested = f"{c['method']} ({c['metric']}) − {c['against']} ({c['against_metric']}) {sign} {c['above']:g}"
        measured = "" if delta is None else f"{delta[0]:+.2f} ± {delta[1]:.2f} ({delta[2]} seed{'s' * (delta[2] != 1)})"
        lines.append("| " + " | ".join([c["paper"], c["claim"], c["setting"], tested, measured,
                                         claim_verdict(delta, c["above"], c.get("no_worse", False))]) + " |")
    return "\n".join(lines)


def _pm(pair: tuple[float, float] | None, digits: int = 2) -> str:
    return "" if pair is None else f"{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}"


def table_markdown(table: list[Row]) -> str:
    head = ["#", "method", "family", "seeds", "as sent %", "fine-tuned %", "better", "MiB up", "up / FedAvg",
            "clients hurt vs local", "rounds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rank, r in enumerate(table, 1):
        hurt = "reference" if r.name == LOCAL else ("" if r.hurt is None else f"{r.hurt[0]:.0f}% ± {r.hurt[1]:.0f}%")
        cells = [str(rank), r.name, r.family, ",".join(map(str, r.seeds)), _pm(r.honest), _pm(r.tuned), r.best[2],
                 _pm(r.up), "" if r.ratio is None else f"{r.ratio:.3f}", hurt, str(r.rounds or "")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict_line(v: dict) -> str:
    c, ref = v["contender"], v["reference"]
    if ref is None:
        return "no reference method in this record: " + ", ".join(v["missing"])
    if c is None:
        return ("no sparse or compressed method at ≤ 1/3 of FedAvg's uplink in this record (strongest reference: "
                f"{ref.name})")
    word = "**wins**" if v["wins"] else "does not win"
    if not v["decided"]:
        word = f"not decided before {MIN_SEEDS} seeds ({v['seeds']} so far)"
    return (f"closest: **{c.name}** ({c.best[2]}) {_pm(c.best[:2])} % at {c.ratio:.3f}x the uplink, against "
            f"{ref.name} ({ref.best[2]}) {_pm(ref.best[:2])} %: margin {v['margin']:+.2f} points between the "
            f"error bars: {word}" + (f"; references not recorded here: {', '.join(v['missing'])}" if v["missing"] else ""))


def slug(title: str) -> str:
    """A file name for a setting's figure."""
    return re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_")


def anchor(title: str) -> str:
    """The id the docs' Markdown gives a heading (Python-Markdown's toc slug), for links within the page."""
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", title).strip().lower())


def build(spec_path: Path, page: Path | None = None, figures: Path | None = None) -> Path:
    """Write the page (and one frontier PNG per setting) that `spec_path` describes; `page` and `figures`
    override where (tests regenerate into a temporary directory; the page's text does not change). Returns the
    page's path."""
    spec_path = Path(spec_path)
    spec = yaml.safe_load(spec_path.read_text())
    base = spec_path.parent
    link = Path(os.path.relpath(base / spec["figures"], (base / spec["page"]).parent)).as_posix()
    page = Path(page) if page is not None else base / spec["page"]
    figures = Path(figures) if figures is not None else base / spec["figures"]
    figures.mkdir(parents=True, exist_ok=True)
    parts, summary, records = [], [], {}
    for entry in spec["settings"]:
        record = base / entry["record"]
        runs = records[entry["title"]] = summaries(record)  # read once: table, frontier and claims
        table = rows(record, runs)
        v = verdict(table, list(spec["references"]))
        config = next(iter(runs.values()))["config"]
        png = f"{slug(entry['title'])}.png"
        names = [r.name for r in table]
        plot_frontier(runs, names, palette(names, config), f"{entry['title']}\n{setting(config)}", figures / png)
        summary.append(f"| [{entry['title']}](#{anchor(entry['title'])}) | {verdict_line(v)} |")
        parts.append(_section(entry, table, v, config, f"{link}/{png}", schedule_note(record)))
    claims = ["## What survives: the papers' claims on the same metric", spec["claims_intro"].strip(),
              claims_markdown(spec["claims"], records)] if spec.get("claims") else []
    budget = ["## Recording budget", spec["budget"].strip()] if spec.get("budget") else []
    text = "\n\n".join([GENERATED.format(command=spec["command"]), f"# {spec['heading']}", spec["intro"].strip(),
                         "| setting | a ticket that wins? |\n|---|---|\n" + "\n".join(summary), *claims,
                         *parts, *budget]) + "\n"
    page.write_text(text)
    return page


def _section(entry: dict, table: list[Row], v: dict, config: dict, image: str, note: str = "") -> str:
    lines = [f"## {entry['title']}", f"**Setting.** {setting(config)}. **Record** `{entry['record'].removeprefix('../')}`, made by "
             f"`{entry['made_by'].strip()}`."]
    if entry.get("notes"):
        lines.append(entry["notes"].strip())
    lines += [table_markdown(table), *([note] if note else []), f"**A ticket that wins?** {verdict_line(v)}.",
              f"![{entry['title']}: accuracy against uplink]({image})"]
    return "\n\n".join(lines)
