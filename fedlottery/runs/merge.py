"""Adding one run's strategies to a recorded run of the same experiment (`fedlottery merge SOURCE INTO`).

A record grows strategy by strategy: a method added later (or one run again) is run alone with `fedlottery
compare CONFIG --strategies NAME --seeds S`, then merged into the record, so the record's table compares it
on the same partitions, θ0 and sampling. Merging is safe only between runs of one experiment, so the two
configs must match in everything but the strategy list. Only strategies the source *finished* (those in
its summary.json) are taken; rows a killed run left behind for an unfinished strategy, in either directory,
are dropped, so the merged CSVs hold exactly the strategies of the merged summary. Files are replaced
atomically, one at a time, summary last. Two `--seeds` directories merge seed by seed. `only` takes a subset,
e.g. a record's baselines into a variant's run, so its table has their paired differences. A seed the record
lacks (run by a separate process with `--seeds S --out OTHER`) is added whole (`add_seed`).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from fedlottery.config import FederatedConfig, from_dict, to_dict
from fedlottery.errors import ConfigError
from fedlottery.runs.results import LATER_ROUND_COLUMNS, read_json, write_json
from fedlottery.runs.seeds import SEED_DIR

ROW_FILES = ("rounds.csv", "clients.csv")


def merge(source: Path, into: Path, replace: bool = False, only: list[str] | None = None) -> list[str]:
    """Merge `source` into `into` (two run directories, or two `--seeds` directories seed by seed), all of its
    finished strategies or the `only` ones; returns one line per run directory merged."""
    source, into = Path(source), Path(into)
    if (source / "summary.json").is_file():
        return [merge_run(source, into, replace, only)]
    seeds = sorted(d.name for d in source.iterdir() if SEED_DIR.match(d.name) and (d / "summary.json").is_file()) \
        if source.is_dir() else []
    if not seeds:
        raise ConfigError(f"{source}: no summary.json and no finished seed<S>/ directory inside: nothing to merge")
    return [merge_run(source / name, into / name, replace, only) if (into / name / "summary.json").is_file()
            else add_seed(source / name, into, only) for name in seeds]


SEED_FILES = ("rounds.csv", "clients.csv", "failures.log", "summary.json")  # summary last: it marks "finished"


def add_seed(source: Path, into: Path, only: list[str] | None = None) -> str:
    """A seed the `--seeds` record `into` lacks (run by another process): its result files are copied in as
    into/seed<S>, after checking it is the record's experiment (its config equal to a recorded seed's but for
    the seed) and holds every strategy the record's seeds hold. The first seed of a new (absent or empty)
    `into` starts the record. Client state and checkpoints stay behind."""
    recorded = sorted(d for d in into.iterdir() if SEED_DIR.match(d.name) and (d / "summary.json").is_file()) \
        if into.is_dir() else []
    if not recorded:
        if into.is_dir() and any(into.iterdir()):
            raise ConfigError(f"{into}: not empty, and no finished seed<S>/ directory in it: give a --seeds record "
                              "or a new directory")
        into.mkdir(parents=True, exist_ok=True)
        return _copy_seed(source, into, "started the record with seed")
    theirs, ours = read_json(source / "summary.json"), read_json(recorded[0] / "summary.json")
    _check_same_experiment({**theirs["config"], "seed": 0}, {**ours["config"], "seed": 0}, source, recorded[0])
    wanted = list(ours["strategies"]) if only is None else list(only)
    missing = [s for s in wanted if s not in theirs["strategies"]]
    if missing:
        raise ConfigError(f"{source} lacks {', '.join(missing)}, which {recorded[0]} holds: a seed joins a record "
                          "with the same strategies (run them for this seed first)")
    return _copy_seed(source, into, "added seed")


def _copy_seed(source: Path, into: Path, what: str) -> str:
    target = into / source.name
    target.mkdir()
    for name in SEED_FILES:
        if (source / name).is_file():
            tmp = target / (name + ".tmp")
            tmp.write_bytes((source / name).read_bytes())
            tmp.replace(target / name)
    return f"{target}: {what} {source.name.removeprefix('seed')} from {source}"


def merge_run(source: Path, into: Path, replace: bool = False, only: list[str] | None = None) -> str:
    """Merge the finished strategies of run directory `source` (or the `only` ones) into run directory `into`."""
    for where in (source, into):
        if not (where / "summary.json").is_file():
            raise ConfigError(f"{where}: no summary.json (not a finished run directory)")
    theirs, ours = read_json(source / "summary.json"), read_json(into / "summary.json")
    _check_same_experiment(theirs["config"], ours["config"], source, into)
    added = list(theirs["strategies"]) if only is None else list(only)
    missing = [s for s in added if s not in theirs["strategies"]]
    if missing:
        raise ConfigError(f"{source} holds no finished {', '.join(missing)} (it has "
                          f"{', '.join(theirs['strategies']) or 'none'})")
    clash = [s for s in added if s in ours["strategies"]]
    if clash and not replace:
        raise ConfigError(f"{into} already holds {', '.join(clash)}; pass --replace to take {source}'s instead")
    kept = [s for s in ours["strategies"] if s not in added]
    for name in ROW_FILES:
        _merge_rows(source / name, into / name, kept, added)
    ours["strategies"] = {**{s: ours["strategies"][s] for s in kept}, **{s: theirs["strategies"][s] for s in added}}
    mine, yours = _entries(ours["config"]), _entries(theirs["config"])  # a variant keeps its settings
    ours["config"]["strategies"] = [(yours if label in added else mine).get(label, label)
                                    for label in ours["strategies"]]
    ours["config"]["strategy_options"] = {**ours["config"].get("strategy_options", {}),
                                          **{k: v for k, v in theirs["config"].get("strategy_options", {}).items()
                                             if k in added}}
    write_json(into / "summary.json", ours)
    return f"{into}: added {', '.join(added)} from {source}" + (f" (replaced {', '.join(clash)})" if clash else "")


def _entries(config: dict) -> dict:
    """A config's `strategies` entries by label (a variant is a mapping with its label, a plain name itself)."""
    return {e if isinstance(e, str) else (e.get("label") or e["name"]): e for e in config.get("strategies", [])}


def _check_same_experiment(theirs: dict, ours: dict, source: Path, into: Path) -> None:
    """Equal but for the strategy list and options (each strategy's rows come from the run that ran it), both
    read by this version (so a setting one of them predates counts at its default)."""
    theirs, ours = _as_read_now(theirs), _as_read_now(ours)
    ignored = ("strategies", "strategy_options")
    differing = sorted(k for k in set(theirs) | set(ours) if k not in ignored and theirs.get(k) != ours.get(k))
    if differing:
        raise ConfigError(f"{source} and {into} are different experiments (config differs in "
                          f"{', '.join(differing)}); only runs of one config merge")


def _as_read_now(config: dict) -> dict:
    """The config as this version reads it, less what does not change a final figure: evaluation.finetune_rounds
    only leaves out the fine-tuned column before the last round (tests/test_evaluation_modes.py), and
    simulation.round_timeout is a hang guard (a resume takes the new value too); a run it cut short says so in
    its table (‡) and failures.log."""
    config = to_dict(from_dict(FederatedConfig, config, "config"))
    config["evaluation"].pop("finetune_rounds", None)
    config["simulation"].pop("round_timeout", None)
    return config


def _merge_rows(source: Path, into: Path, kept: list[str], added: list[str]) -> None:
    """`into`'s rows of the kept strategies, then `source`'s rows of the added ones; headers must match."""
    our_header, ours = _read(into)
    their_header, theirs = _read(source)
    header = _joint_header(our_header, their_header, source, into)
    ours, theirs = _widen(our_header, ours, header), _widen(their_header, theirs, header)
    column = header.index("strategy")
    rows = [r for r in ours if r[column] in kept] + [r for r in theirs if r[column] in added]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    tmp = into.with_suffix(into.suffix + ".tmp")
    with tmp.open("w", newline="") as f:  # the csv module's own line ends, as CsvLog writes them
        f.write(buffer.getvalue())
    tmp.replace(into)


def _joint_header(ours: list[str], theirs: list[str], source: Path, into: Path) -> list[str]:
    """The header both files' rows fit under: equal headers, or one lacking only columns added since it was
    written (LATER_ROUND_COLUMNS: an older record joined by a newer run), when the fuller one is taken."""
    if ours == theirs:
        return ours
    wider, narrower = (ours, theirs) if len(ours) > len(theirs) else (theirs, ours)
    added = [c for c in wider if c not in narrower]
    if added and set(added) <= set(LATER_ROUND_COLUMNS) and [c for c in wider if c in narrower] == narrower:
        return wider
    raise ConfigError(f"{source.name}: {source} and {into} have different columns (made by different "
                      "fedlottery versions?); re-run one of them")


def _widen(header: list[str], rows: list[list[str]], to: list[str]) -> list[list[str]]:
    """Rows under `to`, a header holding all of `header`'s columns: a column the rows lack is left empty."""
    if header == to:
        return rows
    where = {name: i for i, name in enumerate(header)}
    return [[row[where[name]] if name in where else "" for name in to] for row in rows]


def _read(path: Path) -> tuple[list[str], list[list[str]]]:
    if not path.is_file():
        raise ConfigError(f"{path}: not found (a finished run directory holds {' and '.join(ROW_FILES)})")
    with path.open(newline="") as f:
        lines = list(csv.reader(f))
    if not lines or "strategy" not in lines[0]:
        raise ConfigError(f"{path}: no header with a strategy column")
    return lines[0], lines[1:]
