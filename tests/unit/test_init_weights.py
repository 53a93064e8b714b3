"""Initial weights (`model.pretrained`, `model.init_checkpoint`), without Ray.

Weight files are written here from real models (timm's resnet18, rayaccel's ResNet-9) with
another class count, then loaded through the trainer's own model setup (`setup_model`), so
the checks cover the file formats, the prefixes, the head rule and the report line.
"""

import os
import subprocess
import sys

import pytest
import timm
import torch
import yaml
from helpers import FIXTURE_TRAIN, REPO_ROOT
from safetensors.torch import save_file

from rayaccel.cli import EXIT_BAD_INPUT, main
from rayaccel.methods.base import MethodHooks
from rayaccel.models import ResNet9
from rayaccel.models.weights import (
    InitialWeights,
    WeightsError,
    pretrained_problem,
    pretrained_state_dict,
    read_state_dict,
)
from rayaccel.train.checkpoint import TrainState, save_checkpoint
from rayaccel.train.loop import setup_model
from rayaccel.train.spec import ModelSpec

SOURCE_CLASSES = 5
TARGET_CLASSES = 10


@pytest.fixture(scope="module")
def source_resnet18() -> torch.nn.Module:
    """The model whose weights are saved: timm resnet18 for 5 classes, 3 channels."""
    torch.manual_seed(1)
    return timm.create_model("resnet18", num_classes=SOURCE_CLASSES)


def _model_spec(name: str = "resnet18", *, in_chans: int = 3, **kwargs) -> ModelSpec:
    return ModelSpec(
        name=name,
        kwargs=kwargs,
        num_classes=TARGET_CLASSES,
        in_chans=in_chans,
        task="classification",
        channels_last=False,
    )


def _built(spec: ModelSpec, location: str | None, capsys=None) -> tuple[torch.nn.Module, str]:
    """The trainer's model from `location` (seed 0), and rank 0's report line."""
    torch.manual_seed(0)
    weights = read_state_dict(location) if location is not None else None
    model = setup_model(spec, MethodHooks([]), weights, rank=0)
    out = capsys.readouterr().out if capsys is not None else ""
    return model, out


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_a_weight_file_loads_its_backbone_and_reinitialises_another_class_count(
    fmt, source_resnet18, tmp_path, capsys
):
    state = source_resnet18.state_dict()
    path = tmp_path / f"weights.{fmt}"
    if fmt == "safetensors":
        save_file(state, path)
    else:  # a training script's checkpoint: nested, DDP-prefixed, with more than tensors
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)

    model, out = _built(_model_spec(), str(path), capsys)
    fresh, _ = _built(_model_spec(), None)

    loaded = model.state_dict()
    backbone = [k for k in state if not k.startswith("fc.")]
    assert all(torch.equal(loaded[k], state[k]) for k in backbone)
    assert model.fc.out_features == TARGET_CLASSES
    # The head is the model's own seeded initialisation, not the file's.
    assert torch.equal(model.fc.weight, fresh.fc.weight)
    assert out.strip() == (
        f"[rayaccel] init weights: {len(backbone)}/{len(loaded)} tensors from {path}; "
        f"classifier fc re-initialised ({SOURCE_CLASSES} -> {TARGET_CLASSES} classes)"
    )


def test_the_same_class_count_keeps_the_files_head(source_resnet18, tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file(source_resnet18.state_dict(), path)
    spec = ModelSpec("resnet18", {}, SOURCE_CLASSES, 3, "classification", False)
    model = setup_model(spec, MethodHooks([]), read_state_dict(str(path)))
    assert torch.equal(model.fc.weight, source_resnet18.fc.weight)


def test_a_grey_scale_model_gets_the_first_conv_summed_by_timm(source_resnet18, tmp_path, capsys):
    path = tmp_path / "weights.safetensors"
    save_file(source_resnet18.state_dict(), path)
    model, out = _built(_model_spec(in_chans=1), str(path), capsys)
    summed = source_resnet18.conv1.weight.sum(dim=1, keepdim=True)
    assert torch.allclose(model.conv1.weight, summed)
    assert "conv1 adapted from 3 to 1 input channels" in out


def test_other_shapes_missing_and_unexpected_tensors_are_named(source_resnet18, capsys):
    state = dict(source_resnet18.state_dict())
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    del state["layer4.1.bn2.bias"]
    state["extra.weight"] = torch.zeros(3)
    weights = InitialWeights(source="the test's dict", state_dict=state)
    torch.manual_seed(0)
    model = setup_model(_model_spec(), MethodHooks([]), weights, rank=0)
    out = capsys.readouterr().out
    assert "shape mismatch, kept fresh: layer1.0.conv1.weight [64, 64, 1, 1] vs model" in out
    assert "missing, kept fresh: layer4.1.bn2.bias" in out
    assert "unexpected, ignored: extra.weight" in out
    assert not torch.equal(model.layer1[0].conv1.weight, torch.zeros(64, 64, 3, 3))


def test_only_rank_0_reports(source_resnet18, capsys):
    weights = InitialWeights(source="x", state_dict=source_resnet18.state_dict())
    setup_model(_model_spec(), MethodHooks([]), weights, rank=1)
    assert capsys.readouterr().out == ""


def test_weights_of_another_architecture_are_refused(source_resnet18):
    weights = InitialWeights(source="resnet18.pth", state_dict=source_resnet18.state_dict())
    spec = ModelSpec(
        "resnet9", {"width_multiplier": 0.25}, TARGET_CLASSES, 1, "classification", False
    )
    with pytest.raises(WeightsError, match=r"resnet18.pth: not one of its 122 tensors fits"):
        setup_model(spec, MethodHooks([]), weights)


def test_a_run_folder_gives_its_latest_checkpoints_model(tmp_path, capsys):
    run_dir = tmp_path / "runs" / "first"
    models = {}
    for stamp in ("2026-12-01_10-00-00.000001", "2026-12-01_10-00-09.000001"):
        torch.manual_seed(len(models))
        models[stamp] = ResNet9(num_classes=SOURCE_CLASSES, in_chans=1, width_multiplier=0.25)
        folder = run_dir / f"checkpoint_{stamp}"
        folder.mkdir(parents=True)
        optimizer = torch.optim.SGD(models[stamp].parameters(), lr=0.1)
        save_checkpoint(
            folder,
            model=models[stamp],
            optimizer=optimizer,
            scaler=torch.amp.GradScaler("cpu", enabled=False),
            state=TrainState(next_epoch=1),
        )
    spec = _model_spec("resnet9", in_chans=1, width_multiplier=0.25)
    model, out = _built(spec, str(run_dir), capsys)
    latest = models["2026-12-01_10-00-09.000001"]
    assert torch.equal(model.layer3[1].body[0][0].weight, latest.layer3[1].body[0][0].weight)
    assert f"from {run_dir}/checkpoint_2026-12-01_10-00-09.000001; classifier head " in out


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("absent.pth", "no such file or folder"),
        ("empty_folder", "is a folder without rayaccel checkpoints"),
        ("notes.txt", "is not a weight file"),
        ("pickled.pth", "cannot be read as a tensors-only torch file"),
    ],
)
def test_unreadable_weights_say_what_they_are(location, message, tmp_path):
    (tmp_path / "empty_folder").mkdir()
    (tmp_path / "notes.txt").write_text("not weights")
    torch.save({"model": {"w": torch.zeros(1)}, "optimizer": object}, tmp_path / "pickled.pth")
    with pytest.raises(WeightsError, match=message):
        read_state_dict(str(tmp_path / location))


# ---------------------------------------------------------------- the job fields
def _validate(tmp_path, capsys, model: dict) -> tuple[int, str]:
    job = {
        "data": {"train": str(FIXTURE_TRAIN)},
        "model": model,
        "train": {"epochs": 2, "global_batch_size": 64, "optimizer": {"lr": 0.1}},
        "run": {"name": "weights-test", "storage_path": str(tmp_path / "runs")},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    code = main(["validate", str(path)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"name": "resnet9", "pretrained": True}, "model.pretrained: resnet9 is rayaccel's own"),
        (
            {"name": "botnet50ts_256", "pretrained": True},
            "model.pretrained: timm has no pretrained weights for 'botnet50ts_256'",
        ),
        ({"name": "resnet18", "kwargs": {"pretrained": True}}, "set model.pretrained: true"),
        ({"name": "resnet18", "init_checkpoint": "absent/w.pth"}, "no such file or folder: "),
        (
            {"name": "resnet18", "pretrained": True, "init_checkpoint": str(FIXTURE_TRAIN)},
            "model.init_checkpoint: set model.pretrained or model.init_checkpoint, not both",
        ),
    ],
)
def test_validate_refuses_weights_that_cannot_work(model, message, tmp_path, capsys):
    code, err = _validate(tmp_path, capsys, model)
    assert code == EXIT_BAD_INPUT
    assert message in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_validate_accepts_pretrained_timm_models_and_existing_files(tmp_path, capsys):
    assert pretrained_problem("resnet18") is None
    assert pretrained_problem("resnet18.a1_in1k") is None
    weights = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(1)}, weights)
    code, err = _validate(tmp_path, capsys, {"name": "resnet18", "init_checkpoint": str(weights)})
    assert code == 0, err
    code, err = _validate(tmp_path, capsys, {"name": "resnet18", "pretrained": True})
    assert code == 0, err


def test_run_without_the_hub_fails_in_one_line(tmp_path):
    """HF_HUB_OFFLINE stands in for a cluster without internet (this machine has none)."""
    job = {
        "data": {"train": str(FIXTURE_TRAIN)},
        "model": {"name": "resnet18", "pretrained": True},
        "train": {"epochs": 1, "global_batch_size": 64, "optimizer": {"lr": 0.1}},
        "run": {"name": "offline", "storage_path": str(tmp_path / "runs")},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run(
        [sys.executable, "-m", "rayaccel", "run", str(path)],
        cwd=REPO_ROOT,
        env={**env, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == EXIT_BAD_INPUT, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if "model.pretrained" in line]
    assert line.startswith(f"{path}: model.pretrained: cannot fetch timm's pretrained weights")
    assert "'resnet18' from hf-hub:timm/resnet18.a1_in1k" in line
    assert "HF_ENDPOINT" in line and "model.init_checkpoint" in line


def test_pretrained_weights_go_through_timms_own_loading(tmp_path, capsys):
    """The driver's pretrained path, with timm pointed at a local file instead of the hub:
    timm sums the first conv for grey-scale data, the head is re-initialised."""
    torch.manual_seed(2)
    published = timm.create_model("resnet18")  # timm's 1000 ImageNet classes
    path = tmp_path / "resnet18.pth"
    torch.save(published.state_dict(), path)

    weights = pretrained_state_dict(
        "resnet18", in_chans=1, pretrained_cfg_overlay={"file": str(path)}
    )
    model = setup_model(_model_spec(in_chans=1), MethodHooks([]), weights, rank=0)
    report = capsys.readouterr().out

    summed = published.conv1.weight.sum(dim=1, keepdim=True)
    assert torch.allclose(model.conv1.weight, summed)
    assert torch.equal(model.layer4[1].conv2.weight, published.layer4[1].conv2.weight)
    assert "classifier fc re-initialised (1000 -> 10 classes)" in report
    assert weights.source == "timm resnet18 (hf-hub:timm/resnet18.a1_in1k " + (
        "(https://huggingface.co/timm/resnet18.a1_in1k))"
    )
