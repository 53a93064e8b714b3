"""A storage URI that cannot be parsed is rejected by `rayaccel validate` (no Ray; runs on
URIs are `tests/integration/test_storage_uri.py`)."""

from __future__ import annotations

from helpers import QUICKSTART

from rayaccel.cli import main


def test_an_unparsable_uri_is_rejected_before_anything_starts(capsys):
    bad = "file:///mnt/shared runs"
    assert main(["validate", QUICKSTART, f"run.storage_path={bad}"]) == 2
    assert (
        f"run.storage_path: is not a valid URI (characters such as spaces must be "
        f"percent-encoded, e.g. %20), got {bad!r}"
    ) in capsys.readouterr().err
