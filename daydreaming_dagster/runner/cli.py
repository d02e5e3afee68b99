"""The `daydream` command line: run the experiment, list valid pairs, re-check judge answers."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
from pathlib import Path

from dotenv import load_dotenv

from ..instance.opening import BrokenInstanceError, open_instance
from ..llm.requests import MISSING_KEY_MESSAGE
from ..settings import PACKAGE_DIR
from ..store.roots import StorageRefused, data_path

DEFAULT_DAGSTER_HOME = "dagster_home"
# The project's instance configuration, given to a DAGSTER_HOME that has none (e.g. the offline one).
INSTANCE_TEMPLATE = PACKAGE_DIR.parent / "dagster_home" / "dagster.yaml"


def _configure(args: argparse.Namespace) -> None:
    """Export the settings that definitions.py and every worker process read, before Dagster loads."""
    load_dotenv(Path.cwd() / ".env", override=False)
    if args.data_root:
        # A URL (s3://, file://) is kept as given; a path is made absolute for the worker processes.
        root = data_path(args.data_root)
        os.environ["DAYDREAM_DATA_ROOT"] = str(root.resolve()) if "://" not in args.data_root else args.data_root
    if getattr(args, "offline", False):
        os.environ["DAYDREAM_BACKEND"] = "offline"
    home = Path(os.environ.get("DAGSTER_HOME") or DEFAULT_DAGSTER_HOME).resolve()
    if os.environ.get("DAYDREAM_BACKEND") == "offline":
        # Offline runs keep their own instance: their materializations must never make a real
        # partition look finished. It gets the same kind of storage as the user's instance.
        from ..instance.offline_home import OfflineInstanceError, prepare_offline_home

        user_home = home.parent if home.name == "offline" else home
        home = user_home / "offline"
        try:
            if (user_home / "dagster.yaml").is_file():
                prepare_offline_home(home, user_home / "dagster.yaml")
        except OfflineInstanceError as exc:
            print(str(exc), file=sys.stderr)
            raise SystemExit(2) from None
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").is_file() and INSTANCE_TEMPLATE.is_file():
        shutil.copy(INSTANCE_TEMPLATE, home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home)


def cmd_run(args: argparse.Namespace) -> int:
    _configure(args)
    # The workers' calls also take machine-wide call slots, as many as --concurrency, so a run
    # started from the UI at the same time shares them (see llm/slots.py).
    os.environ["DAYDREAM_MAX_CALLS_IN_FLIGHT"] = str(max(1, args.concurrency))
    from ..settings import Settings

    settings = Settings.from_env()
    if not settings.offline and not os.environ.get("OPENROUTER_API_KEY"):
        print(MISSING_KEY_MESSAGE, file=sys.stderr)
        return 2
    from .live_run import run_command

    return run_command(args, settings)


def cmd_batches(args: argparse.Namespace) -> int:
    _configure(args)
    from ..settings import Settings
    from .batch_mode import list_batches

    return list_batches(Settings.from_env(), args.cancel, args.all)


def cmd_plan(args: argparse.Namespace) -> int:
    _configure(args)
    from ..experiment.errors import ExperimentError
    from ..settings import Settings
    from .plan import run_plan

    try:
        print(run_plan(Settings.from_env(), args.all, args.batch))
    except ExperimentError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    return 0


def _usd(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not an amount of US dollars above 0")
    return value


def _pair_selection(args: argparse.Namespace) -> tuple[list[str], set[str]] | int:
    """The valid pairs selected by the filters (and --missing), and every valid pair; or an exit code."""
    from ..experiment.stages import EVALUATION
    from ..settings import Settings
    from ..store.csv_tables import read_table
    from ..store.layout import table_path

    settings = Settings.from_env()
    path = table_path(settings.output_root, "evaluation_tasks")
    if not path.is_file():
        print(f"{path} does not exist yet; run `daydream run` or materialize evaluation_tasks first.", file=sys.stderr)
        return 2
    table = read_table(path)
    exclude: set[str] = set()
    if getattr(args, "missing", False):
        import dagster as dg

        exclude = open_instance().get_materialized_partitions(dg.AssetKey("evaluation_response"))
    selected = EVALUATION.select(
        table, parents=args.generation_task, only={"evaluation_task_id": args.evaluation_task}, exclude=exclude
    )
    return selected, set(EVALUATION.select(table))


def cmd_keys(args: argparse.Namespace) -> int:
    _configure(args)
    selection = _pair_selection(args)
    if isinstance(selection, int):
        return selection
    for key in selection[0]:
        print(key)
    return 0


def cmd_backfill(args: argparse.Namespace) -> int:
    _configure(args)
    selection = _pair_selection(args)
    if isinstance(selection, int):
        return selection
    selected, valid = selection
    from .backfills import check_pairs, submit_pair_backfill

    try:
        if args.pair:
            from ..settings import Settings
            from ..store.layout import table_path

            check_pairs(args.pair, valid, table_path(Settings.from_env().output_root, "evaluation_tasks"))
            selected = list(dict.fromkeys(args.pair))
        if not selected:
            print("nothing to backfill: every selected valid pair is already materialized.")
            return 0

        from ..definitions import defs

        backfill_id = submit_pair_backfill(open_instance(), defs(), selected)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print(
        f"submitted backfill {backfill_id} for {len(selected)} valid pair(s) to {os.environ['DAGSTER_HOME']}; "
        "`dagster dev` (its daemon) runs it and the UI's Backfills page shows its progress."
    )
    return 0


def cmd_prune_keys(args: argparse.Namespace) -> int:
    """Report (and with --yes remove) registered partition keys that the task tables no longer list."""
    _configure(args)

    from ..settings import Settings
    from ..store.csv_tables import read_table
    from ..store.layout import table_path

    settings = Settings.from_env()
    instance = open_instance()
    columns = {"generation_tasks": "generation_task_id", "evaluation_tasks": "evaluation_task_id"}
    stale_by_name = {}
    for name, column in columns.items():
        path = table_path(settings.output_root, name)
        if not path.is_file():
            print(f"{path} does not exist yet; nothing to compare the {name} keys with.", file=sys.stderr)
            return 2
        current = set(read_table(path)[column])
        stale_by_name[name] = [k for k in instance.get_dynamic_partitions(name) if k not in current]
    for name, stale in stale_by_name.items():
        for key in stale:
            print(f"{name}\t{key}")
        if stale and args.yes:
            for key in stale:
                instance.delete_dynamic_partition(name, key)
    total = sum(map(len, stale_by_name.values()))
    verb = "removed" if args.yes else "found (re-run with --yes to remove them; files are never touched)"
    print(f"{total} stale key(s) {verb}.", file=sys.stderr)
    return 0


def cmd_repair_instance(args: argparse.Namespace) -> int:
    """Repair an instance whose databases an earlier version let two processes stamp at once."""
    _configure(args)
    from ..instance.opening import repair_version_tables

    repaired = repair_version_tables(Path(os.environ["DAGSTER_HOME"]))
    for line in repaired:
        print(line)
    print(f"{os.environ['DAGSTER_HOME']}: {'repaired' if repaired else 'nothing to repair'}.")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from ..analysis.scoring import explain_parse

    if args.min >= args.max:
        print(f"--min ({args.min:g}) must be below --max ({args.max:g}).", file=sys.stderr)
        return 2
    status = 0
    for name in args.files:
        try:
            text = Path(name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            print(f"{name}\terror: {reason}", file=sys.stderr)
            status = 1
            continue
        score, reason = explain_parse(text, (args.min, args.max))
        print(f"{name}\t{f'unparsed ({reason})' if score is None else f'{score:g}'}")
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="daydream", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-root", help="experiment folder holding 1_raw/ (default: $DAYDREAM_DATA_ROOT or data)")
        p.add_argument("--offline", action="store_true", help="use the offline backend: no key, no network, separate outputs")

    run = sub.add_parser("run", help="materialize the whole experiment (resumable)")
    common(run)
    run.add_argument("--concurrency", type=int, default=8, help="LLM calls in flight at once, at most (default 8)")
    run.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes running batches, several at once each against an API (default: one per core, "
        "at most --concurrency; 1 = in this process)",
    )
    run.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="partitions per Dagster run, at most (default 32; "
        "1 = one run per partition)",
    )
    run.add_argument(
        "--replace-changed",
        action="store_true",
        help="re-run partitions whose stored response belongs to another prompt/model/parameters "
        "(the old response moves to _superseded/, never deleted)",
    )
    run.add_argument(
        "--max-cost",
        type=_usd,
        metavar="USD",
        help="spending cap for everything paid under the output root (this and earlier runs): no call starts "
        "whose worst case would pass it (overrides max_cost_usd in 1_raw/experiment.toml; exit status 3 when "
        "it stops the run)",
    )
    run.add_argument("--batch", action="store_true", help="ask through the provider's batch API, at its batch price "
                     "(models with batch=no in llm_models.csv stay live); see README, Batch mode")
    run.add_argument("--wait", action="store_true", help="with --batch: wait for the batches, collect and build the results")
    run.add_argument("--retry-live", action="store_true", help="with --batch: ask live what a batch failed to answer")
    run.set_defaults(func=cmd_run)

    batches = sub.add_parser("batches", help="list the open provider batches (or cancel one)")
    common(batches)
    batches.add_argument("--cancel", metavar="ID", help="cancel this batch; what it answered is still collected")
    batches.add_argument("--all", action="store_true", help="also the batches already collected")
    batches.set_defaults(func=cmd_batches)

    plan = sub.add_parser("plan", help="estimate the calls, tokens and cost still to pay for (no call is made)")
    common(plan)
    plan.add_argument("--all", action="store_true", help="the whole experiment, as if nothing were done yet")
    plan.add_argument("--batch", action="store_true", help="price every model at its batch price (see `run --batch`)")
    plan.set_defaults(func=cmd_plan)

    def pair_filters(p: argparse.ArgumentParser) -> None:
        p.add_argument("--generation-task", action="append", help="only pairs of this generation task (repeatable)")
        p.add_argument("--evaluation-task", action="append", help="only pairs of this evaluation method (repeatable)")
        p.add_argument("--missing", action="store_true", help="only pairs whose evaluation_response is not materialized")

    keys = sub.add_parser("keys", help='print the valid evaluation pairs as "<eval>|<gen>" keys')
    common(keys)
    pair_filters(keys)
    keys.set_defaults(func=cmd_keys)

    backfill = sub.add_parser("backfill", help="submit one Dagster backfill of the valid evaluation pairs")
    common(backfill)
    pair_filters(backfill)
    backfill.add_argument("--pair", action="append", help='backfill exactly this "<eval>|<gen>" pair (repeatable)')
    backfill.set_defaults(func=cmd_backfill)

    prune = sub.add_parser("prune-keys", help="list registered partition keys the task tables no longer list")
    common(prune)
    prune.add_argument("--yes", action="store_true", help="remove them from the instance (files stay)")
    prune.set_defaults(func=cmd_prune_keys)

    repair = sub.add_parser("repair-instance", help="repair an instance two processes created at once (older versions)")
    common(repair)
    repair.set_defaults(func=cmd_repair_instance)

    score = sub.add_parser("score", help="print FILE<TAB>score (or unparsed) for judge answers")
    score.add_argument("files", nargs="+")
    score.add_argument("--min", type=float, default=0.0, help="lowest score on the scale (default 0)")
    score.add_argument("--max", type=float, default=10.0, help="highest score on the scale (default 10)")
    score.set_defaults(func=cmd_score)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except (BrokenInstanceError, StorageRefused) as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Reached once the command's own clean-up has run: the calls in flight were waited for
        # (unless Ctrl-C came twice) and their answers stored.
        print(f"daydream {args.command}: stopped (Ctrl-C); the answers that had arrived are stored, and "
              "running it again reuses them.", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader closed the pipe (`daydream keys | head`): not an error. Point stdout at
        # /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if argv is None and args.command == "run":
        # The command line's own `daydream run` is done: its files are written, its runs recorded
        # and its workers gone. Python's teardown of the modules it loaded (Dagster, pandas,
        # matplotlib) would still cost ~1.5 s of CPU before the prompt comes back.
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
