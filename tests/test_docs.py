"""The repository explains itself: every section a comment in `src/` cites exists in `docs/architecture.md`, and no
comment points at a document the repository does not ship."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted((REPO / "src").rglob("*.py"))
ARCHITECTURE = (REPO / "docs" / "architecture.md").read_text()


def test_every_cited_section_exists():
    sections = set(re.findall(r"^## §(\d+) ", ARCHITECTURE, re.MULTILINE))
    assert sections == {str(n) for n in range(1, len(sections) + 1)}
    for path in SOURCES:
        text = path.read_text()
        cited = re.findall(r"§(\d+)", text)
        explicit = re.findall(r"docs/architecture\.md §(\d+)(?:, §(\d+))?", text)
        assert len(cited) == sum(1 + bool(second) for _, second in explicit), f"{path}: a § without its document"
        assert set(cited) <= sections, f"{path} cites {sorted(set(cited) - sections)}"


def test_no_reference_to_documents_outside_the_repository():
    for path in SOURCES:
        text = path.read_text()
        assert not re.search(r"anatomy §|hf-ecosystem|official-anatomy|\.\./shared", text), path
