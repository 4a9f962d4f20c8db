"""The documentation: pillar.example is the pillar reference, links resolve, README is short.

pillar.example must hold every key of salt/reliant/parameters/defaults.yaml with its
default value, each key under a comment of its own. Every relative link (and anchor) in
README.md and docs/**/*.md must name a file of the repository (and a heading in it);
every page under docs/ must be reachable from README.md.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from repo_paths import ROOT

README = ROOT / "README.md"
PAGES = sorted([README, *(ROOT / "docs").rglob("*.md")])
DEFAULTS = yaml.safe_load((ROOT / "salt/reliant/parameters/defaults.yaml").read_text())
EXAMPLE_TEXT = (ROOT / "pillar.example").read_text()

_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]\n]*\]\(([^()\s]+)\)")
_HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$")
_KEY = re.compile(r"^( *)([A-Za-z0-9_]+):")


def _unfenced(text: str) -> list[str]:
    """The lines of a Markdown page outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to -."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.replace("`", "")).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    found: set[str] = set()
    for line in _unfenced(page.read_text()):
        match = _HEADING.match(line)
        if match:
            slug, n = _slug(match.group(1)), 1
            while slug in found:  # GitHub numbers repeated headings
                slug = f"{_slug(match.group(1))}-{n}"
                n += 1
            found.add(slug)
    return found


def _links(page: Path) -> list[str]:
    return [target for line in _unfenced(page.read_text())
            for target in _LINK.findall(_INLINE_CODE.sub("", line))]


def _problem(page: Path, target: str, root: Path = ROOT) -> str | None:
    """Why the link `target` of `page` does not resolve in `root`, None if it does."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
        return None
    path, _, anchor = target.partition("#")
    resolved = (page.parent / path).resolve() if path else page
    try:
        resolved.relative_to(root)
    except ValueError:
        return "points outside the repository"
    if not resolved.exists():
        return "names no file of the repository"
    if anchor and (resolved.suffix != ".md" or anchor not in _anchors(resolved)):
        return f"#{anchor} is no heading of {resolved.relative_to(root)}"
    return None


def _leaves(tree: dict[str, Any], path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    found: dict[tuple[str, ...], Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            found.update(_leaves(value, (*path, key)))
        else:
            found[(*path, key)] = value
    return found


def _commented_keys(text: str) -> dict[tuple[str, ...], bool]:
    """Each key of a block-style YAML file (by path) -> whether a comment line is right
    above it."""
    keys: dict[tuple[str, ...], bool] = {}
    stack: list[tuple[int, str]] = []
    previous = ""
    for line in text.splitlines():
        match = _KEY.match(line)
        if match:
            indent = len(match.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, match.group(2)))
            keys[tuple(name for _, name in stack)] = previous.lstrip().startswith("#")
        previous = line
    return keys


@pytest.mark.parametrize("path", sorted(_leaves(DEFAULTS)), ids=":".join)
def test_pillar_example_documents_the_key_with_its_default(path):
    example: Any = yaml.safe_load(EXAMPLE_TEXT)
    for key in path:
        assert isinstance(example, dict) and key in example, \
            f"pillar.example lacks {':'.join(path)}"
        example = example[key]
    assert example == _leaves(DEFAULTS)[path], \
        f"pillar.example gives {':'.join(path)} another value than its default"
    commented = _commented_keys(EXAMPLE_TEXT)
    for depth in range(1, len(path) + 1):
        assert commented.get(path[:depth]), \
            f"pillar.example: no comment right above {':'.join(path[:depth])}"


def test_pillar_example_holds_no_key_without_a_default():
    defaults = {path for key in _leaves(DEFAULTS) for path in
                (key[:depth] for depth in range(1, len(key) + 1))}
    assert sorted(set(_commented_keys(EXAMPLE_TEXT)) - defaults) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    problems = [f"{target}: {why}" for target in _links(page)
                if (why := _problem(page, target)) is not None]
    assert problems == []


def test_every_docs_page_is_reachable_from_the_readme():
    reached, todo = {README}, [README]
    while todo:
        page = todo.pop()
        for target in _links(page):
            path = target.partition("#")[0]
            if path.endswith(".md") and not re.match(r"^[a-z][a-z0-9+.-]*:", path):
                linked = (page.parent / path).resolve()
                if linked.exists() and linked not in reached:
                    reached.add(linked)
                    todo.append(linked)
    assert sorted(str(p.relative_to(ROOT)) for p in set(PAGES) - reached) == []


def test_readme_fits_in_200_lines():
    assert len(README.read_text().splitlines()) <= 200


def test_the_checks_see_broken_links_anchors_and_missing_comments(tmp_path):
    """The checks above can fail: a missing file, a missing anchor, an escape."""
    (tmp_path / "a.md").write_text("# Title `x`\n\n## Two words\n")
    page = tmp_path / "b.md"
    page.write_text("```\n[not a link](nowhere.md)\n```\n")
    assert _links(page) == []
    assert _problem(page, "a.md#title-x", tmp_path) is None
    assert _problem(page, "a.md#two-words", tmp_path) is None
    assert _problem(page, "a.md#three", tmp_path) == "#three is no heading of a.md"
    assert _problem(page, "c.md", tmp_path) == "names no file of the repository"
    assert _problem(page, "../outside.md", tmp_path) == "points outside the repository"
    assert _commented_keys("# a\na:\n  b: 1\n  # c\n  c: 2\n") == {
        ("a",): True, ("a", "b"): False, ("a", "c"): True}
