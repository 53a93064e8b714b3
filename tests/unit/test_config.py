"""Tests for rayaccel.config: every kind of bad job gives one readable line naming its YAML path.

The expected lines are written out in full on purpose: they are the user interface of a bad job.
"""

import copy
import json
from pathlib import Path

import pytest
import yaml
from helpers import FIXTURE

from rayaccel.cli import EXIT_BAD_INPUT, main
from rayaccel.config import (
    AugmentConfig,
    ConfigError,
    JobConfig,
    TrainConfig,
    apply_overrides,
    dump_job,
    load_job,
    parse_job,
    resolve_data,
    resolve_data_facts,
)
from rayaccel.data.cards import CARDS

FIXTURE_META = json.loads((FIXTURE / "train" / "metadata.json").read_text())

# The structure of jobs/quickstart.yaml, with absolute data paths so tests run from any folder.
BASE_JOB = {
    "data": {
        "source": "parquet",
        "train": str(FIXTURE / "train"),
        "val": str(FIXTURE / "test"),
        "augment": {"random_crop_padding_px": 2, "horizontal_flip": True},
    },
    "model": {"name": "resnet9", "width_multiplier": 0.25},
    "train": {
        "epochs": 8,
        "global_batch_size": 128,
        "optimizer": {"name": "sgd", "lr": 0.2, "momentum": 0.9, "nesterov": True},
        "schedule": {"name": "cosine", "warmup_epochs": 1},
        "label_smoothing": 0.1,
        "precision": "fp32",
        "seed": 0,
    },
    "scaling": {
        "num_workers": 2,
        "use_gpu": False,
        "resources_per_worker": {"CPU": 0.5},
        "preprocess_cpus": 0.5,
    },
    "run": {"name": "test-job", "storage_path": "runs", "keep_checkpoints": 2},
}

DELETE = object()

# The "allowed:" hint lists a section's fields in schema order; taken from the schema so the
# expected lines stay exact while sections gain fields.
TOP_KEYS = ", ".join(JobConfig.model_fields)
TRAIN_KEYS = ", ".join(TrainConfig.model_fields)
AUGMENT_KEYS = ", ".join(AugmentConfig.model_fields)


def _job_with(changes: dict) -> dict:
    """BASE_JOB with `{"dotted.path": value}` changes applied; DELETE removes the key."""
    raw = copy.deepcopy(BASE_JOB)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = raw
        for part in parents:
            node = node[part]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return raw


def _write(tmp_path: Path, raw: dict, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _problems(path: Path, overrides=(), *, check_paths: bool = False) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_job(path, list(overrides), check_paths=check_paths)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


BAD_JOBS = {
    "unknown top-level key": (
        {"optimizer": {"lr": 0.1}},
        f"optimizer: unknown key; allowed: {TOP_KEYS}",
    ),
    "unknown key in a section": (
        {"train.epoch": 3},
        f"train.epoch: unknown key; allowed: {TRAIN_KEYS}",
    ),
    "unknown key in a nested section": (
        {"data.augment.rotate_deg": 15},
        f"data.augment.rotate_deg: unknown key; allowed: {AUGMENT_KEYS}",
    ),
    "missing key": ({"train.optimizer.lr": DELETE}, "train.optimizer.lr: required, but missing"),
    "missing section": ({"run": DELETE}, "run: required, but missing"),
    "string for int": ({"train.epochs": "three"}, "train.epochs: must be an integer, got 'three'"),
    "fraction for int": ({"train.epochs": 2.5}, "train.epochs: must be an integer, got 2.5"),
    "string for number": (
        {"train.optimizer.lr": "fast"},
        "train.optimizer.lr: must be a number, got 'fast'",
    ),
    "string for bool": (
        {"scaling.use_gpu": "maybe"},
        "scaling.use_gpu: must be true or false, got 'maybe'",
    ),
    "mapping for list": (
        {"data.mean": {"grey": 0.5}},
        "data.mean: must be a list, got {'grey': 0.5}",
    ),
    "string for section": ({"model": "resnet9"}, "model: must be a mapping of keys, got 'resnet9'"),
    "negative lr": ({"train.optimizer.lr": -1}, "train.optimizer.lr: must be > 0, got -1"),
    "zero epochs": ({"train.epochs": 0}, "train.epochs: must be > 0, got 0"),
    "label_smoothing 1": (
        {"train.label_smoothing": 1},
        "train.label_smoothing: must be < 1, got 1",
    ),
    "negative label_smoothing": (
        {"train.label_smoothing": -0.1},
        "train.label_smoothing: must be >= 0, got -0.1",
    ),
    "momentum 1": ({"train.optimizer.momentum": 1}, "train.optimizer.momentum: must be < 1, got 1"),
    "zero workers": ({"scaling.num_workers": 0}, "scaling.num_workers: must be >= 1, got 0"),
    "negative std": ({"data.std": [-1]}, "data.std: every std must be > 0, got [-1.0]"),
    "bad precision": (
        {"train.precision": "fp8"},
        "train.precision: must be 'fp32', 'bf16' or 'fp16', got 'fp8'",
    ),
    "bad on_bad_row": (
        {"data.on_bad_row": "ignore"},
        "data.on_bad_row: must be 'fail' or 'skip', got 'ignore'",
    ),
    "bad optimizer name": (
        {"train.optimizer.name": "adam"},
        "train.optimizer.name: must be 'sgd', 'adamw', 'lars' or 'lamb', got 'adam'",
    ),
    "bad run name": (
        {"run.name": "my run/1"},
        "run.name: must use only letters, digits, '.', '_' and '-', got 'my run/1'",
    ),
    "reserved timm kwargs": (
        {"model": {"name": "resnet18", "kwargs": {"num_classes": 3, "drop_rate": 0.1}}},
        "model.kwargs: ['num_classes'] are set by rayaccel (num_classes and in_chans come from "
        "data; for timm's weights set model.pretrained: true); remove them",
    ),
    "piecewise points not increasing": (
        {"train.schedule": {"name": "piecewise", "points": [[0, 0], [5, 1], [3, 0]]}},
        "train.schedule.points: epochs must be strictly increasing, got [0.0, 5.0, 3.0]",
    ),
    "piecewise points with a repeated epoch": (
        {"train.schedule": {"name": "piecewise", "points": [[0, 0], [4, 1], [4, 0.5], [8, 0]]}},
        "train.schedule.points: epochs must be strictly increasing, got [0.0, 4.0, 4.0, 8.0]",
    ),
    "piecewise multiplier above 1": (
        {"train.schedule": {"name": "piecewise", "points": [[0, 0], [4, 2], [8, 0]]}},
        "train.schedule.points: multipliers must be in [0, 1] (they scale train.optimizer.lr), "
        "got [0.0, 2.0, 0.0]",
    ),
    "unknown schedule name": (
        {"train.schedule": {"name": "linear"}},
        "train.schedule.name: must be 'cosine' or 'piecewise', got 'linear'",
    ),
    "warmup as long as training": (
        {"train.schedule.warmup_epochs": 8},
        "train.schedule.warmup_epochs: must be < train.epochs=8, got 8",
    ),
    "piecewise points a mapping": (
        {"train.schedule": {"name": "piecewise", "points": {"0": 1}}},
        "train.schedule.points: must be a list, got {'0': 1}",
    ),
    "global batch below worker count": (
        {"train.global_batch_size": 1},
        "train.global_batch_size: must be >= scaling.num_workers=2, got 1",
    ),
    "global batch not a multiple of workers": (
        {"train.global_batch_size": 129},
        "train.global_batch_size: must be a multiple of scaling.num_workers=2, got 129 (try 128)",
    ),
    "warmup longer than training": (
        {"train.schedule.warmup_epochs": 9.5},
        "train.schedule.warmup_epochs: must be < train.epochs=8, got 9.5",
    ),
    "fp16 without GPU": (
        {"train.precision": "fp16"},
        "train.precision: fp16 needs scaling.use_gpu: true (use bf16 or fp32 on CPU)",
    ),
    "GPU worker without a GPU": (
        {"scaling.use_gpu": True, "scaling.resources_per_worker": {"CPU": 1, "GPU": 0}},
        "scaling.resources_per_worker.GPU: must be > 0 when use_gpu is true",
    ),
    "mean length differs from channels": (
        {"data.channels": 3, "data.mean": [0.5, 0.5, 0.5], "data.std": [0.25]},
        "data.std: needs one value per channel (3), got 1",
    ),
}


@pytest.mark.parametrize(("changes", "expected"), BAD_JOBS.values(), ids=BAD_JOBS.keys())
def test_bad_job_gives_one_readable_line(tmp_path, capfd, changes, expected):
    path = _write(tmp_path, _job_with(changes))
    assert _problems(path) == [f"{path}: {expected}"]
    # The console of `rayaccel validate` holds that line alone: no traceback, status 2.
    assert main(["validate", str(path)]) == EXIT_BAD_INPUT
    assert capfd.readouterr() == ("", f"{path}: {expected}\n")


def test_base_job_is_valid(tmp_path):
    job = load_job(_write(tmp_path, BASE_JOB), check_paths=False)
    assert job.train.epochs == 8
    assert job.model.name == "resnet9"


def test_several_problems_are_all_reported_one_line_each(tmp_path):
    path = _write(
        tmp_path,
        _job_with(
            {
                "train.optimizer.lr": -1,
                "train.precision": "fp8",
                "run.name": "a b",
                "colour": "red",
            }
        ),
    )
    assert _problems(path) == [
        f"{path}: train.optimizer.lr: must be > 0, got -1",
        f"{path}: train.precision: must be 'fp32', 'bf16' or 'fp16', got 'fp8'",
        f"{path}: run.name: must use only letters, digits, '.', '_' and '-', got 'a b'",
        f"{path}: colour: unknown key; allowed: {TOP_KEYS}",
    ]


def test_several_cross_field_problems_are_all_reported(tmp_path):
    changes = {"train.global_batch_size": 129, "train.precision": "fp16"}
    path = _write(tmp_path, _job_with(changes))
    assert _problems(path) == [
        f"{path}: train.global_batch_size: must be a multiple of scaling.num_workers=2, "
        "got 129 (try 128)",
        f"{path}: train.precision: fp16 needs scaling.use_gpu: true (use bf16 or fp32 on CPU)",
    ]


def test_empty_job_lists_every_missing_section(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n")
    assert _problems(path) == [
        f"{path}: {section}: required, but missing" for section in ("data", "model", "train", "run")
    ]


# ---------------------------------------------------------------- the file itself
def test_invalid_yaml_names_file_line_and_column(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("data:\n  train: [a\nmodel: {}\n")
    assert _problems(path) == [f"{path}:3:6: invalid YAML: expected ',' or ']', but got ':'"]


def test_missing_job_file(tmp_path):
    path = tmp_path / "no-such-job.yaml"
    assert _problems(path) == [f"{path}: no such job file"]


def test_job_must_be_a_mapping(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("- data\n- model\n")
    assert _problems(path) == [f"{path}: the job must be a mapping of sections, got list"]


def test_missing_data_folder_names_field_path_and_prepare(tmp_path):
    missing = tmp_path / "not-prepared" / "train"
    path = _write(tmp_path, _job_with({"data.train": str(missing)}))
    (line,) = _problems(path, check_paths=True)
    assert line == (
        f"{path}: data.train: {missing}/metadata.json not found; "
        "expected a split folder written by `rayaccel data prepare`"
    )


def test_missing_data_folder_is_not_checked_without_check_paths(tmp_path):
    missing = tmp_path / "elsewhere" / "train"
    path = _write(tmp_path, _job_with({"data.train": str(missing), "data.val": DELETE}))
    assert load_job(path, check_paths=False).data.train == str(missing)


# ---------------------------------------------------------------- overrides
def test_override_changes_a_value(tmp_path):
    job = load_job(_write(tmp_path, BASE_JOB), ["train.epochs=3"], check_paths=False)
    assert job.train.epochs == 3


def test_override_values_are_parsed_as_yaml():
    raw = apply_overrides(
        {"scaling": {"num_workers": 1}},
        ["scaling.num_workers=2", "scaling.use_gpu=true", "data.mean=[0.5, 0.25]"],
    )
    assert raw == {"scaling": {"num_workers": 2, "use_gpu": True}, "data": {"mean": [0.5, 0.25]}}
    assert type(raw["scaling"]["num_workers"]) is int


def test_override_of_nested_section(tmp_path):
    job = load_job(
        _write(tmp_path, BASE_JOB),
        ["train.optimizer.name=adamw", "train.schedule.warmup_epochs=2"],
        check_paths=False,
    )
    assert job.train.optimizer.name == "adamw"
    assert job.train.schedule.warmup_epochs == 2


def test_malformed_overrides_are_all_reported(tmp_path):
    path = _write(tmp_path, BASE_JOB)
    assert _problems(path, ["trainepochs3", "=3", "train..epochs=3", "train.epochs.max=3"]) == [
        "override 'trainepochs3': expected section.key=value, e.g. train.epochs=3",
        "override '=3': expected section.key=value, e.g. train.epochs=3",
        "override 'train..epochs=3': expected section.key=value, e.g. train.epochs=3",
        "override 'train.epochs.max=3': epochs is not a section",
    ]


def test_top_level_overrides_set_or_drop_whole_sections(tmp_path):
    path = _write(tmp_path, {**BASE_JOB, "agvm": {"interval": 5}})
    assert load_job(path).agvm.interval == 5
    assert load_job(path, overrides=["agvm=null"]).agvm is None
    assert load_job(path, overrides=["agvm={start_step: 3}"]).agvm.start_step == 3
    problems = _problems(path, ["epochs=3"])
    assert len(problems) == 1 and problems[0].startswith(f"{path}: epochs: unknown key")


def test_override_creating_a_key_is_an_unknown_key(tmp_path):
    path = _write(tmp_path, BASE_JOB)
    assert _problems(path, ["train.epoch=3"]) == [
        f"{path}: train.epoch: unknown key; allowed: {TRAIN_KEYS}"
    ]
    assert _problems(path, ["optimiser.lr=0.1"]) == [
        f"{path}: optimiser: unknown key; allowed: {TOP_KEYS}"
    ]


def test_override_with_a_bad_value_names_the_field(tmp_path):
    path = _write(tmp_path, BASE_JOB)
    assert _problems(path, ["train.optimizer.lr=-0.5"]) == [
        f"{path}: train.optimizer.lr: must be > 0, got -0.5"
    ]


# ---------------------------------------------------------------- data resolution
def test_resolve_data_fills_fields_from_metadata(tmp_path):
    job = load_job(_write(tmp_path, BASE_JOB), check_paths=False)
    assert job.data.image_size_px is None and job.data.mean is None

    data = resolve_data(job).data
    assert data.image_size_px == FIXTURE_META["image_size"][0] == 28
    assert data.channels == FIXTURE_META["channels"] == 1
    assert data.num_classes == FIXTURE_META["num_classes"] == 10
    assert data.mean == FIXTURE_META["mean"]
    assert data.std == FIXTURE_META["std"]
    assert load_job(_write(tmp_path, BASE_JOB), check_paths=True).data == data


def test_resolve_data_keeps_values_the_job_set(tmp_path):
    changes = {"data.image_size_px": 32, "data.num_classes": 12, "data.mean": [0.5]}
    job = load_job(_write(tmp_path, _job_with(changes)), check_paths=True)
    assert job.data.image_size_px == 32
    assert job.data.num_classes == 12
    assert job.data.mean == [0.5]
    assert job.data.std == FIXTURE_META["std"]
    assert job.data.channels == 1


def test_resolve_data_rejects_fewer_classes_than_the_val_split(tmp_path):
    path = _write(tmp_path, _job_with({"data.num_classes": 5}))
    assert _problems(path, check_paths=True) == [
        f"{path}: data.val: has 10 classes but training uses 5"
    ]


# ---------------------------------------------------------------- planning without the data
ABSENT = {"data.train": "/nonexistent/train", "data.val": "/nonexistent/val"}
STATED_FACTS = {
    "train_images": 2_000,
    "num_classes": 5,
    "channels": 3,
    "image_size_px": 64,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
}


def _resolved(changes: dict, *, plan_only: bool = True):
    return resolve_data_facts(parse_job(_job_with(changes)), source="j.yaml", plan_only=plan_only)


def test_an_absent_data_set_is_planned_from_its_card():
    resolved = _resolved({**ABSENT, "data.card": "cifar100"})
    data, card = resolved.job.data, CARDS["cifar100"]
    assert resolved.train_images == card.train_images == 50_000
    assert (data.image_size_px, data.channels, data.num_classes) == (32, 3, 100)
    assert (data.mean, data.std, data.task) == (card.mean, card.std, "classification")
    assert resolved.assumed == (
        "assumed (data not found at /nonexistent/train, /nonexistent/val): 50,000 training "
        "images, 10,000 validation images, 32 px images, 100 classes, 3 channels, mean "
        "[0.5071, 0.4865, 0.4409], std [0.2673, 0.2564, 0.2762], from card cifar100"
    )
    assert resolved.contradictions == ()


def test_the_jobs_own_data_fields_win_over_stated_facts():
    changes = {**ABSENT, "data.facts": STATED_FACTS, "data.image_size_px": 48}
    resolved = _resolved({**changes, "data.num_classes": 7})
    assert (resolved.job.data.image_size_px, resolved.job.data.num_classes) == (48, 7)
    # Only what came from the facts is listed as assumed.
    assert resolved.assumed == (
        "assumed (data not found at /nonexistent/train, /nonexistent/val): 2,000 training "
        "images, 3 channels, mean [0.5, 0.5, 0.5], std [0.25, 0.25, 0.25], from data.facts"
    )


def test_a_card_without_one_image_size_needs_data_image_size_px():
    with pytest.raises(ConfigError) as caught:
        _resolved({**ABSENT, "data.card": "imagenet-1k"})
    assert caught.value.problems == [
        "j.yaml: data.image_size_px: card imagenet-1k states no one image size (its images "
        "differ in size); set data.image_size_px"
    ]
    assert _resolved({**ABSENT, "data.card": "imagenet-1k", "data.image_size_px": 224})


def test_existing_data_wins_over_contradicting_facts_and_says_so():
    resolved = _resolved({"data.card": "fashion-mnist"})
    assert resolved.assumed is None
    assert resolved.train_images == FIXTURE_META["count"] == 4_000
    assert resolved.job.data.mean == FIXTURE_META["mean"]
    assert resolved.contradictions == (
        "data.card: fashion-mnist's facts differ from the data, whose metadata is used: "
        f"60,000 training images ({FIXTURE / 'train'} holds 4,000); "
        f"10,000 validation images ({FIXTURE / 'test'} holds 1,000)",
    )
    facts = {**STATED_FACTS, "train_images": 4_000, "channels": 1, "mean": [0.9], "std": [0.35]}
    (line,) = _resolved({"data.facts": facts}).contradictions
    assert line == (
        "data.facts: the stated facts differ from the data, whose metadata is used: 5 classes "
        f"({FIXTURE / 'train'} holds 10); 64 px images ({FIXTURE / 'train'} holds 28x28); "
        f"mean [0.9] ({FIXTURE / 'train'} holds [0.2888])"
    )


def test_a_present_training_split_wins_while_an_absent_val_split_is_assumed():
    resolved = _resolved({"data.val": "/nonexistent/val", "data.card": "fashion-mnist"})
    assert resolved.train_images == 4_000  # the fixture's, not the card's
    assert resolved.assumed == (
        "assumed (data not found at /nonexistent/val): 10,000 validation images, "
        "from card fashion-mnist"
    )
    (line,) = resolved.contradictions
    assert "60,000 training images" in line and "validation" not in line


def test_facts_that_agree_with_the_data_raise_no_warning():
    facts = {
        "train_images": 4_000,
        "val_images": 1_000,
        "num_classes": 10,
        "channels": 1,
        "image_size_px": 28,
        "mean": [0.2888],  # within 0.01 of the metadata's: rounding, not another data set
        "std": [0.35],
    }
    assert _resolved({"data.facts": facts}).contradictions == ()


def test_training_refuses_absent_data_even_with_a_card():
    with pytest.raises(ConfigError) as caught:
        _resolved({**ABSENT, "data.card": "fashion-mnist"}, plan_only=False)
    hint = (
        "expected a split folder written by `rayaccel data prepare`; training reads the data "
        "itself (card fashion-mnist stands in for it only in `rayaccel plan` and `rayaccel "
        "validate`)"
    )
    assert caught.value.problems == [
        f"j.yaml: data.train: /nonexistent/train/metadata.json not found; {hint}",
        f"j.yaml: data.val: /nonexistent/val/metadata.json not found; {hint}",
    ]


def test_absent_data_without_facts_says_how_to_plan_without_it():
    with pytest.raises(ConfigError) as caught:
        _resolved({**ABSENT, "data.val": None})
    assert caught.value.problems == [
        "j.yaml: data.train: /nonexistent/train/metadata.json not found; expected a split "
        "folder written by `rayaccel data prepare`; to plan without the data, set data.card "
        "(imagenet-1k, cifar10, cifar100, fashion-mnist) or data.facts (train_images, "
        "num_classes, channels, image_size_px, mean, std)"
    ]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"data.card": "imagenet"},
            "data.card: must be 'imagenet-1k', 'cifar10', 'cifar100' or 'fashion-mnist', "
            "got 'imagenet'",
        ),
        (
            {"data.card": "cifar10", "data.facts": STATED_FACTS},
            "data.facts: set data.card or data.facts, not both (the facts would replace card "
            "cifar10's)",
        ),
        (
            {"data.facts": {**STATED_FACTS, "mean": [0.5]}},
            "data.facts.mean: needs one value per channel (3), got 1",
        ),
        (
            {"data.facts": {**STATED_FACTS, "train_images": 0}},
            "data.facts.train_images: must be >= 1, got 0",
        ),
        (
            {"data.facts": {k: v for k, v in STATED_FACTS.items() if k != "num_classes"}},
            "data.facts.num_classes: required, but missing",
        ),
    ],
    ids=["unknown card", "card and facts", "facts per channel", "no images", "facts incomplete"],
)
def test_bad_cards_and_facts_name_the_field(tmp_path, changes, expected):
    path = _write(tmp_path, _job_with(changes))
    assert _problems(path) == [f"{path}: {expected}"]


# ---------------------------------------------------------------- dump
@pytest.mark.parametrize("resolved", [False, True], ids=["as-written", "resolved"])
def test_dump_job_reparses_to_an_equal_job(tmp_path, resolved):
    job = load_job(_write(tmp_path, BASE_JOB), check_paths=resolved)
    again = parse_job(yaml.safe_load(dump_job(job)))
    assert isinstance(again, JobConfig)
    assert again == job


def test_dump_job_round_trips_timm_and_piecewise(tmp_path):
    changes = {
        "model": {"name": "vit_tiny_patch16_224", "kwargs": {"img_size": 28, "patch_size": 4}},
        "train.schedule": {"name": "piecewise", "points": [[0, 0.1], [2, 1], [8, 0]]},
        "train.optimizer.name": "adamw",
    }
    job = load_job(_write(tmp_path, _job_with(changes)), check_paths=False)
    assert parse_job(yaml.safe_load(dump_job(job))) == job


def test_unknown_key_hints_list_the_core_keys():
    assert TOP_KEYS.startswith("data, model, train, scaling, run")
    assert TRAIN_KEYS.startswith("epochs, global_batch_size, optimizer, schedule")
    assert AUGMENT_KEYS.startswith("random_crop_padding_px, horizontal_flip")
