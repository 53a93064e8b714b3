"""The one schema-error formatter: paths without union tags, allowed keys from the schema."""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import FIXTURE, write_subset
from test_config import BASE_JOB

from rayaccel.cli import EXIT_BAD_INPUT, main
from rayaccel.config import ConfigError, parse_job
from rayaccel.data.metadata import ShardInfo, read_meta, write_meta
from rayaccel.data.shard_check import shard_problems
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


# ---------------------------------------------------------------- bad input at the console
# Bad input through the command line as a user runs it: exit status 2, one line naming the file
# and the field (or line, or shard), and no traceback. The schema's value checks are the table
# of test_config.py (`BAD_JOBS`, also run through `rayaccel validate`); these are the kinds
# found elsewhere: YAML, duplicate keys, data folders, models and their kwargs.
# `{job}` stands for the job file's path, `{data}` for the damaged split's folder.


def _console(capfd, argv: list[str]) -> tuple[int, str]:
    code = main(argv)
    out, err = capfd.readouterr()
    return code, out + err


def _job_file(tmp_path: Path, text: str | None = None) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(BASE_JOB, sort_keys=False) if text is None else text)
    return path


_BASE_TEXT = yaml.safe_dump(BASE_JOB, sort_keys=False)
_LINE = {line: number for number, line in enumerate(_BASE_TEXT.splitlines(), 1)}
_TIMM = "model={name: %s, kwargs: {not_a_kwarg: 3}}"

# (kind, job file text or None for BASE_JOB, overrides, expected line (a prefix of it))
BAD_JOB_INPUT = [
    ("yaml-syntax", "data: [unclosed\n", [], "{job}:2:1: invalid YAML: "),
    ("not-a-mapping", "- data\n- model\n", [], "{job}: the job must be a mapping of sections"),
    (
        "duplicate-section",
        _BASE_TEXT + "model:\n  name: resnet18\n",
        [],
        f"{{job}}:{_BASE_TEXT.count(chr(10)) + 1}: duplicate key model (first at line "
        f"{_LINE['model:']}); write each key once",
    ),
    (
        "duplicate-nested-key",
        _BASE_TEXT.replace("  epochs: 8\n", "  epochs: 8\n  epochs: 3\n"),
        [],
        f"{{job}}:{_LINE['  epochs: 8'] + 1}: duplicate key train.epochs (first at line "
        f"{_LINE['  epochs: 8']})",
    ),
    (
        "duplicate-key-in-flow-mapping",
        _BASE_TEXT.replace("  precision: fp32\n", "  lr_scaling: {rule: sqrt, rule: linear}\n"),
        [],
        f"{{job}}:{_LINE['  precision: fp32']}: duplicate key train.lr_scaling.rule (first at "
        f"line {_LINE['  precision: fp32']})",
    ),
    (
        "duplicate-key-in-override",
        None,
        ["model={name: resnet9, name: resnet18}"],
        "override 'model={name: resnet9, name: resnet18}': duplicate key name",
    ),
    (
        "weight-decay",
        None,
        ["train.optimizer.weight_decay=-1"],
        "{job}: train.optimizer.weight_decay: must be >= 0, got -1",
    ),
    (
        "resources-negative",
        None,
        ["scaling.resources_per_worker={CPU: -1}"],
        "{job}: scaling.resources_per_worker: amounts must be >= 0",
    ),
    (
        "data-source",
        None,
        ["data.source=csv"],
        "{job}: data.source: must be 'parquet' or 'imagefolder', got 'csv'",
    ),
    ("data-mode", None, ["data.mode=gpu"], "{job}: data.mode: must be 'ray' or 'device'"),
    ("channels", None, ["data.channels=2"], "{job}: data.channels: must be 1 or 3, got 2"),
    (
        "mean-per-channel",
        None,
        ["data.mean=[0.5,0.5,0.5]"],
        "{job}: data.mean: needs one value per channel (1), got 3",
    ),
    ("image-size", None, ["data.image_size_px=3"], "{job}: data.image_size_px: must be >= 8"),
    (
        "decode-batch-rows",
        None,
        ["data.decode_batch_rows=0"],
        "{job}: data.decode_batch_rows: must be >= 1, got 0",
    ),
    (
        "unknown-card",
        None,
        ["data.card=imagenet-2k"],
        "{job}: data.card: must be 'imagenet-1k', 'cifar10', 'cifar100' or 'fashion-mnist'",
    ),
    (
        "train-folder-missing",
        None,
        ["data.train=/nonexistent/rayaccel/train"],
        "{job}: data.train: /nonexistent/rayaccel/train/metadata.json not found",
    ),
    (
        "val-folder-missing",
        None,
        ["data.val=/nonexistent/rayaccel/val"],
        "{job}: data.val: /nonexistent/rayaccel/val/metadata.json not found",
    ),
    (
        "resnet9-unknown-field",
        None,
        ["model.depth=3"],
        "{job}: model.depth: unknown key; allowed: name, width_multiplier, activation",
    ),
    (
        "resnet9-activation",
        None,
        ["model.activation=gelu"],
        "{job}: model.activation: must be 'relu' or 'celu', got 'gelu'",
    ),
    (
        "resnet9-width",
        None,
        ["model.width_multiplier=0"],
        "{job}: model.width_multiplier: must be > 0, got 0",
    ),
    (
        "timm-model-name",
        None,
        ["model={name: resnet5o}"],
        "{job}: model.name: unknown model 'resnet5o'; resnet9 or a timm model, e.g. ",
    ),
    (
        "timm-resnet-kwarg",
        None,
        [_TIMM % "resnet50"],
        "{job}: model.kwargs.not_a_kwarg: resnet50 (ResNet) does not accept it; accepted: block,",
    ),
    (
        "timm-vit-kwarg",
        None,
        [_TIMM % "vit_tiny_patch16_224"],
        "{job}: model.kwargs.not_a_kwarg: vit_tiny_patch16_224 (VisionTransformer) does not "
        "accept it; accepted: img_size, patch_size,",
    ),
    (
        "timm-convnext-kwarg",
        None,
        [_TIMM % "convnext_atto"],
        "{job}: model.kwargs.not_a_kwarg: convnext_atto (ConvNeXt) does not accept it; accepted: ",
    ),
    (
        "timm-kwarg-value",
        None,
        ["model={name: vit_tiny_patch16_224, kwargs: {num_heads: 7}}"],
        "{job}: model.kwargs: vit_tiny_patch16_224 cannot be built with these kwargs "
        "(AssertionError: dim should be divisible by num_heads)",
    ),
    (
        "model-input-size",
        None,
        ["model={name: vit_tiny_patch16_224}"],
        "{job}: data.image_size_px: vit_tiny_patch16_224 cannot take 28x28 px images "
        "(AssertionError: Input height (28) doesn't match model (224).); set model.kwargs",
    ),
    (
        "image-smaller-than-model-reach",
        None,
        ["model={name: convnext_atto}"],
        "{job}: data.image_size_px: convnext_atto cannot take 28x28 px images (RuntimeError: ",
    ),
    (
        "curriculum-stage-smaller-than-model-reach",
        None,
        [
            "model={name: convnext_atto}",
            "data.image_size_px=64",
            "curriculum={preset: progressive, size_px: [16, 64], num_stages: 2}",
        ],
        "{job}: curriculum: the 16 px stage: convnext_atto cannot take 16x16 px images",
    ),
    ("keep-checkpoints", None, ["run.keep_checkpoints=0"], "{job}: run.keep_checkpoints: "),
]


@pytest.mark.parametrize(
    ("text", "overrides", "expected"),
    [case[1:] for case in BAD_JOB_INPUT],
    ids=[case[0] for case in BAD_JOB_INPUT],
)
def test_bad_job_input_is_one_line_naming_the_field(capfd, tmp_path, text, overrides, expected):
    job = _job_file(tmp_path, text)
    code, console = _console(capfd, ["validate", str(job), *overrides])
    assert code == EXIT_BAD_INPUT, console
    assert "Traceback" not in console
    expected = expected.replace("{job}", str(job))
    assert any(line.startswith(expected) for line in console.splitlines()), console


def test_bad_job_input_is_refused_by_run_before_ray_starts(capfd, tmp_path):
    job = _job_file(tmp_path)
    code, console = _console(capfd, ["run", str(job), _TIMM % "resnet50"])
    assert code == EXIT_BAD_INPUT
    assert console.startswith(f"{job}: model.kwargs.not_a_kwarg: "), console
    assert "[rayaccel] run folder" not in console


def test_duplicate_keys_in_search_and_curriculum_files_name_file_line_and_key(capfd, tmp_path):
    search = tmp_path / "search.yaml"
    search.write_text("kind: lr_scaling\njob: j.yaml\nname: s\nname: t\n")
    code, console = _console(capfd, ["tune", str(search)])
    assert code == EXIT_BAD_INPUT
    assert (
        console.strip() == f"{search}:4: duplicate key name (first at line 3); write each key once"
    )
    curriculum = tmp_path / "curriculum.yaml"
    curriculum.write_text("curriculum:\n  preset: et++\n  budget_epochs: 4\n  preset: custom\n")
    code, console = _console(
        capfd, ["validate", str(_job_file(tmp_path)), "--curriculum", str(curriculum)]
    )
    assert code == EXIT_BAD_INPUT
    assert console.strip() == (
        f"{curriculum}:4: duplicate key curriculum.preset (first at line 2); write each key once"
    )
    assert "Traceback" not in console


# ---------------------------------------------------------------- bad data at validation
# A split of 64 fixture rows in one shard, damaged one way per kind; `rayaccel validate` reads
# only metadata.json and the shards' footers.
_ROWS = 64


def _truncate(split: Path) -> None:
    shard = split / "part-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:-100])


def _rewrite(split: Path, change) -> None:
    shard = split / "part-00000.parquet"
    pq.write_table(change(pq.read_table(shard)), shard)


def _empty(split: Path) -> None:
    meta = read_meta(split)
    empty = dataclasses.replace(meta, count=0, class_counts=(0,) * meta.num_classes, shards=())
    write_meta(empty, split)


def _label_as_text(table: pa.Table) -> pa.Table:
    labels = pa.array([str(x) for x in table.column("label").to_pylist()])
    return table.set_column(table.schema.get_field_index("label"), "label", labels)


SHARD = "{data}/part-00000.parquet"
BAD_DATA = [
    (
        "truncated-shard",
        _truncate,
        SHARD + ": not a readable parquet file (Parquet magic bytes not found in footer",
    ),
    (
        "missing-shard",
        lambda split: (split / "part-00000.parquet").unlink(),
        SHARD + f": missing; metadata.json lists it for rows 0..{_ROWS - 1}",
    ),
    (
        "missing-column",
        lambda split: _rewrite(split, lambda table: table.drop_columns(["label"])),
        SHARD + ": has no 'label' column; shards need image (binary), label (integer), index",
    ),
    (
        "mistyped-column",
        lambda split: _rewrite(split, _label_as_text),
        SHARD + ": column 'label' is string, expected integer",
    ),
    (
        "metadata-count-mismatch",
        lambda split: _rewrite(split, lambda table: table.slice(0, _ROWS - 4)),
        SHARD + f": holds {_ROWS - 4} rows but metadata.json says {_ROWS}",
    ),
    (
        "empty-split",
        _empty,
        "{data}: the split has no rows (metadata.json count 0)",
    ),
    (
        "metadata-not-json",
        lambda split: (split / "metadata.json").write_text("{not json"),
        "{data} is not a prepared dataset folder ({data}/metadata.json: not valid JSON",
    ),
]


@pytest.mark.parametrize(
    ("damage", "expected"), [case[1:] for case in BAD_DATA], ids=[case[0] for case in BAD_DATA]
)
def test_bad_data_is_found_at_validation_naming_the_shard(capfd, tmp_path, damage, expected):
    split = write_subset(FIXTURE / "train", tmp_path / "train", _ROWS)
    damage(split)
    job = _job_file(tmp_path)
    code, console = _console(capfd, ["validate", str(job), f"data.train={split}"])
    assert code == EXIT_BAD_INPUT, console
    assert "Traceback" not in console
    line = f"{job}: data.train: " + expected.replace("{data}", str(split))
    assert any(x.startswith(line) for x in console.splitlines()), console


def test_shard_footers_of_a_thousand_shards_are_checked_in_seconds(tmp_path):
    table = pa.table({"image": [b"x"] * 2, "label": [0, 1], "index": [0, 1]})
    shards = []
    for number in range(1000):
        pq.write_table(table, tmp_path / f"part-{number:05d}.parquet")
        shards.append(ShardInfo(f"part-{number:05d}.parquet", 2 * number, 2))
    meta = dataclasses.replace(
        read_meta(FIXTURE / "train"),
        count=2000,
        class_counts=(1000, 1000) + (0,) * 8,
        shards=tuple(shards),
    )
    started_s = time.perf_counter()
    assert shard_problems(str(tmp_path), meta) == []
    assert time.perf_counter() - started_s < 3.0
    for number in range(0, 1000, 50):
        (tmp_path / f"part-{number:05d}.parquet").unlink()
    problems = shard_problems(f"file://{tmp_path}", meta)
    assert len(problems) == 11 and problems[-1] == f"file://{tmp_path}: ... and 10 more bad shards"


def test_a_search_refuses_a_bad_model_before_tune_starts(capfd, tmp_path):
    job = _job_file(tmp_path)
    search = tmp_path / "search.yaml"
    search.write_text(
        f"kind: fields\njob: {job}\nname: s\nstorage_path: {tmp_path}\n"
        "job_overrides: {model: {name: resnet18, kwargs: {not_a_kwarg: 3}}}\n"
        "space: {train.label_smoothing: {choice: [0.0, 0.1]}}\nnum_samples: 2\nepochs: 1\n"
        "trial: {num_workers: 1, cpus_per_worker: 0.25, preprocess_cpus: 0.25}\n"
    )
    code, console = _console(capfd, ["tune", str(search)])
    assert code == EXIT_BAD_INPUT, console
    assert console.startswith(f"{job}: model.kwargs.not_a_kwarg: resnet18 (ResNet) does not "), (
        console
    )
    assert "Traceback" not in console
