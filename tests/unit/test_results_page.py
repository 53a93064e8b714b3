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


def test_readme_results_table_matches_the_record():
    page = load_benchmark("results_page")
    committed = (REPO_ROOT / "README.md").read_text()
    assert committed == page.render_readme(committed), (
        "README.md's results table is stale: run `python benchmarks/results_page.py`"
    )


def test_readme_table_and_plot_come_from_the_frontier_record(tmp_path):
    page = load_benchmark("results_page")
    row = {"seeds": [0, 1, 2], "acc_sd": 0.001, "wall_s_sd": 5.0}
    record = {
        "command": "python benchmarks/time_to_accuracy.py --out runs/tta",
        "machine": "ci: 2 CPU cores",
        "date": "2026-12-02 01:00 UTC",
        "commit": "abc123",
        "missing_runs": 3,
        "variants": {
            "baseline@4": {**row, "acc_mean": 0.925, "wall_s_mean": 300.0},
            "baseline@8": {**row, "acc_mean": 0.935, "wall_s_mean": 600.0},
            "et++": {
                **row, "acc_mean": 0.93, "wall_s_mean": 225.0, "speedup": 2.0,
                "speedup_bound": "=", "speedup_sd": 0.1,
            },
            "fast": {
                **row, "acc_mean": 0.94, "wall_s_mean": 500.0, "speedup": 1.2,
                "speedup_bound": ">=", "speedup_sd": 0.05,
            },
        },
    }  # fmt: skip
    (tmp_path / "time_to_accuracy.json").write_text(json.dumps(record))
    lines = page.readme_table(tmp_path)
    text = "\n".join(lines)
    assert "4 epochs 92.50% in 300 s, 8 epochs 93.50% in 600 s" in text
    assert "| et++ | 93.00% ± 0.10 | 225 s | 2.00x ± 0.10 |" in text
    assert "| fast | 94.00% ± 0.10 | 500 s | >= 1.20x ± 0.05 |" in text
    assert "3 planned runs are not measured yet" in text
    assert "| baseline@4 |" not in text

    readme = f"intro\n{page.README_START}\nold table\n{page.README_END}\nrest\n"
    rendered = page.render_readme(readme, tmp_path)
    assert "old table" not in rendered and rendered.endswith(f"{page.README_END}\nrest\n")
    assert page.render_readme(rendered, tmp_path) == rendered  # stable

    plot = tmp_path / "frontier.png"
    assert page.write_frontier_plot(tmp_path, plot) and plot.stat().st_size > 10_000
    assert not page.write_frontier_plot(tmp_path / "none", plot)
