"""docs/results.md is generated from benchmarks/results/*.json: it must match the records, and
records of any shape must render as tables with their provenance."""

from __future__ import annotations

import json

from helpers import REPO_ROOT, load_benchmark


def test_docs_results_page_matches_the_records():
    page = load_benchmark("results_page")
    committed = (REPO_ROOT / "docs" / "results.md").read_text()
    assert committed == page.render_page(), (
        "docs/results.md is stale: run `python benchmarks/results_page.py` and commit it"
    )


def test_a_record_of_any_shape_renders_its_provenance_and_tables(tmp_path):
    page = load_benchmark("results_page")
    record = {
        "command": "python benchmarks/large_batch.py --smoke",
        "commit": "abc123",
        "machine": "ci: 2 CPU cores",
        "versions": {"ray": "2.60.0", "torch": "2.14.1"},
        "date": "2026-12-01 20:00 UTC",
        "epochs": 8,
        "runs": {"linear": {"val_miou": 0.2884, "agvm": {"mu": 1.057}}, "small": {"val_miou": 0.6}},
        "per_seed": [{"seed": 0, "ratio": 1.5}, {"seed": 1, "ratio": 1.25}],
        "table": "| run | acc |\n|---|---|\n| baseline | 0.93 |",
    }
    (tmp_path / "large_batch.json").write_text(json.dumps(record))
    (tmp_path / "data_pipeline.json").write_text(json.dumps({"throughput": {"14": {"s": 3.0}}}))
    text = page.render_page(tmp_path)

    assert "- command: `python benchmarks/large_batch.py --smoke`" in text
    assert "- commit: abc123" in text and "- library versions: ray 2.60.0, torch 2.14.1" in text
    assert "- epochs: 8" in text
    assert "| linear | 0.2884 | 1.057 |" in text and "| small | 0.6 |  |" in text
    assert "|  | val_miou | agvm / mu |" in text
    assert "| 1 | 1 | 1.25 |" in text
    assert "| baseline | 0.93 |" in text
    # An old record without provenance says so rather than guessing.
    assert "- commit: not recorded" in text
    assert "`python benchmarks/data_pipeline.py` (its options were not recorded)" in text
    # Records in file-name order.
    assert text.index("## data_pipeline") < text.index("## large_batch")


def test_a_benchmark_record_carries_its_provenance_and_renders(tmp_path):
    common = load_benchmark("common")
    page = load_benchmark("results_page")
    script = str(REPO_ROOT / "benchmarks" / "large_batch.py")
    common.write_record(
        tmp_path / "large_batch.json",
        {"runs": {"linear": {"val_miou": 0.29}}},
        script=script,
        argv=["--smoke", "--json", "out dir/x.json"],
    )
    record = json.loads((tmp_path / "large_batch.json").read_text())
    assert record["command"] == "python benchmarks/large_batch.py --smoke --json 'out dir/x.json'"
    assert record["commit"] and record["commit"] != "unknown"
    assert {"python", "ray", "torch", "timm"} <= record["versions"].keys()
    assert record["date"].endswith("UTC") and "CPU cores" in record["machine"]
    text = page.render_page(tmp_path)
    assert f"- commit: {record['commit']}" in text and "not recorded" not in text
