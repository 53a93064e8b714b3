"""The generated job schema and reference (`rayaccel schema`): current, valid, and used.

docs/job-schema.json and docs/reference.md are generated from the pydantic job models; the
first test fails whenever a field, default or description changed without regenerating them.
"""

import json

import jsonschema
import pytest
import yaml
from helpers import JOBS_DIR, REPO_ROOT

from rayaccel.cli import main
from rayaccel.config.reference import (
    REFERENCE_FILE,
    REGENERATE_COMMAND,
    SCHEMA_FILE,
    generated_files,
    job_schema,
)

DOCS = REPO_ROOT / "docs"
JOB_FILES = sorted(JOBS_DIR.glob("*.yaml"))
MODELINE = f"# yaml-language-server: $schema=../docs/{SCHEMA_FILE}"


@pytest.mark.parametrize("name", [SCHEMA_FILE, REFERENCE_FILE])
def test_the_committed_generated_docs_are_current(name):
    committed = (DOCS / name).read_text() if (DOCS / name).exists() else None
    assert committed == generated_files()[name], (
        f"docs/{name} is stale: regenerate it with `{REGENERATE_COMMAND}` (from the repository "
        "root) and commit it"
    )


@pytest.mark.parametrize("job_file", JOB_FILES, ids=lambda p: p.name)
def test_every_shipped_job_passes_the_schema_editors_check_it_with(job_file):
    jsonschema.Draft202012Validator(job_schema()).validate(yaml.safe_load(job_file.read_text()))


def test_the_schema_rejects_what_the_job_loader_rejects():
    validator = jsonschema.Draft202012Validator(job_schema())
    job = yaml.safe_load((JOBS_DIR / "quickstart.yaml").read_text())
    job["train"]["epochs"] = 0
    job["model"]["widht_multiplier"] = 0.5
    job["data"]["mode"] = "gpu"
    messages = sorted(e.message for e in validator.iter_errors(job))
    assert len(messages) == 3, messages
    assert any("'gpu' is not one of ['ray', 'device']" in m for m in messages), messages


@pytest.mark.parametrize("job_file", JOB_FILES, ids=lambda p: p.name)
def test_every_shipped_job_points_editors_at_the_schema(job_file):
    assert job_file.read_text().splitlines()[0] == MODELINE
    assert (job_file.parent / MODELINE.split("$schema=")[1]).resolve() == DOCS / SCHEMA_FILE


def test_the_reference_names_every_field_with_its_default_and_description():
    reference = generated_files()[REFERENCE_FILE]
    assert "| `train.optimizer.lr` | number | required | > 0, <= 100 | Peak learning rate" in (
        reference
    )
    assert '| `data.shuffle` | string | `"windows"` | `"windows"`, `"full"` | windows:' in (
        reference
    )
    assert "| `model.init_checkpoint` | string or null | `null` |" in reference
    assert "| `mixup.mode` |" in reference and "| `tricks.ema.momentum` |" in reference
    assert '"yaml.schemas"' in reference and MODELINE in reference


def test_schema_command_prints_writes_and_explains(capsys, tmp_path):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["$schema"].endswith("2020-12/schema")
    assert schema["properties"]["model"]["description"].startswith("resnet9")
    assert main(["schema", "--markdown"]) == 0
    assert capsys.readouterr().out.startswith("# Job file reference")
    assert main(["schema", "--write", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([SCHEMA_FILE, REFERENCE_FILE])
