"""Every relative link in README.md and docs/*.md points to a file or folder the repository has."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Markdown links and images: [text](target) / ![alt](target); the target up to a space or ")".
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = ("http://", "https://", "mailto:", "#")


def relative_links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # code blocks hold no links
    return [t for t in LINK.findall(text) if not t.startswith(EXTERNAL)]


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_relative_links_resolve(doc):
    missing = []
    for target in relative_links(doc):
        file_part = target.split("#", 1)[0]
        if not (doc.parent / file_part).exists():
            missing.append(target)
    assert not missing, f"{doc.relative_to(ROOT)} links to files the repository lacks: {missing}"


def test_the_link_pattern_finds_links():
    assert relative_links(ROOT / "README.md"), "README.md has no relative link: the pattern is broken"
