"""Real searches through Ray Tune on the bundled fixture, in one shared local Ray instance.

The curriculum search (2 stages x 2 candidates) must run its trials concurrently, continue
stage 1 from stage 0's best checkpoint and write a curriculum file that a job then runs; the
LR-scaling search (2 batch sizes x 2 multipliers, ASHA) runs next in the same Ray session,
which it can only do if the first search left no placement group behind.

Both searches assert nothing that depends on the data, so their trials train on the fixture's
first 1,024 training and 256 test images. The curriculum search's trials must overlap in time:
a trial's first epoch includes its workers' warm-up (tens of seconds here, against a few
seconds between the two trials' start-ups), which gives them room to.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from helpers import (
    FIXTURE_TEST,
    FIXTURE_TRAIN,
    REPO_ROOT,
    SEARCHES_DIR,
    read_metrics,
)

from rayaccel.cli import main
from rayaccel.config import load_job, resolve_data_facts
from rayaccel.train.runner import build_run

pytestmark = pytest.mark.ray


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)


def _search_file(
    tmp_path: Path,
    file_name: str,
    data: tuple[Path, Path] = (FIXTURE_TRAIN, FIXTURE_TEST),
    **changes,
) -> Path:
    search = yaml.safe_load((SEARCHES_DIR / file_name).read_text())
    search.update(storage_path=str(tmp_path / "searches"), **changes)
    search["job_overrides"] = {
        **search.get("job_overrides", {}),
        "data.train": str(data[0]),
        "data.val": str(data[1]),
    }
    path = tmp_path / file_name
    path.write_text(yaml.safe_dump(search))
    return path


def _held_placement_groups() -> list[str]:
    import ray

    return [k for k, v in ray.util.placement_group_table().items() if v["state"] == "CREATED"]


def _overlap(intervals: list[tuple[float, float]]) -> bool:
    (a_start, a_end), (b_start, b_end) = sorted(intervals)[:2]
    return b_start < a_end


def test_curriculum_then_lr_scaling_search_in_one_session(
    ray_session, small_fixture, tmp_path, capsys
):
    # ---- curriculum search: 2 stages x {14, 28} px
    search = _search_file(
        tmp_path, "quickstart-curriculum.yaml", small_fixture, name="cur", candidates_px=[14, 28]
    )
    assert main(["tune", str(search)]) == 0
    out = capsys.readouterr().out
    assert "proxy_val_acc" in out and "search cost:" in out

    folder = tmp_path / "searches" / "cur"
    results = yaml.safe_load((folder / "results.yaml").read_text())
    trials = results["trials"]
    assert [(t["stage"], t["resolution_px"]) for t in trials] == [
        (0, 14),
        (0, 28),
        (1, 14),
        (1, 28),
    ]
    assert all(0 < t["score"] <= 1 for t in trials)
    chosen = [t["resolution_px"] for t in trials if t["chosen"]]
    assert results["curriculum_px"] == chosen and len(chosen) == 2
    assert results["curriculum_compute_vs_baseline"] <= results["beta"] * 1.1
    assert results["search_cost_epochs"] == pytest.approx(sum(t["cost_epochs"] for t in trials))

    # Trials of a stage ran at the same time: their Ray Train runs' epochs overlap in time.
    for stage in (0, 1):
        spans = []
        for px in (14, 28):
            rows = read_metrics(folder / "trials" / f"s{stage}-{px}px")
            spans.append(
                (rows[0]["time_unix_s"] - rows[0]["epoch_time_s"], rows[-1]["time_unix_s"])
            )
        assert _overlap(spans), spans

    # Stage 1 continued from stage 0's best checkpoint: it trained only stage 1's epochs.
    for px in (14, 28):
        rows = read_metrics(folder / "trials" / f"s1-{px}px")
        assert [r["stage"] for r in rows] == [1]
        assert rows[0]["epoch"] == 1  # stage 0 took epoch 0
        assert rows[0]["resolution_px"] == px

    found = yaml.safe_load((folder / "curriculum.yaml").read_text())["curriculum"]
    assert [s["resolution_px"] for s in found["stages"]] == chosen

    # ---- the job takes the curriculum the search found (running a curriculum job is
    # tested in test_e2e_curriculum.py; the plan is what `--curriculum` changes)
    job = load_job(
        "jobs/quickstart-etpp.yaml",
        [f"data.train={FIXTURE_TRAIN}", f"data.val={FIXTURE_TEST}", "train.epochs=3"],
        curriculum_file=str(folder / "curriculum.yaml"),
    )
    plan, _ = build_run(resolve_data_facts(job, source="test", plan_only=True).job)
    assert [s.resolution_px for s in plan.stages for _ in range(s.num_epochs)] == chosen
    capsys.readouterr()
    assert _held_placement_groups() == []

    # ---- a second search in the same Ray session: LR scaling, 2 batch sizes x 2 multipliers
    search = _search_file(
        tmp_path,
        "quickstart-lr-scaling.yaml",
        data=small_fixture,
        name="lr",
        batch_sizes=[64, 128],
        lr_multipliers=[0.5, 2],
    )
    assert main(["tune", str(search)]) == 0
    out = capsys.readouterr().out
    assert "fitted: lr = " in out
    folder = tmp_path / "searches" / "lr"
    results = yaml.safe_load((folder / "results.yaml").read_text())
    assert len(results["trials"]) == 4
    # Per batch size ASHA lets the first trial at a rung go on: one trial of each trained both
    # epochs; the other trained 1 (stopped) or 2.
    for batch in (64, 128):
        epochs = sorted(
            t["epochs"] for t in results["trials"] if t["train.global_batch_size"] == batch
        )
        assert epochs[-1] == 2 and epochs[0] in (1, 2)
    best = {int(b): lr for b, lr in results["best_lr_per_batch"].items()}
    assert set(best) == {64, 128}
    alpha = results["rule"]["alpha"]
    assert alpha == pytest.approx(math.log(best[128] / best[64]) / math.log(2))
    rule_file = yaml.safe_load((folder / "lr_rule.yaml").read_text())
    assert set(rule_file["curriculum"]) == {"lr_alpha", "lr_max"}
    assert _held_placement_groups() == []
