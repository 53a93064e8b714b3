"""No project file cites a document the repository does not hold.

Relative markdown links (in .md files) and paths ending in .md (backticked, or with a folder, in
any file) must name files that exist, relative to the citing file or the repository root; notes
kept outside the repository must never be named at all.
"""

from __future__ import annotations

import re
from pathlib import Path

from helpers import REPO_ROOT

SCANNED = ["README.md", "docs", "rayaccel", "benchmarks", "jobs", "searches", "cluster", "tests"]
SUFFIXES = {".md", ".py", ".yaml", ".yml", ".toml", ".sh", ".txt", ""}
# Built from parts so that this file does not name them itself.
OUTSIDE_NOTES = re.compile(r"\b(?:" + "|".join(["METHODS", "STYLE", "DESIGN", "RAY"]) + r")\.md\b")
MARKDOWN_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
BACKTICKED_MD = re.compile(r"`([^`\s]+\.md)`")
FOLDER_MD = re.compile(r"(?<![\w./-])((?:[\w.-]+/)+[\w.-]+\.md)\b")


def project_files() -> list[Path]:
    files = []
    for name in SCANNED:
        path = REPO_ROOT / name
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        files += [
            f
            for f in candidates
            if f.is_file() and f.suffix in SUFFIXES and "__pycache__" not in f.parts
        ]
    return files


def cited_documents(path: Path, text: str) -> set[str]:
    cited = set(BACKTICKED_MD.findall(text)) | set(FOLDER_MD.findall(text))
    if path.suffix == ".md":
        for target in MARKDOWN_LINK.findall(text):
            if not re.match(r"[a-z][a-z0-9+.-]*:|#", target):
                cited.add(target.split("#")[0])
    return {c for c in cited if c}


def exists(path: Path, cited: str) -> bool:
    cited = cited.lstrip("./") if cited.startswith("./") else cited
    return (path.parent / cited).exists() or (REPO_ROOT / cited).exists()


def test_every_cited_document_exists_and_none_is_kept_outside_the_repository():
    files = project_files()
    assert len(files) > 100 and REPO_ROOT / "README.md" in files
    missing, outside = [], []
    for path in files:
        text = path.read_text(errors="replace")
        relative = path.relative_to(REPO_ROOT)
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE_NOTES.search(line):
                outside.append(f"{relative}:{number}: {OUTSIDE_NOTES.search(line).group(0)}")
        missing += [
            f"{relative}: {c}" for c in sorted(cited_documents(path, text)) if not exists(path, c)
        ]
    assert not outside, "names notes the repository does not hold:\n" + "\n".join(outside)
    assert not missing, "cites documents that do not exist:\n" + "\n".join(missing)


def test_the_checks_catch_a_missing_page_and_an_outside_note():
    page = REPO_ROOT / "docs" / "x.md"
    nowhere = "docs/" + "nowhere" + ".md"  # split so that this file does not cite it
    text = f"See [the guide](missing-guide.md#knobs), [data](data.md), `{nowhere}`, [web](https://a.b/c.md)."
    cited = cited_documents(page, text)
    assert cited == {"missing-guide.md", "data.md", nowhere}
    assert [c for c in sorted(cited) if not exists(page, c)] == [
        nowhere,
        "missing-guide.md",
    ]
    assert OUTSIDE_NOTES.search("read /work/shared/" + "RAY" + ".md first")
    assert not OUTSIDE_NOTES.search("cluster/README.md")
