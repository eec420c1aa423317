"""No dangling references in the documentation: every relative link in README.md and docs/*.md
resolves (its file, and its #anchor among the target's headings), every repository path the
pages cite exists, no page points outside the repository, and the README stays short.

    python tests/test_docs_links.py      # prints every problem found, without pytest
"""

from __future__ import annotations

import re
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 260

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"`((?:[^`\n]|\n(?!\n))+)`")  # may wrap a line, never a paragraph
# A path into one of the repository's top-level folders, as the pages cite them.
TOP_LEVEL = ("service", "docs", "scripts", "benchmarks", "deploy", "tests", "training", "proto",
             "model_repository", "examples", "requirements", "sdedit")
CITED_PATH = re.compile(r"(?<![\w./~-])((?:" + "|".join(TOP_LEVEL) + r")/[\w.\-/]*)")
PLACEHOLDER = "<{*$"  # model_repository/<name>/..., sdedit-jobs:queue:{high,...}: not one file
# Cited files that a script writes and that no run has committed yet, each with its writer.
NOT_YET_WRITTEN = {
    "benchmarks/results/gpu_batching.json": "benchmarks/gpu_batching.py, run on a GPU machine",
}
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
# Citations of a notes file that does not ship with the repository (built here so that this
# file does not cite it either).
OUTSIDE_NOTES = "DESIGN" + ".md"


def without_code_blocks(text: str) -> str:
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = re.sub(r"<[^>]+>", "", text).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def anchors(page: Path) -> frozenset[str]:
    """The anchors GitHub gives a Markdown file's headings (a repeated one gets -1, -2, ...)."""
    seen: dict[str, int] = {}
    found = set()
    for match in HEADING.finditer(without_code_blocks(page.read_text())):
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return frozenset(found)


def inside_repository(path: Path) -> bool:
    return path == ROOT or ROOT in path.parents


def link_problems(page: Path) -> list[str]:
    problems = []
    for target in LINK.findall(without_code_blocks(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        where = f"{page.relative_to(ROOT)}: link {target}"
        if not inside_repository(resolved):
            problems.append(f"{where}: outside the repository")
        elif not resolved.exists():
            problems.append(f"{where}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{where}: no heading #{anchor} in {resolved.relative_to(ROOT)}")
    return problems


def cited_paths(text: str) -> list[str]:
    """Repository paths in code spans and code blocks (commands too: `python benchmarks/x.py`)."""
    spans = CODE_SPAN.findall(without_code_blocks(text)) + [block.group(0) for block in FENCE.finditer(text)]
    paths = []
    for span in spans:
        for match in CITED_PATH.finditer(span):
            following = span[match.end():match.end() + 1]
            if following and following in PLACEHOLDER:
                continue
            paths.append(match.group(1).rstrip(".,:;").split("::")[0])
    return paths


def path_problems(page: Path) -> list[str]:
    problems = []
    for cited in dict.fromkeys(cited_paths(page.read_text())):
        if not (ROOT / cited).exists() and cited not in NOT_YET_WRITTEN:
            problems.append(f"{page.relative_to(ROOT)}: cites `{cited}`: no such file or folder")
    return problems


def outside_notes_citations() -> list[str]:
    files = [*PAGES, ROOT / "tests" / "ORACLE.md"]
    for folder in ("service", "tests", "benchmarks", "scripts", "training"):
        files += sorted((ROOT / folder).rglob("*.py"))
    return [f"{path.relative_to(ROOT)}:{number}: cites {OUTSIDE_NOTES}"
            for path in files for number, line in enumerate(path.read_text().splitlines(), 1)
            if OUTSIDE_NOTES in line]


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_relative_link_resolves(page):
    assert link_problems(page) == []


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_cited_repository_path_exists(page):
    assert path_problems(page) == []


def test_no_page_or_docstring_cites_notes_outside_the_repository():
    assert outside_notes_citations() == []


def test_the_readme_is_short_and_starts_with_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    head = "\n".join(readme.splitlines()[:20])
    assert "make demo" in head and "make test" in head


def test_the_checker_finds_what_it_should():
    """The checker itself: GitHub's slugs, placeholders skipped, links into code blocks ignored."""
    assert slug("Service `ImageEditor`") == "service-imageeditor"
    assert slug("HTTP/JSON (docs/http.md)") == "httpjson-docshttpmd"
    assert slug("Load test at concurrency 1, 4, 16") == "load-test-at-concurrency-1-4-16"
    assert slug("Masks: compositing at the output level") == "masks-compositing-at-the-output-level"
    text = "see `model_repository/<name>/config.pbtxt` and `service/sde/engine.py`, `tests/x.py::test_y`"
    assert cited_paths(text) == ["service/sde/engine.py", "tests/x.py"]
    assert cited_paths("`from a import\nb`, see `service/x.py`") == ["service/x.py"]  # a span over a line break
    assert cited_paths("```sh\npython benchmarks/quality.py --out a\n```\n") == ["benchmarks/quality.py"]
    assert LINK.findall("[a](b.md#c) ![d](e.png) [f](https://x/y)") == ["b.md#c", "e.png", "https://x/y"]


if __name__ == "__main__":
    found = [problem for page in PAGES for problem in link_problems(page) + path_problems(page)]
    found += outside_notes_citations()
    lines = len((ROOT / "README.md").read_text().splitlines())
    if lines > README_MAX_LINES:
        found.append(f"README.md: {lines} lines (at most {README_MAX_LINES})")
    print("\n".join(found) or "no problems")
    sys.exit(1 if found else 0)
