"""The one schema-error formatter: paths without union tags, allowed keys from the schema."""

from __future__ import annotations

import copy

import pytest
from test_config import BASE_JOB

from rayaccel.config import ConfigError, parse_job
from rayaccel.methods.agvm.config import AgvmSection
from rayaccel.methods.etpp.config import CurriculumStage, EtppCurriculum, ReplaySection
from rayaccel.methods.infobatch.config import InfoBatchSection
from rayaccel.methods.progressive.config import ProgressiveCurriculum
from rayaccel.methods.tricks.config import EmaTrick
from rayaccel.optim.registry import OPTIMIZER_NAMES
from rayaccel.tune.spec import load_search


def _problems(**sections) -> list[str]:
    job = copy.deepcopy(BASE_JOB)
    for dotted, value in sections.items():
        node = job
        *parents, last = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    with pytest.raises(ConfigError) as error:
        parse_job(job)
    return error.value.problems


@pytest.mark.parametrize(
    ("sections", "where", "model"),
    [
        ({"infobatch": {"ratio": 0.5}}, "infobatch.ratio", InfoBatchSection),
        ({"agvm": {"every": 3}}, "agvm.every", AgvmSection),
        ({"tricks": {"ema": {"decay": 0.9}}}, "tricks.ema.decay", EmaTrick),
        ({"curriculum": {"budget_epochs": 4, "stage": 1}}, "curriculum.stage", EtppCurriculum),
        (
            {"curriculum": {"budget_epochs": 4, "replay": {"size": 8}}},
            "curriculum.replay.size",
            ReplaySection,
        ),
        (
            {"curriculum": {"budget_epochs": 4, "stages": [{"resolution_px": 14, "px": 1}]}},
            "curriculum.stages.0.px",
            CurriculumStage,
        ),
        (
            {"curriculum": {"preset": "progressive", "size_px": [16, 28], "stages": 2}},
            "curriculum.stages",
            ProgressiveCurriculum,
        ),
    ],
)
def test_unknown_keys_of_method_sections_list_the_sections_own_fields(sections, where, model):
    problems = _problems(**sections)
    assert problems == [f"job: {where}: unknown key; allowed: {', '.join(model.model_fields)}"]


def test_unknown_key_of_train_lr_scaling_lists_its_fields():
    problems = _problems(train__lr_scaling={"rule": "sqrt", "base_batch": 64, "base": 1})
    assert problems[0].startswith("job: train.lr_scaling.base: unknown key; allowed: rule, ")


def test_unknown_preset_and_schedule_name_are_reported_at_their_key():
    assert _problems(curriculum={"preset": "fast"}) == [
        "job: curriculum.preset: must be 'et++', 'custom' or 'progressive', got 'fast'"
    ]
    schedule = {"name": "step", "warmup_epochs": 1}
    assert _problems(train__schedule=schedule) == [
        "job: train.schedule.name: must be 'cosine' or 'piecewise', got 'step'"
    ]


def test_optimizer_names_come_from_the_registry():
    problems = _problems(train__optimizer={"name": "adam", "lr": 0.1})
    expected = " or ".join(repr(name) for name in OPTIMIZER_NAMES[-2:])
    assert problems[0].startswith("job: train.optimizer.name: must be 'sgd'")
    assert expected in problems[0]


def test_progressive_size_problem_is_reported_once():
    curriculum = {"preset": "progressive", "size_px": [16, 32], "num_stages": 2}
    job = copy.deepcopy(BASE_JOB)
    job["data"]["image_size_px"] = 28
    job["curriculum"] = curriculum
    with pytest.raises(ConfigError) as error:
        parse_job(job)
    sized = [line for line in error.value.problems if "curriculum.size_px" in line]
    assert len(sized) == 1, error.value.problems


def test_search_files_use_the_same_formatter(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        "kind: lr_scaling\njob: j.yaml\nname: s\nbatch_sizes: [1, 2]\n"
        "lr_multipliers: [1]\nepochs: 1\ntrial: {cpus: 1}\n"
    )
    with pytest.raises(ConfigError) as error:
        load_search(path)
    assert error.value.problems == [
        f"{path}: trial.cpus: unknown key; allowed: num_workers, cpus_per_worker, "
        "gpus_per_worker, preprocess_cpus"
    ]


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        (
            {"data__augment": {"auto_augment": "rand-q9"}},
            "job: data.augment.auto_augment: 'rand-q9' is not an augmentation timm or "
            "torchvision reads (Unknown RandAugment config section)",
        ),
        (
            {"data__augment": {"random_resized_crop": {"scale": [0.5, 0.2]}}},
            "job: data.augment.random_resized_crop.scale: needs 0 < low <= high <= 1",
        ),
        (
            {"data__augment": {"random_resized_crop": {"ratio": [0, 1]}}},
            "job: data.augment.random_resized_crop.ratio: needs 0 < low <= high",
        ),
        (
            {"data__augment": {"random_resized_crop": {}, "random_crop_padding_px": 2}},
            "job: data.augment.random_resized_crop: replaces the padded random crop",
        ),
        (
            {"data__augment": {"random_resized_crop": {}}, "data__mode": "device"},
            "job: data.augment.random_resized_crop: needs data.mode: ray",
        ),
        (
            {
                "data__augment": {"auto_augment": "rand-m9-mstd0.5-inc1"},
                "curriculum": {"budget_epochs": 4},
            },
            "job: data.augment.auto_augment: the curriculum ramps its own RandAugment",
        ),
        ({"data__eval_crop_pct": 1.5}, "job: data.eval_crop_pct: "),
        ({"data__shuffle": "global"}, "job: data.shuffle: "),
    ],
)
def test_photo_pipeline_settings_are_checked_at_the_edge(sections, expected):
    problems = _problems(**sections)
    assert any(p.startswith(expected) for p in problems), problems
