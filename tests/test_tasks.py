"""Task tables and ids: pure functions over the loaded experiment."""

from __future__ import annotations

import hashlib
import re
from itertools import combinations
from math import comb
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from daydreaming_dagster.assets.partitions import evaluation_pairs_partitions
from daydreaming_dagster.experiment.errors import ExperimentError
from daydreaming_dagster.experiment.ids import (
    check_safe_id,
    combo_id,
    evaluation_task_id,
    generation_task_id,
)
from daydreaming_dagster.experiment.loaders import load_concepts, load_models, load_templates
from daydreaming_dagster.experiment.stages import EVALUATION, pair_key
from daydreaming_dagster.experiment.tasks import (
    build_content_combinations,
    build_evaluation_tasks,
    build_generation_tasks,
    missing_generation_keys,
)
from tests.experiment_factory import write_experiment

# --------------------------------------------------------------------------- combo ids


def test_combo_id_is_a_stable_content_digest():
    # Golden values: ids name files and partitions, so they must never change between versions
    # or processes (Python's hash() would change with PYTHONHASHSEED).
    assert combo_id(["alpha", "beta"]) == "combo-2-bbfb79e822"
    assert combo_id(["a", "b", "c"]) == "combo-3-ea7fb08b7a"
    assert combo_id(["alpha", "beta"]) == "combo-2-" + hashlib.sha256(b"alpha\nbeta").hexdigest()[:10]


def test_combo_id_ignores_order_and_accepts_any_iterable():
    expected = combo_id(["alpha", "beta", "gamma"])
    assert combo_id(["gamma", "alpha", "beta"]) == expected
    assert combo_id(iter(["beta", "gamma", "alpha"])) == expected
    assert combo_id(c for c in ("gamma", "beta", "alpha")) == expected


def test_combo_ids_differ_for_different_sets():
    sets = [["a", "b"], ["a", "c"], ["b", "c"], ["a", "b", "c"], ["ab"], ["a"], ["a", "bc"], ["ab", "c"]]
    ids = [combo_id(s) for s in sets]
    assert len(set(ids)) == len(ids)
    for cid in ids:
        assert re.fullmatch(r"combo-\d+-[0-9a-f]{10}", cid)
        assert check_safe_id(cid, "combo") == cid


def test_composite_ids_and_pair_key_format():
    gid = generation_task_id("combo-2-bbfb79e822", "gen-a", "gen-model-1")
    eid = evaluation_task_id("judge-a", "judge-model-1")
    assert gid == "combo-2-bbfb79e822__gen-a__gen-model-1"
    assert eid == "judge-a__judge-model-1"
    # Dagster prints a multi-partition key with the dimension names sorted: evaluation first.
    assert pair_key(gid, eid) == f"{eid}|{gid}"
    mpk = dg.MultiPartitionKey({"generation_tasks": gid, "evaluation_tasks": eid})
    assert str(mpk) == pair_key(gid, eid)


# --------------------------------------------------------------------------- the tables


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """4 active concepts + 1 inactive; 2 active generation templates + 1 inactive; 1 active evaluation
    template + 1 inactive; generators gen-1, gen-2, both; judges judge-1, both; one retired model."""
    root = write_experiment(
        tmp_path / "data",
        concepts=("alpha", "beta", "gamma", "delta", "omega"),
        generation_templates=("gen-a", "gen-b", "gen-off"),
        evaluation_templates=("judge-a", "judge-off"),
        generators=("gen-1", "gen-2"),
        judges=("judge-1",),
    )
    raw = root / "1_raw"

    def deactivate(csv: Path, first_field: str) -> None:
        lines = csv.read_text().splitlines()
        lines = [re.sub(r",true$", ",false", line) if line.split(",")[0] == first_field else line for line in lines]
        csv.write_text("\n".join(lines) + "\n")

    deactivate(raw / "concepts" / "concepts_metadata.csv", "omega")
    deactivate(raw / "generation_templates.csv", "gen-off")
    deactivate(raw / "evaluation_templates.csv", "judge-off")
    with (raw / "llm_models.csv").open("a") as f:
        f.write("both,test/both,test,both,true,true\n")
        f.write("retired,test/retired,test,retired,false,false\n")
    return raw


def tables(raw: Path, k: int = 2):
    concepts = load_concepts(raw)
    combos = build_content_combinations(concepts, k, "paragraph")
    generation = build_generation_tasks(combos, load_templates(raw, "generation"), load_models(raw))
    evaluation = build_evaluation_tasks(generation, load_templates(raw, "evaluation"), load_models(raw))
    return combos, generation, evaluation


def test_row_counts_are_products_of_active_inputs(mixed: Path):
    combos, generation, evaluation = tables(mixed)
    active_concepts, generation_templates, generators = 4, 2, 3  # gen-1, gen-2, both
    evaluation_templates, judges = 1, 2  # judge-1, both
    n_combos = comb(active_concepts, 2)
    assert combos["combo_id"].nunique() == n_combos
    assert len(combos) == n_combos * 2
    assert len(generation) == n_combos * generation_templates * generators == 36
    assert len(evaluation) == len(generation) * evaluation_templates * judges == 72

    assert "omega" not in set(combos["concept_id"])
    assert not generation["concept_ids"].str.contains("omega").any()
    assert set(generation["generation_template_id"]) == {"gen-a", "gen-b"}
    assert set(generation["generation_model_id"]) == {"gen-1", "gen-2", "both"}
    assert set(evaluation["evaluation_template_id"]) == {"judge-a"}
    assert set(evaluation["evaluation_model_id"]) == {"judge-1", "both"}
    assert set(evaluation["evaluation_task_id"]) == {"judge-a__judge-1", "judge-a__both"}
    assert "retired" not in set(generation["generation_model_id"]) | set(evaluation["evaluation_model_id"])


def test_generation_tasks_match_their_combinations(mixed: Path):
    combos, generation, _ = tables(mixed)
    members = combos.groupby("combo_id")["concept_id"].apply(lambda s: sorted(s))
    expected_combos = {combo_id(c) for c in combinations(["alpha", "beta", "delta", "gamma"], 2)}
    assert set(members.index) == expected_combos
    for row in generation.itertuples():
        assert row.generation_task_id == generation_task_id(row.combo_id, row.generation_template_id, row.generation_model_id)
        assert row.concept_ids.split(",") == members[row.combo_id]
        assert row.generation_model == f"test/{row.generation_model_id}"
        # composite ids join safe parts with the reserved "__": still safe as keys and file names
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", row.generation_task_id)
    assert generation["generation_task_id"].is_unique


def test_every_evaluation_row_points_at_a_generation_task(mixed: Path):
    _, generation, evaluation = tables(mixed)
    assert set(evaluation["generation_task_id"]) == set(generation["generation_task_id"])
    pairs = evaluation[["generation_task_id", "evaluation_task_id"]]
    assert not pairs.duplicated().any()
    for row in evaluation.itertuples():
        assert row.evaluation_task_id == evaluation_task_id(row.evaluation_template_id, row.evaluation_model_id)
        assert row.evaluation_model == f"test/{row.evaluation_model_id}"
    assert missing_generation_keys(evaluation, generation["generation_task_id"]) == []


def test_tables_are_deterministic(mixed: Path):
    first = tables(mixed)
    second = tables(mixed)
    for a, b in zip(first, second):
        pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("k, n", [(1, 4), (2, 6), (3, 4), (4, 1)])
def test_k_of_n_combinations(mixed: Path, k: int, n: int):
    combos = build_content_combinations(load_concepts(mixed), k, "paragraph")
    assert combos["combo_id"].nunique() == n
    assert combos.groupby("combo_id").size().eq(k).all()
    assert combos.groupby("combo_id")["position"].apply(list).map(lambda p: p == list(range(k))).all()


@pytest.mark.parametrize("k", [0, -1, 5, 9])
def test_k_out_of_range_fails(mixed: Path, k: int):
    with pytest.raises(ExperimentError, match=rf"k={k} must be between 1 and the number of active concepts \(4\)"):
        build_content_combinations(load_concepts(mixed), k, "paragraph")


def test_no_active_generation_template_fails(mixed: Path):
    templates = load_templates(mixed, "generation")
    templates["active"] = False
    combos = build_content_combinations(load_concepts(mixed), 2, "paragraph")
    with pytest.raises(ExperimentError, match="no active generation template"):
        build_generation_tasks(combos, templates, load_models(mixed))


def test_no_judge_fails(mixed: Path):
    _, generation, _ = tables(mixed)
    models = load_models(mixed)
    models["for_evaluation"] = False
    with pytest.raises(ExperimentError, match="no evaluation model"):
        build_evaluation_tasks(generation, load_templates(mixed, "evaluation"), models)


def test_missing_generation_keys_lists_the_unregistered_ones(mixed: Path):
    _, generation, evaluation = tables(mixed)
    ids = sorted(generation["generation_task_id"])
    registered = ids[2:] + ["some-stale-key"]
    assert missing_generation_keys(evaluation, registered) == ids[:2]
    assert missing_generation_keys(evaluation, ids) == []
    assert missing_generation_keys(evaluation, []) == ids


# --------------------------------------------------------------------------- valid pairs


@pytest.fixture
def pair_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "generation_task_id": ["g1", "g1", "g2", "g2", "g3"],
            "evaluation_task_id": ["e1", "e2", "e1", "e2", "e1"],
        }
    )


def test_valid_pair_keys_are_eval_bar_gen_in_table_order(pair_table: pd.DataFrame):
    assert EVALUATION.select(pair_table) == ["e1|g1", "e2|g1", "e1|g2", "e2|g2", "e1|g3"]


def test_valid_pair_keys_filters(pair_table: pd.DataFrame):
    assert EVALUATION.select(pair_table, parents=["g2"]) == ["e1|g2", "e2|g2"]
    assert EVALUATION.select(pair_table, parents=["g1", "g3"]) == ["e1|g1", "e2|g1", "e1|g3"]
    assert EVALUATION.select(pair_table, only={"evaluation_task_id": ["e2"]}) == ["e2|g1", "e2|g2"]
    assert EVALUATION.select(pair_table, parents=["g2"], only={"evaluation_task_id": ["e1"]}) == ["e1|g2"]
    assert EVALUATION.select(pair_table, exclude={"e1|g1", "e2|g2"}) == ["e2|g1", "e1|g2", "e1|g3"]
    assert EVALUATION.select(pair_table, parents=["nope"]) == []
    # a pair absent from the table is never produced, even though both of its keys exist
    assert "e2|g3" not in EVALUATION.select(pair_table)


def test_an_empty_filter_selects_nothing(pair_table: pd.DataFrame):
    # `daydream run` asks for the pairs of the generations materialized so far; none means none.
    assert EVALUATION.select(pair_table, parents=set()) == []
    assert EVALUATION.select(pair_table, only={"evaluation_task_id": []}) == []


def test_valid_pair_keys_are_dagster_multi_partition_keys(pair_table: pd.DataFrame):
    strings = EVALUATION.select(pair_table, only={"evaluation_task_id": ["e1"]})
    keys = [evaluation_pairs_partitions.get_partition_key_from_str(s) for s in strings]
    assert [k.keys_by_dimension for k in keys] == [
        {"generation_tasks": "g1", "evaluation_tasks": "e1"},
        {"generation_tasks": "g2", "evaluation_tasks": "e1"},
        {"generation_tasks": "g3", "evaluation_tasks": "e1"},
    ]
    assert [str(k) for k in keys] == strings


def test_valid_pairs_of_a_built_table(mixed: Path):
    _, generation, evaluation = tables(mixed)
    keys = EVALUATION.select(evaluation)
    assert len(keys) == len(set(keys)) == 72
    expected = {
        f"{e}|{g}" for g in generation["generation_task_id"] for e in ("judge-a__judge-1", "judge-a__both")
    }
    assert set(keys) == expected
