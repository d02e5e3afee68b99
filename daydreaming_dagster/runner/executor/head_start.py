"""`daydream run`'s head start: the generations are asked while the command loads Dagster.

Loading Dagster, the code location and the worker processes takes seconds of CPU before the first
Dagster run can call a model; a plain script would have been calling for most of that time. So the
command starts here, in a thread that imports no Dagster: it reads the experiment with the same
pure functions the task assets use and builds the very requests the generation_response asset
sends (experiment/settings.py). As soon as the command has opened the instance (`go`: a
misconfigured instance still fails before any call) it asks every generation in the task table's
order, within the call slots it shares with the workers' runs, each claimed first and stored
write-once with its provenance, as a step stores it. The runner's stream runs each generation once
its answer is stored here (`pending`), and the judges of the generations before it meanwhile. Every
generation is still materialized by a Dagster run, which finds its answer stored and reuses it (the
materialization's metadata says `asked_by`), so the instance records every partition, each stays
re-runnable alone, and nothing is paid twice.

Under a spending cap each call is admitted by the step's own guard (calls/guard.py: the worst
case reserved in files every process sees, settled once the answer is stored); the first refusal
stops the head start, and the runs meet the cap themselves. It stands aside (no call) whenever a
step could decide differently: offline, batch mode, `--replace-changed`, a cap with a model that
has no price (the command refuses it), an object-store output root, DAYDREAM_HEAD_START=off, or an
experiment it cannot read (the task tables then report the problem before any call). It skips
every generation with a stored answer or a live claim."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING

from ...calls.claiming import Call
from ...calls.engine import Engine, Kind, Outcome
from ...experiment.stages import GENERATION as STAGE
from ...llm.requests import LLMRequest
from ...settings import Settings
from ...store.archive import Archive
from ...store.claims import Owner
from ...store.roots import is_remote
from ...store.spend import paid_tallies

if TYPE_CHECKING:  # imported where used: the command's start imports nothing it does not need yet
    from ...experiment.settings import ExperimentSettings

ASKED_BY = "daydream run's head start (before its Dagster run, which reused the answer)"
# The run id its claims name, so a waiting run's log says who is asking.
OWNER_RUN = "daydream-run-head-start"
# What a generation's future holds once done: its answer stored; passed over (its run asks); or
# asked without a usable answer: cut off by the token limit, or the call failed after its whole retry
# budget (its run fails in a run of its own without asking again: one command asks a request once).
STORED, PASSED, ASKED = "stored", "passed", "asked without an answer"


def wanted(settings: Settings, replace_changed: bool) -> bool:
    """Whether this live `daydream run` may take a head start."""
    off = os.environ.get("DAYDREAM_HEAD_START", "on").strip().lower() in {"off", "0", "false", "no"}
    return not (off or settings.offline or replace_changed or is_remote(settings.output_root))


def prepared_requests(settings: Settings) -> list[tuple[str, LLMRequest]]:
    """Every generation task's key and request, in the table's order, as the assets build them.
    Raises what reading the experiment raises."""
    return _read_experiment(settings)[1]


def _read_experiment(settings: Settings) -> tuple[ExperimentSettings, list[tuple[str, LLMRequest]], set[str]]:
    """The experiment's settings, its generation requests (see `prepared_requests`) and its judges."""
    from ...experiment.loaders import load_concepts, load_models, load_templates
    from ...experiment.prompts import generation_prompts
    from ...experiment.settings import ExperimentSettings
    from ...experiment.tasks import build_content_combinations, build_evaluation_tasks, build_generation_tasks

    config = ExperimentSettings.for_experiment(str(settings.data_root), str(settings.output_root))
    raw = config.raw_dir
    models, templates = load_models(raw), load_templates(raw, "generation")
    combinations = build_content_combinations(load_concepts(raw), config.k, config.description_level)
    tasks = build_generation_tasks(combinations, templates, models, config.generation_replicates)
    # The evaluation side too: an experiment the task tables would refuse gets no call from here.
    pairs = build_evaluation_tasks(tasks, load_templates(raw, "evaluation"), models, config.evaluation_replicates)
    rows = {row["generation_task_id"]: row for row in tasks.to_dict("records")}
    prompts = generation_prompts(rows, combinations, templates)
    requests = [(key, config.generation_request(row, prompts[key].text)) for key, row in rows.items()]
    return config, requests, set(pairs["evaluation_model_id"])


def spending_guard(config: ExperimentSettings, run_cap: float | None, requests, judges: set[str]):
    """The guard admitting each call under the cap (`run_cap`, else the experiment's), as a step's
    guard does (calls/guard.py): None without a cap; False when a model the run calls has no
    price (the command then refuses the cap before any call)."""
    from ...calls.guard import SpendingGuard

    guard = SpendingGuard.for_run(config, run_cap)
    if guard is None:
        return None
    return False if judges - set(guard.prices) or guard.unbounded(r for _, r in requests) else guard


class HeadStart:
    """The head start of one `daydream run` against the API in `settings`, up to `concurrency`
    calls at once; `start()` reads the experiment, `go()` lets the calls start."""

    def __init__(self, settings: Settings, concurrency: int, max_cost_usd: float | None = None) -> None:
        self.settings = settings
        self.concurrency = max(1, concurrency)
        self.run_cap = max_cost_usd  # --max-cost; else the experiment's cap applies, if it sets one
        self._guard = None  # the spending guard under a cap (see `spending_guard`)
        self.before = None  # the paid answers under the output root before the first call (store/spend.py)
        self._read = threading.Event()  # the experiment is read (or found unreadable)
        self._go = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pending: dict[str, Future] = {}  # every generation to ask, done once asked or passed over
        # Requests asked without a usable answer (key -> ResponseConfig.asked_earlier's entry): their
        # runs fail them without asking again.
        self.asked_earlier: dict[str, dict] = {}
        # Set when the API refused a call for every call (a refused key, a dead API): the command
        # starts nothing more (see llm/requests.APIRefusedError).
        self.stopped: str | None = None
        self._thread = threading.Thread(target=self._main, name="head-start", daemon=True)
        self._engine: Engine | None = None
        self._backend = None

    def start(self) -> HeadStart:
        self._thread.start()
        return self

    def go(self) -> None:
        """The instance has opened: the calls may start."""
        self._go.set()

    def paid_before(self):
        """The paid answers under the output root before this head start's first call (None: it
        makes none), once it knows."""
        self._read.wait()
        return self.before

    def take_over(self, generations: list[str], progress: Callable[[str], None]) -> dict[str, Future]:
        """What the runner's stream waits for, when it has `generations` to run: the ones still to be
        answered here (see `pending`). With none left to run (a rerun), the head start stands aside."""
        if not generations:
            self.stand_aside()
            return {}
        pending = self.pending()
        if self.asked:
            answering = sum(not f.done() for f in pending.values())
            still = f" ({answering} still being answered)" if answering else ""
            progress(f"generation: {self.asked} asked while Dagster loaded{still}; their runs reuse the answers")
        return pending

    @property
    def asked(self) -> int:
        """Calls started here."""
        return self._engine.started if self._engine is not None else 0

    def pending(self) -> dict[str, Future]:
        """The generations still to be answered here, or whose answer was cut off, each with a future
        that is done (STORED, PASSED or ASKED) once its answer is stored, or it was passed over (its run
        asks), or it was asked without a usable answer (its run fails as a step would, without asking)."""
        self._read.wait()
        with self._lock:
            # An ASKED one too: its run must be told (see Schedule.add_generation's `alone`).
            return {key: future for key, future in self._pending.items() if not future.done() or future.result() == ASKED}

    def stand_aside(self) -> None:
        """Start no more calls (the runs have no generation left to ask); returns at once."""
        self._stop.set()
        self._go.set()

    def close(self) -> None:
        """Start no more calls and wait for those in flight (they are paid for: their answers are stored)."""
        self.stand_aside()
        self._thread.join()
        if self._backend is not None:
            self._backend.close()

    def _main(self) -> None:
        try:
            self._ask_all()
        except Exception:  # noqa: BLE001 - e.g. a fault reading what was paid: the runs ask, in their own words
            self._stop.set()
        finally:
            with self._lock:  # what was not asked goes to the runs
                for future in self._pending.values():
                    if not future.done():
                        future.set_result(PASSED)

    def _ask_all(self) -> None:
        try:
            config, requests, judges = _read_experiment(self.settings)
            self._guard = spending_guard(config, self.run_cap, requests, judges)
            if self._guard is False:
                requests = []  # the command refuses this cap before any call, in its own words
            # A rerun's stored answers are the runs' to reuse (or to report out of date): not waited for.
            archive = Archive.at(self.settings.output_root)
            requests = [(k, r) for k, r in requests if not archive.path(STAGE.response, k).exists()]
            self.before = paid_tallies(self.settings.output_root) if requests else None
            self._pending = {key: Future() for key, _ in requests}
        except Exception:  # noqa: BLE001 - the task tables report a broken experiment in their own words
            requests = []
        finally:
            self._read.set()
        if not requests or self._stop.is_set():
            return
        backend = self._backend = self._client()
        backend.connect()
        self._go.wait()
        if self._stop.is_set():
            return  # the command stopped before the instance opened (a broken one: it says why)
        self._engine = Engine(
            archive, STAGE.response, backend, Owner.here(OWNER_RUN), _Stderr(), self._guard or None,
            extra_provenance={"asked_by": ASKED_BY},
        )
        calls = [Call(key, STAGE.parts(key), request) for key, request in requests]
        # Another asker's live claim is left to it, and a call the cap keeps out stops the head start at
        # once (no waiting for room): the runs' steps wait, and meet the cap, themselves.
        self._engine.run(calls, parallel=self.concurrency, wait_for_others=False, wait_for_room=False,
                         stop=self._stop, on_outcome=self._settled)

    def _settled(self, outcome: Outcome) -> None:
        """What the runs are told of one generation (its future's result)."""
        key = outcome.call.key
        if outcome.kind == Kind.PAID:
            result = STORED
        elif outcome.kind == Kind.FAILED and outcome.asked:
            # Asked with its whole retry budget here: its run fails it in these words, asking nothing.
            self.asked_earlier[key] = outcome.asked_earlier()
            if outcome.stops_run:
                self.stopped = self.stopped or outcome.reason
            result = ASKED
        else:
            result = PASSED  # reused, held by another asker, kept out by the cap, or not asked: the run decides
        if outcome.kind in (Kind.FAILED, Kind.REFUSED):
            self._stop.set()  # the next calls would most likely end the same way
        with self._lock:
            future = self._pending.get(key)
            if future is not None and not future.done():
                future.set_result(result)

    def _client(self):
        """The backend the generation_response asset would use (resources/llm.py), outside a run."""
        from ...llm.openai_backend import OpenAIBackend
        from ...llm.slots import FileCallSlots

        settings = self.settings
        return OpenAIBackend(
            api_key=os.environ.get("OPENROUTER_API_KEY"),
            base_url=settings.base_url,
            timeout_s=settings.request_timeout_s,
            deadline_s=settings.call_deadline_s,
            machine_slots=FileCallSlots.for_api(settings.base_url, settings.max_calls_in_flight),
        )


class _Stderr:
    """The head start's log: what a step would log (a claim taken over, say) goes to the terminal."""

    def info(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    warning = info
