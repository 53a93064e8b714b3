"""Runs whose data and run folder are given as URIs, as on shared storage.

Every read and write of rayaccel (dataset metadata, Ray Data's parquet reads, the run folder,
Ray Train's checkpoints) goes through pyarrow filesystems, so `file:///…` exercises the same
code paths as `s3://…` or `gs://…`. The S3 test runs a whole job against a local moto
server when `moto[server]` is installed (it is not a dependency of rayaccel) and skips
otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time

import pytest
from helpers import (
    FIXTURE_TEST,
    FIXTURE_TRAIN,
    QUICKSTART,
    checkpoints,
    free_port,
    read_metrics,
    read_mlflow_runs,
    read_summary,
    read_tensorboard,
)

from rayaccel.cli import main

ONE_EPOCH = ["train.epochs=1", "train.schedule.warmup_epochs=0"]


@pytest.mark.ray
def test_file_uris_for_data_and_run_folder(ray_session, tmp_path, capsys):
    storage_uri = f"file://{tmp_path}/shared-runs"
    overrides = [
        f"data.train=file://{FIXTURE_TRAIN}",
        f"data.val=file://{FIXTURE_TEST}",
        f"run.storage_path={storage_uri}",
        "run.name=uri",
        *ONE_EPOCH,
    ]
    assert main(["run", QUICKSTART, *overrides]) == 0
    assert "results in" in capsys.readouterr().out

    run_dir = tmp_path / "shared-runs" / "uri"
    summary = read_summary(run_dir)
    assert summary["epochs_completed"] == 1
    assert summary["final_val_acc"] > 0.5, summary
    assert summary["run_folder"] == f"{storage_uri}/uri"
    (row,) = read_metrics(run_dir)
    assert row["val_images"] == 1000
    assert f"train: file://{FIXTURE_TRAIN}" in (run_dir / "job.yaml").read_text()
    assert checkpoints(run_dir), list(run_dir.iterdir())


@pytest.fixture
def moto_s3(tmp_path):
    """A local S3 server (moto); yields the environment that points pyarrow and Ray at it."""
    if importlib.util.find_spec("moto") is None:
        pytest.skip(
            "needs a local S3 server: pip install 'moto[server]' (not a rayaccel dependency)"
        )
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        # Read by pyarrow's S3 filesystem (Arrow >= 15) in every process of the run.
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    log = (tmp_path / "moto.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-p", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        f"moto server did not start:\n{(tmp_path / 'moto.log').read_text()}"
                    )
                time.sleep(0.3)
        yield env
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()


def _s3_filesystem(env: dict):
    """pyarrow's S3 filesystem on the moto server of `env` (the `moto_s3` fixture's)."""
    import pyarrow.fs as pafs

    return pafs.S3FileSystem(
        access_key="testing",
        secret_key="testing",
        region="us-east-1",
        scheme="http",
        endpoint_override=env["AWS_ENDPOINT_URL"].removeprefix("http://"),
        allow_bucket_creation=True,
    )


@pytest.mark.ray
def test_s3_photo_shards_and_run_folder(moto_s3, tmp_path):
    """`rayaccel data prepare imagefolder` writes its shards and metadata to S3; a run trains
    from them (Ray Data reads S3) and writes its run folder there: checkpoints, metrics, and
    the trackers' local mirrors, uploaded after every epoch."""
    import io

    import numpy as np
    import pyarrow.fs as pafs
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 24), ("val", 8)):
        for label in ("a", "b"):
            folder = tmp_path / "photos" / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 80, size=(40, 56, 3)) + (150 if label == "b" else 0)
                buffer = io.BytesIO()
                Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="JPEG")
                (folder / f"{i}.jpg").write_bytes(buffer.getvalue())
    s3 = _s3_filesystem(moto_s3)
    s3.create_dir("photos")
    # RAY_ADDRESS=local: a private Ray instance whose workers inherit the S3 settings.
    env = {**moto_s3, "RAY_ADDRESS": "local"}
    prepare = [sys.executable, "-m", "rayaccel", "data", "prepare", "imagefolder"]
    done = subprocess.run(
        [*prepare, str(tmp_path / "photos"), "s3://photos/shards", "--rows-per-shard", "16"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with s3.open_input_stream("photos/shards/train/metadata.json") as stream:
        meta = json.loads(stream.read())
    assert meta["count"] == 48 and len(meta["shards"]) == 3
    overrides = [
        "data.train=s3://photos/shards/train",
        "data.val=s3://photos/shards/val",
        "data.image_size_px=32",
        "data.augment.random_crop_padding_px=0",
        "data.augment.random_resized_crop={}",
        "train.global_batch_size=16",
        "run.storage_path=s3://photos/runs",
        "run.name=s3run",
        *ONE_EPOCH,
        "tracking.tensorboard=true",
        "tracking.mlflow=true",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "rayaccel", "run", QUICKSTART, *overrides],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    def read(path: str) -> str:
        with s3.open_input_stream(f"photos/runs/s3run/{path}") as stream:
            return stream.read().decode()

    summary = json.loads(read("summary.json"))
    assert summary["epochs_completed"] == 1, summary
    assert summary["run_folder"] == "s3://photos/runs/s3run"
    (row,) = [json.loads(line) for line in read("metrics.jsonl").splitlines()]
    assert row["val_images"] == 16 and row["bad_rows_skipped"] == 0
    listing = s3.get_file_info(pafs.FileSelector("photos/runs/s3run"))
    assert any(info.base_name.startswith("checkpoint_") for info in listing), listing

    copy = tmp_path / "downloaded"
    pafs.copy_files("photos/runs/s3run", str(copy), s3, pafs.LocalFileSystem())
    assert [e for e, _ in read_tensorboard(copy / "tensorboard")["val_acc"]] == [1]
    client, (run,) = read_mlflow_runs(copy / "mlflow" / "mlflow.db")
    assert run.info.status == "FINISHED" and run.data.metrics["val_acc"] == row["val_acc"]
    artifacts = copy / "mlflow" / "artifacts" / run.info.run_id / "artifacts"
    assert json.loads((artifacts / "summary.json").read_text()) == summary
