"""The code location's shape: the asset graph against a committed snapshot, the private Dagster
symbols in one place, ids stable across processes, and the layers importing only downwards."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from daydreaming_dagster import compat
from daydreaming_dagster.definitions import build_definitions
from daydreaming_dagster.settings import Settings

PACKAGE = Path(__file__).resolve().parents[1] / "daydreaming_dagster"
SNAPSHOT = Path(__file__).parent / "snapshots" / "asset_graph.json"


def _partitions(partitions_def) -> object:
    if partitions_def is None:
        return None
    if isinstance(partitions_def, dg.DynamicPartitionsDefinition):
        return {"dynamic": partitions_def.name}
    if isinstance(partitions_def, dg.MultiPartitionsDefinition):
        return {"multi": {d.name: _partitions(d.partitions_def) for d in partitions_def.partitions_defs}}
    return type(partitions_def).__name__


def _mapping(mapping) -> object:
    if mapping is None:
        return None
    described = {"class": type(mapping).__name__}
    if isinstance(mapping, dg.MultiToSingleDimensionPartitionMapping):
        described["dimension"] = mapping.partition_dimension_name
    return described


def graph_description(defs: dg.Definitions) -> dict:
    """Everything about the graph a change should be deliberate about, as plain JSON."""
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "partitions": _partitions(node.partitions_def),
            "kinds": sorted(node.kinds),
            "pools": sorted(node.pools or []),
            "backfill_max_partitions_per_run": node.backfill_policy.max_partitions_per_run
            if node.backfill_policy
            else None,
            "deps": {
                parent.to_user_string(): _mapping(graph.get_partition_mapping(key, parent))
                for parent in sorted(node.parent_keys, key=lambda k: k.to_user_string())
            },
        }
    checks = sorted(
        f"{check_key.asset_key.to_user_string()}:{check_key.name}" for check_key in graph.asset_check_keys
    )
    return {
        "assets": assets,
        "checks": checks,
        "jobs": sorted(job.name for job in defs.jobs or []),
        "sensors": sorted(sensor.name for sensor in defs.sensors or []),
        "resources": sorted(defs.resources or {}),
    }


def test_asset_graph_matches_the_snapshot(experiment: Path):
    """Fails on any change to keys, groups, partitions, mappings, kinds, pools or checks. After a
    deliberate change, regenerate with `UPDATE_SNAPSHOTS=1 uv run pytest tests/test_structure.py`."""
    defs = build_definitions(Settings(data_root=experiment, backend="offline", base_url="http://127.0.0.1:9/v1"))
    described = graph_description(defs)
    if os.environ.get("UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(json.dumps(described, indent=2, sort_keys=True) + "\n")
    assert described == json.loads(SNAPSHOT.read_text())


def test_the_snapshot_holds_the_design():
    """The parts of the snapshot DESIGN.md is about, spelled out, so a regenerated snapshot cannot
    quietly drop them."""
    assets = json.loads(SNAPSHOT.read_text())["assets"]
    pair = {"multi": {"evaluation_tasks": {"dynamic": "evaluation_tasks"}, "generation_tasks": {"dynamic": "generation_tasks"}}}
    assert assets["evaluation_prompt"]["partitions"] == assets["evaluation_response"]["partitions"] == pair
    assert assets["evaluation_prompt"]["deps"]["generation_response"] == {
        "class": "MultiToSingleDimensionPartitionMapping",
        "dimension": "generation_tasks",
    }
    assert "generation_response" not in assets["evaluation_response"]["deps"]
    assert assets["evaluation_response"]["deps"]["evaluation_prompt"]["class"] == "IdentityPartitionMapping"
    assert assets["evaluation_tasks"]["group"] == "task_definitions"


@pytest.mark.parametrize("name", compat.PRIVATE_SYMBOLS)
def test_each_private_dagster_symbol_is_still_there(name: str):
    assert getattr(compat, name) is not None


def _private_dagster_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dagster._"):
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("dagster._")]
    return found


def test_private_dagster_imports_live_only_in_compat():
    root = PACKAGE.parent
    offenders = {
        str(path.relative_to(root)): modules
        for folder in ("daydreaming_dagster", "tests", "bench")
        for path in sorted((root / folder).rglob("*.py"))
        if path.name != "compat.py" and (modules := _private_dagster_imports(path))
    }
    assert offenders == {}
    imported = {alias.asname or alias.name for node in ast.parse(Path(compat.__file__).read_text()).body
                if isinstance(node, ast.ImportFrom) and node.module.startswith("dagster._") for alias in node.names}
    assert imported == set(compat.PRIVATE_SYMBOLS) == set(compat.WHY), "each private import is exported with its reason"


# Which parts each part of the package may import (see each package's docstring), bottom up.
ALLOWED = {
    "llm": {"llm"},
    "store": {"store", "llm"},
    "experiment": {"experiment", "llm", "store"},
    "analysis": {"analysis", "experiment"},
    "report": {"report", "analysis", "experiment"},
    "calls": {"calls", "experiment", "llm", "store", "analysis"},
    "resources": {"resources", "experiment", "llm", "store", "calls", "settings"},
    "assets": {"assets", "experiment", "llm", "store", "analysis", "report", "resources", "calls", "compat", "settings"},
    "instance": {"instance", "store", "compat"},
    "orchestration": {"orchestration", "instance"},
}
NO_DAGSTER = {"experiment", "llm", "store", "analysis", "report", "calls"}


def _imports(path: Path) -> tuple[set[str], bool]:
    """The project packages a module imports (relative or absolute) and whether it imports dagster."""
    layer_depth = len(path.relative_to(PACKAGE).parts) - 1
    packages, dagster = set(), False
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = list(path.relative_to(PACKAGE).parts[:layer_depth])[: max(0, layer_depth - node.level + 1)]
                parts = base + (module.split(".") if module else [a.name for a in node.names][:1])
                packages.add(parts[0])
            elif module.startswith("daydreaming_dagster."):
                packages.add(module.split(".")[1])
            dagster = dagster or module == "dagster" or module.startswith("dagster.")
        elif isinstance(node, ast.Import):
            dagster = dagster or any(a.name == "dagster" or a.name.startswith("dagster.") for a in node.names)
    return packages, dagster


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layers_import_only_downwards(layer: str):
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        packages, dagster = _imports(path)
        assert packages <= ALLOWED[layer], f"{path.name} imports {sorted(packages - ALLOWED[layer])}"
        if layer in NO_DAGSTER:
            assert not dagster, f"{path.name} imports dagster; the {layer} layer is pure"


@pytest.mark.security
def test_templates_render_only_in_the_sandbox_without_loader_or_globals():
    """Experiment folders are shared: a change to the template code must not drop the sandbox."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from daydreaming_dagster.experiment import loaders, templates

    environment = templates.ENVIRONMENT
    assert isinstance(environment, ImmutableSandboxedEnvironment)
    assert environment.loader is None
    assert dict(environment.globals) == {}
    assert {"*", "**"} <= environment.intercepted_binops
    assert templates._compiled("{{ response }}").environment is environment
    assert loaders.check_template is templates.check_template
    # No other module builds a Jinja environment (or imports jinja2) to render with.
    importers = sorted(
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if re.search(r"^\s*(import jinja2|from jinja2)", path.read_text(encoding="utf-8"), re.MULTILINE)
    )
    assert importers == ["experiment/templates.py"]


def test_nothing_imports_the_runner_and_the_code_location_imports_nothing_of_it():
    """The runner (`daydream`, its executor, its rerun logic) sits on top: Dagster loads the code
    location (definitions.py and what it imports) without it."""
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).parts[0] == "runner":
            continue
        packages, _ = _imports(path)
        assert "runner" not in packages, f"{path.relative_to(PACKAGE)} imports the runner"


def test_importing_the_package_reads_no_environment():
    """Importing the code location builds nothing: a bad setting fails only when defs() runs."""
    env = {**os.environ, "DAYDREAM_BACKEND": "not-a-backend"}
    code = "import daydreaming_dagster.definitions as d; print('imported'); d.defs()"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "imported"
    assert "DAYDREAM_BACKEND is 'not-a-backend'" in done.stderr


IDS_CODE = """
from daydreaming_dagster.experiment.ids import combo_id, evaluation_task_id, generation_task_id
combos = [combo_id(c) for c in (["b", "a"], ["alpha", "gamma", "beta"], ["x-1", "x.2"])]
print([generation_task_id(c, "tmpl", "model-1") for c in combos], evaluation_task_id("judge", "m"))
"""


@pytest.mark.slow
def test_ids_are_the_same_in_every_process():
    """Ids are digests of content, never Python's salted hash(): two hash seeds, one answer."""
    outputs = {
        subprocess.run(
            [sys.executable, "-c", IDS_CODE],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout
        for seed in ("1", "4242")
    }
    assert len(outputs) == 1 and "combo-" in outputs.pop()
