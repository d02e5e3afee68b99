"""The `daydream` command line: run the experiment, list valid pairs, re-check judge answers."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from dotenv import load_dotenv

from .errors import missing_key_message

DEFAULT_DAGSTER_HOME = "dagster_home"


def _configure(args: argparse.Namespace) -> None:
    """Export the settings that definitions.py and every worker process read, before Dagster loads."""
    load_dotenv(Path.cwd() / ".env", override=False)
    if args.data_root:
        os.environ["DAYDREAM_DATA_ROOT"] = str(Path(args.data_root).resolve())
    if getattr(args, "offline", False):
        os.environ["DAYDREAM_BACKEND"] = "offline"
    home = Path(os.environ.get("DAGSTER_HOME") or DEFAULT_DAGSTER_HOME).resolve()
    if os.environ.get("DAYDREAM_BACKEND") == "offline":
        # Offline runs keep their own instance: their materializations must never make a real
        # partition look finished.
        offline_home = home / "offline"
        offline_home.mkdir(parents=True, exist_ok=True)
        if (home / "dagster.yaml").is_file() and not (offline_home / "dagster.yaml").is_file():
            shutil.copy(home / "dagster.yaml", offline_home / "dagster.yaml")
        home = offline_home
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)


def cmd_run(args: argparse.Namespace) -> int:
    _configure(args)
    from .settings import Settings

    settings = Settings.from_env()
    if not settings.offline and not os.environ.get("OPENROUTER_API_KEY"):
        print(missing_key_message(), file=sys.stderr)
        return 2
    from .errors import ExperimentError

    try:
        from .definitions import defs  # noqa: F401  (validates the experiment config early)
    except ExperimentError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    from .runner import Runner, print_progress

    backend = "offline backend" if settings.offline else f"{settings.base_url}"
    print_progress(
        f"experiment {settings.data_root} -> {settings.output_root} ({backend}); "
        f"Dagster instance {os.environ['DAGSTER_HOME']}"
    )
    runner = Runner(settings.output_root, args.concurrency, args.replace_changed, print_progress)
    try:
        reports = runner.run()
    finally:
        runner.close()
    failed = False
    for report in reports:
        if report.failures:
            failed = True
            for key, error in list(report.failures.items())[:20]:
                print(f"{report.name} {key}: {error}", file=sys.stderr)
    summary = ", ".join(
        f"{r.name}: {r.succeeded} ran, {r.skipped} skipped, {len(r.failures)} failed" for r in reports
    )
    print(summary)
    if not failed:
        print(f"results: {settings.output_root / '5_results'}")
    return 1 if failed else 0


def cmd_keys(args: argparse.Namespace) -> int:
    _configure(args)
    from .pairs import valid_pair_keys
    from .resources.io_managers import read_table
    from .settings import Settings
    from . import storage

    settings = Settings.from_env()
    path = storage.table_path(settings.output_root, "evaluation_tasks")
    if not path.is_file():
        print(f"{path} does not exist yet; run `daydream run` or materialize evaluation_tasks first.", file=sys.stderr)
        return 2
    for key in valid_pair_keys(read_table(path), generation_task=args.generation_task, evaluation_task=args.evaluation_task):
        print(key)
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from .scoring import parse_score

    status = 0
    for name in args.files:
        try:
            text = Path(name).read_text(encoding="utf-8")
        except OSError as exc:
            print(f"{name}\terror: {exc.strerror}", file=sys.stderr)
            status = 1
            continue
        score = parse_score(text, (args.min, args.max))
        print(f"{name}\t{'unparsed' if score is None else f'{score:g}'}")
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="daydream", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-root", help="experiment folder holding 1_raw/ (default: $DAYDREAM_DATA_ROOT or data)")
        p.add_argument("--offline", action="store_true", help="use the offline backend: no key, no network, separate outputs")

    run = sub.add_parser("run", help="materialize the whole experiment (resumable)")
    common(run)
    run.add_argument("--concurrency", type=int, default=4, help="partitions run at once (default 4)")
    run.add_argument(
        "--replace-changed",
        action="store_true",
        help="re-run partitions whose stored response belongs to another prompt/model/parameters "
        "(the old response moves to _superseded/, never deleted)",
    )
    run.set_defaults(func=cmd_run)

    keys = sub.add_parser("keys", help='print the valid evaluation pairs as "<eval>|<gen>" keys')
    common(keys)
    keys.add_argument("--generation-task", action="append", help="only pairs of this generation task (repeatable)")
    keys.add_argument("--evaluation-task", action="append", help="only pairs of this evaluation method (repeatable)")
    keys.set_defaults(func=cmd_keys)

    score = sub.add_parser("score", help="print FILE<TAB>score (or unparsed) for judge answers")
    score.add_argument("files", nargs="+")
    score.add_argument("--min", type=float, default=0.0, help="lowest score on the scale (default 0)")
    score.add_argument("--max", type=float, default=10.0, help="highest score on the scale (default 10)")
    score.set_defaults(func=cmd_score)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
