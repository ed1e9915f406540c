"""The documentation's links resolve, and it names no machine path and no issue number.

Checked: README.md, CONTRIBUTING.md and every docs/**/*.md. A relative link (``[text](path)``, ``![alt](path)``) must name
a file or folder that exists, relative to the page; ``path#anchor`` and ``#anchor`` must name a heading
of the target page (GitHub's anchor rule: lower case, punctuation dropped, spaces to hyphens, repeats
numbered ``-1``, ``-2``). Links inside code (fenced blocks, inline ``code``) are not links and are skipped;
web links (``http:``, ``https:``, ``mailto:``) are not fetched.

Pages also must not contain an absolute path of the machine the runs were made on (``/work/``,
``/root/``, ``/home/``, ``/tmp/``) or a reference to a tracker issue by number ("issue 13", "issue #3",
"issue-11"): a reader has neither the machine nor the tracker.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FENCE = re.compile(r"^( {0,3})(`{3,}|~{3,})")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
MACHINE_PATH = re.compile(r"(?<![\w.~])/(?:work|root|home|tmp)/")
ISSUE_NUMBER = re.compile(r"\bissues?[ \t]*[-#]?[ \t]*\d+", re.IGNORECASE)
WEB = ("http://", "https://", "mailto:", "ftp://")


def doc_pages() -> list[Path]:
    pages = [ROOT / "README.md", ROOT / "CONTRIBUTING.md"]
    pages += sorted((ROOT / "docs").rglob("*.md"))
    return [p for p in pages if p.is_file()]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    out, fence = [], None
    for number, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if m:
            marker = m.group(2)
            if fence is None:
                fence = marker[0] * len(marker)
                continue
            if marker[0] == fence[0] and len(marker) >= len(fence):
                fence = None
                continue
        if fence is None:
            out.append((number, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    text = INLINE_CODE.sub(lambda m: m.group(0).strip("`"), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading: its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    kept = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch in "-_ " or cat[0] in "LN" or cat == "Mn":
            kept.append("-" if ch == " " else ch)
    return "".join(kept)


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose_lines(page.read_text(encoding="utf-8")):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(page: Path) -> list[tuple[int, str]]:
    out = []
    for number, line in prose_lines(page.read_text(encoding="utf-8")):
        for m in LINK.finditer(INLINE_CODE.sub("", line)):
            out.append((number, m.group(1)))
    return out


def dead_links(page: Path, root: Path = ROOT) -> list[str]:
    problems = []
    for number, target in links(page):
        if target.lower().startswith(WEB):
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        where = f"{page.relative_to(root)}:{number}: ({target})"
        if not dest.exists():
            problems.append(f"{where} -> no such file")
            continue
        try:
            dest.relative_to(root)
        except ValueError:
            problems.append(f"{where} -> outside the repository")
            continue
        if anchor and dest.suffix == ".md" and anchor.lower() not in anchors(dest):
            problems.append(f"{where} -> no heading with anchor #{anchor} in {dest.relative_to(root)}")
    return problems


PAGES = doc_pages()
IDS = [str(p.relative_to(ROOT)) for p in PAGES]


def test_there_are_pages_to_check():
    assert ROOT / "README.md" in PAGES and len(PAGES) > 5


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_every_relative_link_resolves(page):
    assert dead_links(page) == []


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_no_machine_path_or_issue_number(page):
    found = []
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        for pattern, what in ((MACHINE_PATH, "machine path"), (ISSUE_NUMBER, "issue number")):
            for m in pattern.finditer(line):
                found.append(f"{page.relative_to(ROOT)}:{number}: {what} {m.group(0)!r}")
    assert found == []


def test_the_checks_catch_what_they_are_for(tmp_path):
    """A dead file link, a dead anchor, a machine path and an issue number are all found."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Title here\n\n## Second, part (x)\n", encoding="utf-8")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/a.md) [ok anchor](docs/a.md#second-part-x) [web](https://example.org/x)\n"
        "`[code](missing.md)`\n"
        "```\n[in a block](missing.md)\n```\n"
        "[dead](docs/missing.md) [dead anchor](docs/a.md#nowhere) ![img](docs/figures/none.png)\n",
        encoding="utf-8",
    )
    problems = dead_links(page, root=tmp_path)
    assert len(problems) == 3, problems
    assert any("docs/missing.md" in p for p in problems)
    assert any("#nowhere" in p for p in problems)
    assert any("none.png" in p for p in problems)
    assert MACHINE_PATH.search("data in /work/shared/data") and MACHINE_PATH.search("see /root/x")
    assert not MACHINE_PATH.search("../shared/data and logs/work/x")
    for text in ("issue 13", "Issue #3", "the issue-11 report", "issues 12 and 13"):
        assert ISSUE_NUMBER.search(text), text
    assert not ISSUE_NUMBER.search("https://github.com/UCSD-AI4H/COVID-CT/issues/3 and an issue with images")
    assert slug("2. Choosing the scratch recipe, seeds and data efficiency (GPU)") == (
        "2-choosing-the-scratch-recipe-seeds-and-data-efficiency-gpu"
    )
    assert slug("ImageNet transfer vs training from scratch (EfficientNet-Lite0)") == (
        "imagenet-transfer-vs-training-from-scratch-efficientnet-lite0"
    )


DATA_FILES = sorted(p for p in (ROOT / "docs").rglob("*") if p.suffix in (".json", ".csv", ".txt"))


def test_no_machine_path_in_committed_results():
    """Committed reports, predictions and benchmark outputs name paths relative to the checkout, never the
    machine that produced them."""
    found = [f"{p.relative_to(ROOT)}: {m.group(0)!r}" for p in DATA_FILES for m in MACHINE_PATH.finditer(p.read_text(encoding="utf-8"))]
    assert DATA_FILES and found == []
