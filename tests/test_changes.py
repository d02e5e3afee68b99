"""Change tracking: which stored answers a change to the experiment makes out of date, which file
did it, what `daydream run` reports and re-asks, and what Dagster's own staleness says."""

from __future__ import annotations

import hashlib
from pathlib import Path

import dagster as dg
import pytest

from daydreaming_dagster.compat import CachingStaleStatusResolver, LoadingContextForTest, StaleStatus
from daydreaming_dagster.definitions import build_definitions
from daydreaming_dagster.experiment.ids import combo_id, generation_task_id
from daydreaming_dagster.resources.config import ExperimentConfig
from daydreaming_dagster.runner.cli import main as daydream
from daydreaming_dagster.runner.plan import format_plan, make_plan
from daydreaming_dagster.runner.reruns.changes import EDITED, JUDGED_ANSWER, ChangeCheck, StageCheck, change_report
from daydreaming_dagster.settings import Settings
from daydreaming_dagster.store.csv_tables import read_table
from daydreaming_dagster.store.layout import sidecar_path, table_path, text_path
from tests.experiment_factory import write_experiment
from tests.pipeline import KEY, REPLACE_CHANGED

GRAPH = build_definitions(Settings(Path("data"), "openai", "http://unused")).resolve_asset_graph()
# The run tag Dagster writes a materialization's data version to (dagster/_core/definitions/data_version.py).
DATA_VERSION_TAG = "dagster/data_version"


def staleness(instance: dg.DagsterInstance, asset: str, partition: str) -> tuple[StaleStatus, list[str]]:
    """What the Dagster UI shows for one partition: its status, and the root causes when stale."""
    resolver = CachingStaleStatusResolver(instance, GRAPH, LoadingContextForTest(instance))
    causes = resolver.get_stale_root_causes(dg.AssetKey(asset), partition)
    return resolver.get_status(dg.AssetKey(asset), partition), [f"{c.asset_key.to_user_string()} {c.reason}" for c in causes]


def answers_by_prompt(server) -> None:
    """Answers that follow their prompt, as a model's would: a changed prompt gets another answer."""
    server.default_answer = lambda body: (
        f"Answer to {hashlib.sha256(body['messages'][0]['content'].encode()).hexdigest()[:12]}.\nSCORE: 6"
    )


def checker(pipeline) -> ChangeCheck:
    config = ExperimentConfig.for_experiment(str(pipeline.root), str(pipeline.root))
    return ChangeCheck(pipeline.root, config, pipeline.instance)


@pytest.fixture
def finished(pipeline, openai_server):
    """The test experiment (6 generations, 12 pairs) with every answer stored and materialized."""
    answers_by_prompt(openai_server)
    pipeline.generate_all()
    pipeline.evaluate_all()
    assert len(openai_server.requests) == 18
    return pipeline


def with_concept(pipeline, concept: str) -> set[str]:
    tasks = read_table(table_path(pipeline.root, "generation_tasks"))
    return set(tasks.loc[tasks["concept_ids"].str.split(",").map(lambda ids: concept in ids), "generation_task_id"])


def test_a_finished_experiment_has_nothing_out_of_date_and_an_unchanged_rebuild_keeps_it_fresh(finished):
    check = checker(finished)
    assert check.generations().out_of_date == {} and check.evaluations().out_of_date == {}
    pair = str(finished.pairs()[0])
    assert staleness(finished.instance, "evaluation_response", pair) == (StaleStatus.FRESH, [])
    # The task tables carry the digest of their content: rebuilding them unchanged changes nothing.
    finished.tables()
    assert staleness(finished.instance, "evaluation_response", pair) == (StaleStatus.FRESH, [])
    assert staleness(finished.instance, "evaluation_prompt", pair) == (StaleStatus.FRESH, [])


def test_a_concept_edit_makes_exactly_its_generations_out_of_date_and_their_pairs_follow(finished, openai_server):
    description = finished.root / "1_raw" / "concepts" / "descriptions-paragraph" / "alpha.txt"
    description.write_text("Alpha, described anew.")
    finished.tables()
    check = checker(finished)

    generations = check.generations()
    assert set(generations.out_of_date) == with_concept(finished, "alpha") and len(generations.out_of_date) == 4
    assert set(generations.out_of_date.values()) == {("concepts/descriptions-paragraph/alpha.txt",)}
    assert check.evaluations().out_of_date == {}  # the stored generations they judge are unchanged
    table = read_table(table_path(finished.root, "evaluation_tasks"))
    assert change_report(generations, StageCheck("evaluation"), table, replace_changed=False) == [
        "generation: 4 generations out of date (concepts/descriptions-paragraph/alpha.txt changed)",
        "evaluation: 8 more pairs judge an out-of-date generation (re-asked after their generation with --replace-changed)",
        "out-of-date answers are kept and skipped; re-ask them with `daydream run --replace-changed` "
        "(each old answer then moves to _superseded/)",
    ]

    # Re-asked deliberately, the new generations make exactly their pairs out of date, and say why.
    for key in sorted(generations.out_of_date):
        assert finished.generate(key, REPLACE_CHANGED).success
    assert len(openai_server.requests) == 18 + 4
    assert checker(finished).generations().out_of_date == {}
    evaluations = checker(finished).evaluations()
    assert {k.split("|")[1] for k in evaluations.out_of_date} == with_concept(finished, "alpha")
    assert set(evaluations.out_of_date.values()) == {(JUDGED_ANSWER,)}
    assert evaluations.why() == "the generation answer they judge changed"
    pair = next(iter(evaluations.out_of_date))
    status, causes = staleness(finished.instance, "evaluation_prompt", pair)
    assert status == StaleStatus.STALE and causes == ["generation_response has a new data version"]


def test_the_plan_counts_out_of_date_answers_and_what_re_asking_them_would_make(finished, openai_server):
    description = finished.root / "1_raw" / "concepts" / "descriptions-paragraph" / "alpha.txt"
    description.write_text("Alpha, described anew.")  # not even rebuilt: the plan reads 1_raw
    config = ExperimentConfig.for_experiment(str(finished.root), str(finished.root))
    plan = make_plan(config, finished.instance)

    assert plan.calls == 0  # everything is materialized: a plain run pays for nothing
    assert plan.changes[:2] == [
        "generation: 4 generations out of date (concepts/descriptions-paragraph/alpha.txt changed)",
        "evaluation: 8 more pairs judge an out-of-date generation (re-asked after their generation with --replace-changed)",
    ]
    assert plan.replace_calls == 4 + 8  # the 4 generations, then their 8 pairs
    text = format_plan(plan, offline=False)
    assert "  generation: 4 generations out of date (concepts/descriptions-paragraph/alpha.txt changed)" in text
    assert "--replace-changed would make 12 more call(s): cost unknown (no price for " in text
    assert len(openai_server.requests) == 18


def test_a_model_a_parameter_and_a_hand_edit_each_name_their_cause(finished):
    models = finished.root / "1_raw" / "llm_models.csv"
    models.write_text(models.read_text().replace("test/judge-model-2", "test/judge-model-2-v2"))
    finished.tables()
    evaluations = checker(finished).evaluations()
    assert len(evaluations.out_of_date) == 6 and all(k.startswith("judge-a__judge-model-2|") for k in evaluations.out_of_date)
    assert evaluations.why() == "llm_models.csv changed"

    settings = finished.root / "1_raw" / "experiment.toml"
    settings.write_text(settings.read_text().replace("generation_temperature = 0.5", "generation_temperature = 0.9"))
    generations = checker(finished).generations()
    assert len(generations.out_of_date) == 6 and generations.why() == "experiment.toml changed"

    key = finished.generation_keys()[0]
    path = finished.response_path(key)
    path.write_text(path.read_text() + " (edited)")
    sidecar_path(finished.response_path(finished.generation_keys()[1])).unlink()
    generations = checker(finished).generations()
    assert generations.out_of_date[key] == ("experiment.toml", EDITED)
    assert generations.out_of_date[finished.generation_keys()[1]] == ("no provenance sidecar",)


def test_one_run_records_its_partitions_digest_and_a_range_the_digest_of_its_partitions(pipeline, openai_server):
    answers_by_prompt(openai_server)
    keys = pipeline.generation_keys()
    assert pipeline.generate(keys[0]).success
    record = pipeline.instance.get_latest_data_version_record(dg.AssetKey("generation_prompt"), False, keys[0])
    prompt = text_path(pipeline.root, "generation_prompt", keys[0]).read_text()
    assert record.event_log_entry.tags[DATA_VERSION_TAG] == hashlib.sha256(prompt.encode()).hexdigest()

    assert pipeline.materialize_range(["generation_prompt", "generation_response"], keys[1:]).success
    versions, digests = set(), {}
    for key in keys[1:]:
        record = pipeline.instance.get_latest_data_version_record(dg.AssetKey("generation_prompt"), False, key)
        versions.add(record.event_log_entry.tags[DATA_VERSION_TAG])
        digests[key] = record.asset_materialization.metadata["data_digest"].value
        prompt = text_path(pipeline.root, "generation_prompt", key).read_text()
        assert digests[key] == record.asset_materialization.metadata["prompt_sha256"].value == hashlib.sha256(prompt.encode()).hexdigest()
    # Dagster copies the range's one data version onto every partition of it (see partition_output).
    assert len(versions) == 1 and versions != set(digests.values())


@pytest.mark.slow
def test_a_template_edit_is_reported_re_asked_exactly_and_stale_in_dagster_until_then(
    openai_server, tmp_path, monkeypatch, capsys
):
    """The README's walk-through: a finished experiment, one evaluation template edited."""
    # 3 generations; 2 evaluation templates x 2 judges = 4 methods; 12 pairs, 6 of them judge-b's.
    experiment = write_experiment(tmp_path / "data", generators=("gen-model-1",), evaluation_templates=("judge-a", "judge-b"))
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
    monkeypatch.setenv("OPENROUTER_BASE_URL", openai_server.base_url)
    monkeypatch.setenv("DAYDREAM_DATA_ROOT", str(experiment))
    for name in ("DAYDREAM_BACKEND", "DAYDREAM_OUTPUT_ROOT"):
        monkeypatch.delenv(name, raising=False)
    answers_by_prompt(openai_server)
    argv = ["run", "--data-root", str(experiment), "--concurrency", "1"]

    assert daydream(argv) == 0, capsys.readouterr().err
    assert len(openai_server.requests) == 3 + 12
    capsys.readouterr()
    responses = sorted((experiment / "4_evaluation" / "evaluation_response").glob("*/*.txt"))
    before = {p: (p.read_bytes(), sidecar_path(p).read_bytes()) for p in responses}
    generation = generation_task_id(combo_id(["alpha", "beta"]), "gen-a", "gen-model-1")
    changed_pair, other_pair = f"judge-b__judge-model-1|{generation}", f"judge-a__judge-model-1|{generation}"

    template = experiment / "1_raw" / "evaluation_templates" / "judge-b.txt"
    template.write_text(template.read_text() + "Be strict.\n")
    assert daydream(argv) == 0
    err = capsys.readouterr().err
    assert "evaluation: 6 pairs out of date (evaluation_templates/judge-b.txt changed)" in err
    assert "generation:" not in err.split("out of date")[0].splitlines()[-1]
    assert "re-ask them with `daydream run --replace-changed`" in err
    assert len(openai_server.requests) == 15  # reported before any call, and nothing asked
    assert {p: (p.read_bytes(), sidecar_path(p).read_bytes()) for p in responses} == before
    instance = dg.DagsterInstance.get()
    assert staleness(instance, "evaluation_response", changed_pair) == (
        StaleStatus.STALE,
        ["evaluation_prompt has a new data version"],
    )
    assert staleness(instance, "evaluation_response", other_pair) == (StaleStatus.FRESH, [])

    assert daydream([*argv, "--replace-changed"]) == 0
    err = capsys.readouterr().err
    assert "evaluation: 6 pairs out of date (evaluation_templates/judge-b.txt changed)" in err
    asked = openai_server.requests[15:]
    assert len(asked) == 6
    assert all(r.body["messages"][0]["content"].endswith("Be strict.\n") for r in asked)
    superseded = sorted((experiment / "4_evaluation" / "evaluation_response").glob("*/_superseded/*.txt"))
    assert len(superseded) == 6 and all(p.name.startswith("judge-b__") for p in superseded)
    for path, stored in before.items():
        unchanged = (path.read_bytes(), sidecar_path(path).read_bytes()) == stored
        assert unchanged == path.name.startswith("judge-a__"), path
    assert staleness(instance, "evaluation_response", changed_pair) == (StaleStatus.FRESH, [])
    assert staleness(instance, "evaluation_prompt", changed_pair) == (StaleStatus.FRESH, [])

    assert daydream(argv) == 0
    assert "out of date" not in capsys.readouterr().err
    assert len(openai_server.requests) == 21
