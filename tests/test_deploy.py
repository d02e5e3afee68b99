"""The deployment beyond one machine (deploy/): each instance configuration passes Dagster's own
validation, down to the run launcher's and the compute log manager's config schemas."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import pytest

from daydreaming_dagster.compat import InstanceRef, dagster_instance_config, process_config

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
SETTINGS = {
    "DAGSTER_PG_HOST": "postgres.internal",
    "DAGSTER_PG_USER": "daydream",
    "DAGSTER_PG_PASSWORD": "not-a-real-password",
    "DAGSTER_PG_DB": "dagster",
    "DAGSTER_K8S_NAMESPACE": "daydream",
    "DAGSTER_COMPUTE_LOG_BUCKET": "daydream-logs",
}


@pytest.mark.parametrize(
    ("config", "launcher"),
    [("dagster.k8s.yaml", "K8sRunLauncher"), ("dagster.docker.yaml", "DockerRunLauncher")],
)
def test_instance_configuration_is_valid(config: str, launcher: str, tmp_path: Path, monkeypatch):
    for name, value in SETTINGS.items():
        monkeypatch.setenv(name, value)
    shutil.copy(DEPLOY / config, tmp_path / "dagster.yaml")
    instance_config, _ = dagster_instance_config(str(tmp_path))  # the instance schema, as Dagster reads it
    for section in ("run_launcher", "compute_logs"):
        declared = instance_config[section]
        klass = getattr(importlib.import_module(declared["module"]), declared["class"])
        result = process_config(klass.config_type(), declared.get("config") or {})
        assert result.success, [error.message for error in result.errors]
    ref = InstanceRef.from_dir(str(tmp_path))
    assert ref.run_launcher_data.class_name == launcher
    assert ref.storage_data.class_name == "PooledPostgresStorage"
    storage = ref.storage_data
    klass = getattr(importlib.import_module(storage.module_name), storage.class_name)
    assert process_config(klass.config_type(), storage.config_dict).success
    assert ref.compute_logs_data.class_name == "S3ComputeLogManager"


def test_a_misconfigured_launcher_is_refused(tmp_path: Path):
    """The check can fail: a K8s launcher without its required instance ConfigMap is invalid."""
    from dagster_k8s import K8sRunLauncher

    result = process_config(K8sRunLauncher.config_type(), {"job_namespace": "daydream"})
    assert not result.success and "instance_config_map" in " ".join(e.message for e in result.errors)


def test_the_image_installs_what_the_configurations_name():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "--extra postgres --extra deploy" in dockerfile
    assert "daydreaming_dagster.definitions" in dockerfile
