"""Command line: `fedlottery run | compare | imp | report | strategies`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedlottery.config import ConfigError


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes comma-separated integers, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _prepare_out(out: Path, overwrite: bool, products: tuple[str, ...]) -> None:
    """Refuse to mix a new run into an old one's results unless asked to replace them."""
    existing = [p for p in products if (out / p).exists()]
    if existing and not overwrite:
        raise ConfigError(f"{out} already holds results ({', '.join(existing)}); pass --overwrite or another --out")
    for name in existing:
        (out / name).unlink()


def cmd_imp(args: argparse.Namespace) -> int:
    from fedlottery.config import load_imp_config
    from fedlottery.imp import ImpRunner
    from fedlottery.results import stderr_log

    cfg = load_imp_config(args.config)
    if args.seeds is not None:
        cfg.seeds = args.seeds
    out = Path(args.out or Path("runs") / "imp" / Path(args.config).stem)
    _prepare_out(out, args.overwrite, ("levels.csv", "summary.json", "accuracy_vs_remaining.png"))
    runner = ImpRunner(cfg, out, log=stderr_log)
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
    """The federated config with the command line's overrides, and its prepared output directory."""
    from fedlottery.config import load_federated_config
    from fedlottery.server_app import RESULT_FILES

    cfg = load_federated_config(args.config)
    if strategies is not None:
        cfg.strategies = strategies
    if args.rounds is not None:
        cfg.rounds = args.rounds
    cfg.validate()
    out = Path(args.out or Path("runs") / f"{out_prefix}{Path(args.config).stem}")
    _prepare_out(out, args.overwrite, RESULT_FILES + extra_products)
    return cfg, out


def cmd_run(args: argparse.Namespace) -> int:
    from fedlottery.report import comparison_table
    from fedlottery.simulation import run_federated

    cfg, out = _federated_job(args)
    summary = run_federated(cfg, out)
    print(comparison_table([(out.name, summary)]))
    print(f"\nwritten: {out}/rounds.csv, clients.csv, summary.json  (plots: fedlottery report {out})")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from fedlottery.report import report
    from fedlottery.simulation import run_federated
    from strategies import available

    cfg, out = _federated_job(args, "compare_", args.strategies or list(available()), ("table.md",))
    run_federated(cfg, out)
    table = report([out])
    (out / "table.md").write_text(table + "\n")
    print(table)
    print(f"\nwritten: {out}/table.md, rounds.csv, clients.csv, summary.json")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from fedlottery.report import report

    print(report([Path(d) for d in args.dirs], Path(args.plots) if args.plots else None))
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
    parser.add_argument("--overwrite", action="store_true", help="replace results already in --out")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedlottery", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("imp", help="find lottery tickets centrally with iterative magnitude pruning")
    imp.add_argument("config", help="YAML experiment config, e.g. configs/imp_digits.yaml")
    imp.add_argument("--out", help="output directory (default runs/imp/<config name>)")
    imp.add_argument("--seeds", type=_seeds, help="override the config's seeds, e.g. 0,1,2")
    imp.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    imp.set_defaults(func=cmd_imp)

    run = sub.add_parser("run", help="run a federated experiment (Flower simulation on Ray)")
    _federated_arguments(run, "YAML experiment config, e.g. configs/default.yaml", "runs/<config name>")
    run.set_defaults(func=cmd_run)

    rep = sub.add_parser("report", help="markdown table and PNG plots across federated run directories")
    rep.add_argument("dirs", nargs="+", help="run directories holding rounds.csv and summary.json")
    rep.add_argument("--plots", help="where to write the PNGs (default: the first directory)")
    rep.set_defaults(func=cmd_report)

    cmp = sub.add_parser("compare", help="run every strategy on one partition, model and seed; one table + plots")
    _federated_arguments(cmp, "YAML experiment config (its `strategies` list is replaced)",
                         "runs/compare_<config name>")
    cmp.add_argument("--strategies", type=_names, help="comma-separated subset (default: every installed one)")
    cmp.set_defaults(func=cmd_compare)

    strat = sub.add_parser("strategies", help="list the installed federated strategies")
    strat.set_defaults(func=cmd_strategies)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, RuntimeError) as err:
        print(f"fedlottery: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedlottery: interrupted; rows already written are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
