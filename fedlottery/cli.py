"""Command line: `fedlottery run | compare | imp | report | strategies`.

Bad input fails before anything starts (before Ray, before an earlier run's results are touched) with one line on
stderr and exit code 2: every error the user can fix is a `fedlottery.errors.UserError`. Ctrl-C stops a run
within seconds with exit code 130, keeping the rows already written and shutting Ray down.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

from fedlottery.errors import ConfigError, UserError
from fedlottery.runs.lock import check_unlocked, take_lock

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 1  # what Python itself returns when stdout's reader has gone


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes comma-separated integers, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


# ---- the output directory: checked early, emptied late -------------------------------------------------------
def _check_out(out: Path, overwrite: bool, products: tuple[str, ...]) -> list[str]:
    """Refuse an --out that cannot be a results directory, or that holds results without --overwrite. Touches
    nothing; returns the earlier results that `_clear_out` will remove once the run is known to start."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file, not a directory; give a directory path")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"--out {out}: {parent} is a file, not a directory; give a directory path")
            break
    check_unlocked(out)  # a live run there: refused naming it, before its results are even looked at
    existing = [p for p in products if (out / p).exists()] if out.is_dir() else []
    if existing and not overwrite:
        raise ConfigError(f"--out {out}: already holds results ({', '.join(existing)}); pass --overwrite to "
                          "replace them, or give another --out")
    return existing


_HELD_LOCKS: list = []  # this process's output-directory locks (fedlottery.runs.lock), released by main()


def _ensure_writable(out: Path, run_dirs: list[Path]) -> None:
    """Create --out and take the lock of every run directory this command writes (DIR/.lock, one run per
    directory: --out itself, or with --seeds each DIR/seed<S>, so seeds run by separate processes into one --out
    do not block each other), then write a probe file in --out: a directory we cannot write to fails here, not
    mid-run. The locks come before anything else is written."""
    try:
        for run_dir in run_dirs:
            _HELD_LOCKS.append(take_lock(run_dir, _COMMAND[0]))
        with tempfile.TemporaryFile(dir=out, prefix=".fedlottery-probe-") as probe:
            probe.write(b"ok")
    except OSError as err:
        raise ConfigError(f"--out {out}: not writable ({err.strerror or err}); give a directory you can "
                          "write to") from None


def _release_locks() -> None:
    while _HELD_LOCKS:
        _HELD_LOCKS.pop().release()


_COMMAND = [""]  # the command line, recorded in the lock so a refused second run can name the first


def _clear_out(out: Path, existing: list[str]) -> None:
    """Remove an earlier run's results (--overwrite): called only once everything else has been checked."""
    for name in existing:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def cmd_imp(args: argparse.Namespace) -> int:
    from fedlottery.runtime.experiment import load_imp_experiment
    from fedlottery.imp import ImpRunner
    from fedlottery.runtime.ray_runtime import check_imp_resources
    from fedlottery.runs.results import stderr_log

    cfg = load_imp_experiment(args.config, seeds=args.seeds, settings=args.set)
    check_imp_resources(cfg)
    out = Path(args.out or Path("runs") / "imp" / Path(args.config).stem)
    existing = _check_out(out, args.overwrite, ("levels.csv", "summary.json", "accuracy_vs_remaining.png"))
    runner = ImpRunner(cfg, out, log=stderr_log)  # loads the data set: a bad data root fails here
    n_train = len(runner.dataset.y_train)
    if cfg.data.val_size >= n_train:
        raise ConfigError(f"data.val_size: {cfg.data.val_size} would leave no training data ({cfg.data.dataset} "
                          f"has {n_train} training images); set data.val_size below {n_train}")
    _ensure_writable(out, [out])
    _clear_out(out, existing)
    stderr_log(f"IMP: {cfg.model.name} on {cfg.data.dataset}, {runner.planned_runs()} training runs -> {out}")
    runner.run()
    _print_levels_table(out / "summary.json")
    return 0


def _print_levels_table(summary_path: Path) -> None:
    import json

    summary = json.loads(summary_path.read_text())["levels"]
    print("| variant | level | % remaining | test acc @ early stop | early-stop iter | final test acc | seeds |")
    print("|---|---|---|---|---|---|---|")
    for e in summary:
        print(
            f"| {e['variant']} | {e['level']} | {e['percent_remaining_mean']:.1f} | "
            f"{100 * e['test_acc_early_stop_mean']:.2f} ± {100 * e['test_acc_early_stop_std']:.2f} | "
            f"{e['early_stop_iteration_mean']:.0f} | {100 * e['test_acc_final_mean']:.2f} | {e['seeds']} |"
        )
    print(f"\nwritten: {summary_path.parent}/levels.csv, summary.json, accuracy_vs_remaining.png, masks/")


def _federated_job(args: argparse.Namespace, out_prefix: str = "", strategies: list[str] | None = None,
                   extra_products: tuple[str, ...] = ()):
    """Everything a federated run needs checked before it starts, in order: the config (with the command line's
    overrides), this machine's resources, --out, then the data set and its partitions while Ray (a private local
    instance or the configured cluster; under --entry flwr Flower starts it) comes up on a thread of its own.
    Only then are an earlier run's results removed (--overwrite)."""
    from fedlottery.runtime.experiment import load_experiment
    from fedlottery.runtime.ray_runtime import BackgroundStart, check_resources, stop_ray
    from fedlottery.runtime.server_app import RESULT_FILES

    cfg = load_experiment(args.config, rounds=args.rounds, strategies=strategies, settings=args.set)
    check_resources(cfg)
    out = Path(args.out or Path("runs") / f"{out_prefix}{Path(args.config).stem}")
    if args.seeds:  # one run directory per seed, and the table over them
        extra_products = tuple(f"seed{s}" for s in args.seeds) + ("table.md",) + SEED_PLOTS
    run_dirs = [out / f"seed{s}" for s in args.seeds] if args.seeds else [out]
    for run_dir in run_dirs:
        check_unlocked(run_dir)  # a live run there is named before anything about its results is said
    if args.resume:
        for where, seed in ([(out / f"seed{s}", s) for s in args.seeds] if args.seeds else [(out, cfg.seed)]):
            if args.seeds and not where.exists():
                continue  # a seed not started yet starts afresh
            _check_resumable(where, args.overwrite, _with_seed(cfg, seed))
        existing = []  # a resumed run keeps its results and goes on from its checkpoint
    else:
        existing = _check_out(out, args.overwrite, (() if args.seeds else RESULT_FILES) + extra_products)
    _ensure_writable(out, run_dirs)
    if args.entry == "flwr":
        from fedlottery.runtime.flwr_entry import check_flwr_entry

        check_flwr_entry()
        _load_data(cfg)
    else:
        from fedlottery.runtime.simulation import client_state_dir

        ray_start = BackgroundStart(cfg, client_state_dir(out / f"seed{args.seeds[0]}" if args.seeds else out))
        try:
            _load_data(cfg)
            import flwr.simulation  # noqa: F401 - the in-process entry's import, also while Ray comes up
        except BaseException:
            with contextlib.suppress(Exception):
                ray_start.wait()
            stop_ray()
            raise
        ray_start.wait()
    _clear_out(out, existing)
    return cfg, out


def _load_data(cfg) -> None:
    """The data set and its partitions, loaded (and checked) before anything is deleted; cached in-process, so
    the server reuses them."""
    from fedlottery.data import load_dataset, make_partitions

    make_partitions(load_dataset(cfg.data), cfg.partition, cfg.seed)


SEED_PLOTS = ("accuracy_vs_round_seeds.png", "frontier_seeds.png", "client_accuracy_seeds.png")


def _with_seed(cfg, seed: int):
    import copy

    one = copy.deepcopy(cfg)
    one.seed = seed
    return one


def _verbosity(args: argparse.Namespace) -> str:
    """--quiet / --verbose as fedlottery.runtime.simulation's QUIET / NORMAL / VERBOSE; set up before Ray starts."""
    from fedlottery.runtime.simulation import NORMAL, QUIET, VERBOSE, configure_output

    verbosity = QUIET if args.quiet else VERBOSE if args.verbose else NORMAL
    configure_output(verbosity)
    return verbosity


def _choose_entry(args: argparse.Namespace) -> None:
    """--entry: `simulation` (in-process, Flower's deprecated run_simulation; the default while this Flower has
    it) or `flwr` (`flwr run .`, fedlottery.runtime.flwr_entry). Sets args.entry; called before anything starts."""
    from fedlottery.runtime.flwr_entry import in_process_entry_likely

    if args.entry is None:
        args.entry = "simulation" if in_process_entry_likely() else "flwr"
        if args.entry == "flwr":
            print("fedlottery: this Flower has no in-process entry (flwr.simulation.run_simulation); running "
                  "through `flwr run .` (--entry flwr)", file=sys.stderr)


def _runner(args: argparse.Namespace, verbosity: str):
    """run(cfg, out_dir, resume=...) -> summary, through the chosen entry."""
    import functools

    if args.entry == "flwr":
        from fedlottery.runtime.flwr_entry import run_with_flwr

        return functools.partial(run_with_flwr, quiet=args.quiet)
    from fedlottery.runtime.simulation import run_federated

    return functools.partial(run_federated, verbosity=verbosity)


def _run_all(cfg, out: Path, args: argparse.Namespace, verbosity: str) -> None:
    """One run, or (--seeds) one per seed into out/seed<S> followed by the table over seeds."""
    run = _runner(args, verbosity)
    if not args.seeds:
        run(cfg, out, resume=args.resume)
        return
    from fedlottery.runs.seeds import run_seeds, write_seed_record

    run_seeds(cfg, out, args.seeds, run, resume=args.resume)
    table, plots = write_seed_record(out, args.baseline)
    print(table)
    print(f"\nwritten: {out}/table.md, seed<S>/ (one run each); plots: {', '.join(p.name for p in plots)}")


def _check_resumable(out: Path, overwrite: bool, cfg) -> None:
    from fedlottery.runs.checkpoint import CHECKPOINT_FILE
    from fedlottery.runtime.server_app import resumable_checkpoint

    if overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: --resume goes on with the results in "
                          "--out, --overwrite replaces them; pass one")
    if not (out / CHECKPOINT_FILE).is_file():
        raise ConfigError(f"--resume: {out / CHECKPOINT_FILE} not found, so there is nothing to resume; run "
                          "without --resume to start afresh")
    resumable_checkpoint(out, cfg)  # the same config, or a ConfigError naming what differs


def cmd_run(args: argparse.Namespace) -> int:
    from fedlottery.runs.report import comparison_table, run_hurt

    verbosity = _verbosity(args)  # before anything imports Ray or Flower
    _choose_entry(args)
    cfg, out = _federated_job(args)
    if args.seeds:
        _run_all(cfg, out, args, verbosity)
        return 0
    summary = _runner(args, verbosity)(cfg, out, resume=args.resume)
    print(comparison_table([(out.name, summary)], [run_hurt(out)]))
    print(f"\nwritten: {out}/rounds.csv, clients.csv, summary.json  "
          f"(plots: fedlottery report {out} --plots {out}/plots)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from fedlottery.runs.report import report
    from strategies import available

    verbosity = _verbosity(args)  # before anything imports Ray or Flower
    _choose_entry(args)
    cfg, out = _federated_job(args, "compare_", args.strategies or list(available()), ("table.md",))
    if args.seeds:
        _run_all(cfg, out, args, verbosity)
        return 0
    _runner(args, verbosity)(cfg, out, resume=args.resume)
    table = report([out], out)  # compare writes this run: its plots go beside its results
    (out / "table.md").write_text(table + "\n")
    print(table)
    print(f"\nwritten: {out}/table.md, rounds.csv, clients.csv, summary.json")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from fedlottery.runs.report import plots_line, report
    from fedlottery.runs.seeds import is_seeds_dir, schedule_note, seed_plots, seed_table

    if args.leaderboard:
        from fedlottery.runs.leaderboard import build

        print(f"written: {build(Path(args.leaderboard))}")
        return 0
    if not args.dirs:
        raise SystemExit("fedlottery report: give run directories, a --seeds directory, or --leaderboard SPEC")
    dirs = [Path(d) for d in args.dirs]
    plots = Path(args.plots) if args.plots else None
    if len(dirs) == 1 and is_seeds_dir(dirs[0]):  # `--seeds` output, e.g. seeds run by separate processes
        note = schedule_note(dirs[0])
        print(seed_table(dirs[0], args.baseline) + (f"\n\n{note}" if note else ""))
        print("\n" + plots_line(seed_plots(dirs[0], plots) if plots else None))
        return 0
    print(report(dirs, plots))
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from fedlottery.runs.merge import merge

    from fedlottery.runs.seeds import is_seeds_dir, write_seed_record

    into = Path(args.into)
    for line in merge(Path(args.source), into, args.replace, args.strategies):
        print(line)
    if is_seeds_dir(into):  # the record's own table over seeds and its plots, as `--seeds` wrote them
        _, plots = write_seed_record(into)
        print(f"\nwritten: {into}/table.md; plots: {', '.join(p.name for p in plots)}")
    else:
        print(f"\ntables and plots: fedlottery report {args.into} --plots DIR")
    return 0


def cmd_strategies(args: argparse.Namespace) -> int:
    from strategies import available

    for name, cls in available().items():
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        print(f"{name:<14} {cls.__module__}.{cls.__qualname__}  {doc}")
    return 0


def _federated_arguments(parser: argparse.ArgumentParser, config_help: str, default_out: str) -> None:
    parser.add_argument("config", help=config_help)
    parser.add_argument("--out", help=f"output directory (default {default_out})")
    parser.add_argument("--rounds", type=int, help="override the config's number of rounds")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config setting, value as YAML (repeatable), e.g. "
                             "--set strategy_options.flash-jmwst.personal_bn=true --set local.lr=0.05")
    parser.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    parser.add_argument("--resume", action="store_true",
                        help="go on from the checkpoint in --out (same config) after a kill or crash")
    parser.add_argument("--seeds", type=_seeds,
                        help="run once per seed (e.g. 0,1,2) into --out/seed<S>; the table gives mean ± std")
    said = parser.add_mutually_exclusive_group()
    said.add_argument("-q", "--quiet", action="store_true", help="print only errors and the final table")
    said.add_argument("-v", "--verbose", action="store_true",
                      help="also Flower's log at DEBUG and Ray's at INFO (every client actor's lines included)")
    parser.add_argument("--baseline", help="with --seeds: the strategy paired differences are taken against "
                                           "(default fedavg when it runs)")
    parser.add_argument("--entry", choices=("simulation", "flwr"),
                        help="Flower entry: `simulation` (in-process run_simulation; the default while Flower has "
                             "it) or `flwr` (`flwr run .` on a local SuperLink: Flower's supported way, ~17 s more "
                             "start-up; needs the source tree)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedlottery", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("imp", help="find lottery tickets centrally with iterative magnitude pruning")
    imp.add_argument("config", help="YAML experiment config, e.g. configs/imp_digits.yaml")
    imp.add_argument("--out", help="output directory (default runs/imp/<config name>)")
    imp.add_argument("--seeds", type=_seeds, help="override the config's seeds, e.g. 0,1,2")
    imp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override one config setting, value as YAML (repeatable), e.g. --set supermask.enabled=true")
    imp.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    imp.set_defaults(func=cmd_imp)

    run = sub.add_parser("run", help="run a federated experiment (Flower simulation on Ray)")
    _federated_arguments(run, "YAML experiment config, e.g. configs/default.yaml", "runs/<config name>")
    run.set_defaults(func=cmd_run)

    rep = sub.add_parser("report", help="markdown table and PNG plots across federated run directories")
    rep.add_argument("dirs", nargs="*", help="run directories holding rounds.csv and summary.json, or one "
                                             "--seeds directory (its table over seeds and seed plots)")
    rep.add_argument("--plots", help="a directory to write the PNGs into (default: none written; a report never "
                                     "writes into the run directories it reads)")
    rep.add_argument("--baseline", help="for a --seeds directory (seed<S>/ inside): the strategy paired "
                                        "differences are taken against (default fedavg)")
    rep.add_argument("--leaderboard", metavar="SPEC", help="write the leaderboard page a spec describes (e.g. "
                                                           "docs/leaderboard.yaml) from the records it lists")
    rep.set_defaults(func=cmd_report)

    cmp = sub.add_parser("compare", help="run every strategy on one partition, model and seed; one table + plots")
    _federated_arguments(cmp, "YAML experiment config (its `strategies` list is replaced)",
                         "runs/compare_<config name>")
    cmp.add_argument("--strategies", type=_names, help="comma-separated names, or labels of the config's variants "
                     "(default: every installed strategy)")
    cmp.set_defaults(func=cmd_compare)

    mrg = sub.add_parser("merge", help="add a run's strategies to a recorded run of the same config")
    mrg.add_argument("source", help="a finished run directory (or a --seeds directory: merged seed by seed)")
    mrg.add_argument("into", help="the recorded run directory (or --seeds directory) that takes them in")
    mrg.add_argument("--replace", action="store_true", help="take the source's rows for a strategy both hold")
    mrg.add_argument("--strategies", type=_names, help="comma-separated subset of the source's finished "
                     "strategies (default: all), e.g. a record's baselines into a variant's run")
    mrg.set_defaults(func=cmd_merge)

    strat = sub.add_parser("strategies", help="list the installed federated strategies")
    strat.set_defaults(func=cmd_strategies)
    return parser


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _stop_ray() -> None:
    from fedlottery.runtime.ray_runtime import stop_ray

    stop_ray()


def _interrupted() -> int:
    """Ctrl-C: shut Ray down (its processes with it), say what is kept, and leave. Flower runs the ServerApp in a
    non-daemon thread that may wait for replies until the round's timeout, so when such a thread is still alive
    the process ends here (os._exit) instead of waiting for it; rows are appended and closed one at a time, so
    everything written before the signal stays on disk."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
    except ValueError:  # not the main thread
        pass
    print("fedlottery: interrupted; rows already written are kept", file=sys.stderr)
    try:
        _stop_ray()
    except Exception as err:  # noqa: BLE001 - leaving is what matters now
        print(f"fedlottery: while stopping Ray: {_one_line(err)}", file=sys.stderr)
    stuck = [t for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive() and not t.daemon]
    if stuck:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)
    return EXIT_INTERRUPTED


@contextlib.contextmanager
def _flower_quiet_after_ctrl_c():
    """While a run is under way, Ctrl-C first mutes Flower's logger, then interrupts as usual. Flower's clean-up
    ends its client actors with tasks in flight, and each of its worker threads then logs the actor's death
    with a traceback: expected on an interrupt, noise that would bury the one line saying what is kept. A
    Ctrl-C that was ignored when we started (a background job) stays ignored."""
    def mute_then_interrupt(signum, frame):
        logging.getLogger("flwr").disabled = True
        raise KeyboardInterrupt

    installed = False
    if threading.current_thread() is threading.main_thread():  # signals are the main thread's to handle
        installed = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if installed:
        signal.signal(signal.SIGINT, mute_then_interrupt)
    try:
        yield
    finally:
        if installed:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush does not fail on the closed pipe again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _COMMAND[0] = " ".join(["fedlottery", *(sys.argv[1:] if argv is None else argv)])[:300]
    try:
        with _flower_quiet_after_ctrl_c():
            code = args.func(args)
        sys.stdout.flush()  # a block-buffered pipe (no PYTHONUNBUFFERED) meets a closed reader here, not at exit
        return code
    except UserError as err:
        print(f"fedlottery: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except (FileNotFoundError, RuntimeError) as err:  # e.g. report on a missing directory, a run that failed
        print(f"fedlottery: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return _interrupted()
    except BrokenPipeError:  # stdout piped into e.g. `head`, which has stopped reading: nothing is wrong here
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    finally:
        if args.command in ("run", "compare"):
            _stop_ray()  # Flower shuts Ray down after a run; this covers a failure before or around it
        _release_locks()


if __name__ == "__main__":
    sys.exit(main())
