"""Elastic worker ranges, placement and the per-worker shard audit, without Ray.

`scaling.num_workers: [min, max]` is validated at the edge, planned for the largest group and
re-derived by the loop for the group it actually runs in (`Plan.for_world_size`). The shard
digests let a user check from `metrics.jsonl` that workers trained disjoint shards covering
the epoch.
"""

from __future__ import annotations

import copy
import dataclasses
import random

import numpy as np
import pytest
import torch
import yaml
from test_config import BASE_JOB

from rayaccel.cli import main
from rayaccel.config import ConfigError, dump_job, parse_job
from rayaccel.plan import Plan, PlanError, format_plan, make_plan
from rayaccel.train.shard_audit import ShardAudit, combine_digests, index_digest


def _job(scaling: dict, **train):
    raw = copy.deepcopy(BASE_JOB)
    raw["data"].update(image_size_px=28, channels=1, num_classes=10, mean=[0.3], std=[0.3])
    raw["scaling"] = scaling
    raw["train"].update(train)
    return raw


def _problems(raw) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_job(raw, source="jobs/x.yaml")
    return err.value.problems


@pytest.mark.parametrize(
    "num_workers, expected",
    [
        ([0, 2], "scaling.num_workers: the range's min must be >= 1, got [0, 2]"),
        ([3, 2], "scaling.num_workers: the range's min must be <= its max, got [3, 2]"),
        ([1, 2, 3], "scaling.num_workers: must be an integer or a [min, max] range"),
        (["a", 2], "scaling.num_workers: must be an integer or a [min, max] range"),
        (0, "scaling.num_workers: must be >= 1, got 0"),
    ],
)
def test_bad_worker_counts_are_named(num_workers, expected):
    (line,) = _problems(_job({"num_workers": num_workers}))
    assert line.startswith(f"jobs/x.yaml: {expected}"), line


def test_global_batch_must_split_over_every_group_size():
    (line,) = _problems(_job({"num_workers": [2, 4]}, global_batch_size=128))
    assert line == (
        "jobs/x.yaml: train.global_batch_size: must be a multiple of every worker count "
        "scaling.num_workers=[2, 4] allows (of 12), got 128 (try 120)"
    )
    job = parse_job(_job({"num_workers": [2, 4]}, global_batch_size=120))
    assert (job.scaling.min_workers, job.scaling.max_workers) == (2, 4)
    assert job.scaling.num_workers == (2, 4)


def test_a_range_survives_the_resolved_job_yaml():
    job = parse_job(_job({"num_workers": [1, 2], "placement_strategy": "STRICT_SPREAD"}))
    again = parse_job(yaml.safe_load(dump_job(job)))
    assert again.scaling.num_workers == (1, 2)
    assert again.scaling.placement_strategy == "STRICT_SPREAD"
    assert parse_job(_job({"num_workers": [2, 2]})).scaling.num_workers == 2


def test_unknown_placement_strategy_lists_the_choices():
    (line,) = _problems(_job({"num_workers": 2, "placement_strategy": "RANDOM"}))
    assert line.startswith("jobs/x.yaml: scaling.placement_strategy: must be 'PACK', 'SPREAD'")


def test_plan_for_a_smaller_group_keeps_the_global_batch():
    plan = make_plan(
        parse_job(_job({"num_workers": [1, 2]}, global_batch_size=128)), train_samples=4000
    )
    assert (plan.min_workers, plan.num_workers) == (1, 2)
    assert plan.stages[0].per_worker_batch == 64 and plan.stages[0].steps_per_epoch == 31
    one = plan.for_world_size(1)
    assert one.num_workers == 1
    assert one.stages[0].global_batch == 128
    assert one.stages[0].per_worker_batch == 128 and one.stages[0].steps_per_epoch == 31
    assert plan.for_world_size(2) is plan
    # A round trip through the dict the loop receives.
    assert Plan.from_dict(plan.to_dict()).for_world_size(1) == one
    assert "1-2 workers (elastic" in format_plan(plan)


def test_plan_rejects_a_group_size_that_cannot_train_a_step():
    plan = make_plan(
        parse_job(_job({"num_workers": [1, 2]}, global_batch_size=128)), train_samples=4000
    )
    with pytest.raises(PlanError, match="does not split over 3 workers"):
        plan.for_world_size(3)
    # 100 samples hold no 128-sample step for a single worker.
    with pytest.raises(PlanError, match="128 fresh samples per worker and step with 1 workers"):
        dataclasses.replace(plan, train_samples=100).for_world_size(1)


def test_elastic_curriculum_batches_split_over_every_group_size():
    raw = _job({"num_workers": [2, 3]}, global_batch_size=66)
    raw["train"]["schedule"] = {"name": "cosine", "warmup_epochs": 0}
    raw["curriculum"] = {"preset": "et++", "budget_epochs": 4, "max_global_batch": 132}
    plan = make_plan(parse_job(raw), train_samples=4000)
    for stage in plan.stages:
        assert stage.global_batch % 6 == 0, stage
    for world_size in (2, 3):
        assert plan.for_world_size(world_size).num_workers == world_size


def test_cli_plan_prints_the_elastic_range(tmp_path, capsys):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(_job({"num_workers": [1, 2]})))
    assert main(["plan", str(job)]) == 0
    assert "1-2 workers (elastic" in capsys.readouterr().out
    assert main(["plan", str(job), "scaling.num_workers=[2, 1]"]) == 2
    assert "scaling.num_workers: the range's min must be <= its max" in capsys.readouterr().err


def test_digests_are_order_independent_and_add_over_disjoint_sets():
    indices = list(range(4000))
    random.Random(0).shuffle(indices)
    whole = index_digest(range(4000))
    assert index_digest(indices) == whole
    assert combine_digests([index_digest(indices[:1234]), index_digest(indices[1234:])]) == whole
    # An overlap or a gap changes the digest even when the counts add up.
    assert (
        combine_digests([index_digest(indices[:2001]), index_digest(indices[2000:3999])]) != whole
    )
    assert index_digest([]) == 0 and 0 < index_digest([0]) < 2**64


def test_audit_counts_fresh_rows_and_leaves_out_bad_ones():
    audit = ShardAudit()
    audit.add(torch.tensor([5, 6, 7]), torch.tensor([0, 1, 0]))
    audit.add(np.array([9]))
    facts = audit.facts(rank=1, node_id="abc")
    assert facts == {
        "rank": 1,
        "node_id": "abc",
        "fresh_images": 3,
        "index_digest": f"{index_digest([5, 7, 9]):016x}",
    }
    assert combine_digests([facts["index_digest"]]) == index_digest([9, 7, 5])
