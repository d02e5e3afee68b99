"""The Dagster instance of `daydream run`'s worker processes: DAGSTER_HOME's instance, as a
DagsterInstance subclass that serves the dynamic partition keys from memory, without capturing
each run's stdout/stderr to files, and safe for several runs at once in one process.

Dagster asks the instance whether a key exists ~30 times per partition run and lists every key
of each dimension to resolve a multi-partition key; on SQLite that was about 40% of a run's CPU
(~30% less CPU per run with the cache, measured when it was introduced). Keys change only through
registration: this process's own (which clears the cache) or another process's (seen after
`key_ttl_s`, or at once for a key asked about that is not cached).

The same class makes creating a runner's run one step with checking that no other run is
materializing its partitions (see overlap.py): two runners started together never both run one.

A custom DagsterInstance class is Dagster's supported seam for this (`instance_class` in
dagster.yaml); the runner names the class in the instance's ref for its own workers only, so the
webserver, the daemon and the CLI keep the stock instance and never see a cached key list.

Two per-run costs of the stock instance are dropped for these runs. Its compute-log manager mirrors
a run's stdout and stderr into files through two `tail -F` processes and two Python watcher
processes per run (measured: ~75 ms of CPU and up to 0.6 s of wall per run), by swapping the
process's file descriptors, which is not safe with several runs in one process; the runner's runs
log through Dagster's event log (which the UI shows), and what they print goes to the terminal.
And Dagster re-applies the instance's `python_logs` handler config with `logging.config.dictConfig`
at the start of every run, which resets logging process-wide and deadlocks against a run logging in
another thread; the handlers it builds are the same each time, so they are built once."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence

import dagster as dg

from ...compat import ConfigurableClassData, InstanceRef, NoOpComputeLogManager
from ...instance.opening import open_instance
from ..reruns.overlap import HOST_TAG, RERUN_TAG, check_no_overlap, run_creation_lock

DEFAULT_KEY_TTL_S = 30.0


class KeyCachingInstance(dg.DagsterInstance):
    """A DagsterInstance whose dynamic partition keys are read once per `key_ttl_s` per process."""

    def __init__(self, *args, key_ttl_s: float = DEFAULT_KEY_TTL_S, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._key_ttl_s = key_ttl_s
        self._keys: dict[str, tuple[float, Sequence[str], frozenset[str]]] = {}
        self._handlers: Sequence[logging.Handler] | None = None
        self._handlers_lock = threading.Lock()

    @classmethod
    def config_schema(cls) -> dict:
        return {"key_ttl_s": dg.Field(float, is_required=False, default_value=DEFAULT_KEY_TTL_S)}

    def _entry(self, name: str, refresh: bool = False) -> tuple[float, Sequence[str], frozenset[str]]:
        entry = self._keys.get(name)
        if refresh or entry is None or time.monotonic() - entry[0] > self._key_ttl_s:
            keys = list(super().get_dynamic_partitions(name))
            entry = self._keys[name] = (time.monotonic(), keys, frozenset(keys))
        return entry

    def get_dynamic_partitions(self, partitions_def_name: str) -> Sequence[str]:
        return self._entry(partitions_def_name)[1]

    def has_dynamic_partition(self, partitions_def_name: str, partition_key: str) -> bool:
        if partition_key in self._entry(partitions_def_name)[2]:
            return True
        return partition_key in self._entry(partitions_def_name, refresh=True)[2]

    def add_dynamic_partitions(self, partitions_def_name: str, partition_keys: Sequence[str]) -> None:
        self._keys.pop(partitions_def_name, None)
        super().add_dynamic_partitions(partitions_def_name, partition_keys)

    def delete_dynamic_partition(self, partitions_def_name: str, partition_key: str) -> None:
        self._keys.pop(partitions_def_name, None)
        super().delete_dynamic_partition(partitions_def_name, partition_key)

    def get_yaml_python_handlers(self) -> Sequence[logging.Handler]:
        with self._handlers_lock:
            if self._handlers is None:
                self._handlers = list(super().get_yaml_python_handlers())
            return self._handlers

    def create_run_for_job(self, job_def: dg.JobDefinition, **kwargs) -> dg.DagsterRun:
        """A runner's run (tagged with its worker, see overlap.owner_tags) is created only when no
        other run is materializing its partitions; else overlap.RunsOverlap is raised."""
        if HOST_TAG not in (kwargs.get("tags") or {}):
            return super().create_run_for_job(job_def, **kwargs)
        with run_creation_lock(self):
            check_no_overlap(self, job_def, kwargs["tags"], rerun_materialized=RERUN_TAG in kwargs["tags"])
            return super().create_run_for_job(job_def, **kwargs)


def worker_instance() -> dg.DagsterInstance:
    """DAGSTER_HOME's instance with its key cache and no compute-log capture; a home whose
    dagster.yaml names an instance class of its own keeps that class (and no cache)."""
    ref = InstanceRef.from_dir(os.environ["DAGSTER_HOME"])
    no_capture = ConfigurableClassData(NoOpComputeLogManager.__module__, NoOpComputeLogManager.__name__, "{}\n")
    ref = ref._replace(compute_logs_data=no_capture)
    if ref.custom_instance_class_data is None:
        ref = ref._replace(
            custom_instance_class_data=ConfigurableClassData(__name__, KeyCachingInstance.__name__, "{}\n")
        )
    instance = open_instance(ref)
    instance.get_yaml_python_handlers()  # built now, before any run of this process starts
    return instance
