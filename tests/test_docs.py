"""Every section the code cites in docs/ exists, and no citation is left bare.

Docstrings, comments, configs and the README cite the reference documents as
`docs/ALGORITHM.md §3.6`, with several sections after one file name on the same
line (`docs/EVAL.md §0, §5, §7`), ranges (`docs/ALGORITHM.md §3.5-3.6`,
`docs/EVAL.md §1-§9`), and a design decision of the paper-vs-code table as
`docs/ALGORITHM.md §6 D12`. Checked: the cited file exists under docs/, it has a
heading numbered like each cited section (`## 3. ...`, `### 3.6 ...`), and a
cited D-label is a table row of that file's section. A citation a reader could
not follow fails: a reference file name without the docs/ prefix, a section
sign with no docs file before it on its line, a D-label without its section.
This file is left out of the scan: its examples below are made up on purpose.
"""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SECTION = "§"

DOC_REF = re.compile(r"\bdocs/([A-Za-z0-9_-]+)\.md")
NUM = r"\d+(?:\.\d+)*"
# "§3.6", "§3.5-3.6", "§1-§9"; whatever follows (a step list "1-5") is not a section.
SECTION_REF = re.compile(SECTION + rf"({NUM})(?:\s*[-\u2013]\s*{SECTION}?({NUM}))?")
# "§6 D12" (also "§6, D12" and "§6 D6, D12").
DLABEL_REF = re.compile(SECTION + r"(\d+),?\s+(D\d+(?:,\s*D\d+)*)\b")
BARE_FILE = re.compile(r"(?<!docs/)\b(?:ALGORITHM|API|EVAL|BASELINES)\.md\b")
BARE_DLABEL = re.compile(r"\bD\d{1,2}\b")
HEADING = re.compile(r"^#{1,6}\s+(\d+(?:\.\d+)*)\.?\s")
DROW = re.compile(r"^\|\s*(D\d+)\s*\|")


def source_files():
    """The files whose text may cite docs/: code, tests, configs, READMEs."""
    files = [ROOT / "eval.py", ROOT / "train.py", ROOT / "README.md"]
    for top in ("duet_jax", "convert", "bench", "tests"):
        files += sorted((ROOT / top).rglob("*.py"))
        files += sorted((ROOT / top).rglob("*.md"))
    files += sorted((ROOT / "configs").glob("*.yaml"))
    this = Path(__file__).resolve()
    return [f for f in files if f.is_file() and f.resolve() != this]


def doc_index(path: Path):
    """(section numbers, {section: D-labels of that section's table rows})."""
    sections, labels, current = set(), {}, None
    for line in path.read_text(encoding="utf-8").splitlines():
        m = HEADING.match(line)
        if m:
            sections.add(m.group(1))
            if line.startswith("## "):
                current = m.group(1)
            continue
        row = DROW.match(line)
        if row and current is not None:
            labels.setdefault(current, set()).add(row.group(1))
    return sections, labels


_INDEX = {}


def index_of(name: str):
    if name not in _INDEX:
        path = DOCS / f"{name}.md"
        _INDEX[name] = doc_index(path) if path.is_file() else None
    return _INDEX[name]


def citations(line: str):
    """[(doc name, [section, ...], [(section, D-label), ...])] cited on one line:
    each docs/ reference owns the sections up to the next docs/ reference."""
    refs = list(DOC_REF.finditer(line))
    out = []
    for i, ref in enumerate(refs):
        end = refs[i + 1].start() if i + 1 < len(refs) else len(line)
        segment = line[ref.end():end]
        sections = []
        for m in SECTION_REF.finditer(segment):
            sections += [g for g in m.groups() if g]
        dlabels = [(m.group(1), label.strip())
                   for m in DLABEL_REF.finditer(segment) for label in m.group(2).split(",")]
        out.append((ref.group(1), sections, dlabels))
    return out


def check_line(line: str):
    """Problems with the resolvable citations of one line (empty: all resolve)."""
    problems = []
    for name, sections, dlabels in citations(line):
        index = index_of(name)
        if index is None:
            problems.append(f"docs/{name}.md does not exist")
            continue
        known, labels = index
        for sec in sections:
            if sec not in known:
                problems.append(f"docs/{name}.md has no heading numbered {sec}")
        for sec, label in dlabels:
            if label not in labels.get(sec, set()):
                problems.append(f"docs/{name}.md section {sec} has no row {label}")
    return problems


def bare_citations(line: str):
    """Citations on one line that a reader could not follow (empty: none)."""
    found = [m.group(0) for m in BARE_FILE.finditer(line)]
    first = DOC_REF.search(line)
    sign = line.find(SECTION)
    if sign >= 0 and (first is None or sign < first.start()):
        found.append(line[sign:sign + 8].strip())
    labelled = {m.start(2) + off for m in DLABEL_REF.finditer(line)
                for off in [0] + [i + 1 for i, ch in enumerate(m.group(2)) if ch == " "]}
    for m in BARE_DLABEL.finditer(line):
        if m.start() not in labelled:
            found.append(m.group(0))
    return found


def scan():
    cited, problems, bare = 0, [], []
    for path in source_files():
        rel = path.relative_to(ROOT)
        for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for _, sections, dlabels in citations(line):
                cited += len(sections) + len(dlabels)
            problems += [f"{rel}:{no}: {p}" for p in check_line(line)]
            bare += [f"{rel}:{no}: {b!r} in {line.strip()!r}" for b in bare_citations(line)]
    return cited, problems, bare


@pytest.fixture(scope="module")
def scanned():
    return scan()


def test_docs_exist_with_numbered_sections():
    for name, top in (("ALGORITHM", 7), ("API", 5), ("EVAL", 10), ("BASELINES", 8)):
        sections, _ = index_of(name)
        first = 0 if name in ("EVAL", "BASELINES") else 1
        assert {str(n) for n in range(first, top + 1)} <= sections, name
    _, labels = index_of("ALGORITHM")
    assert labels["6"] == {f"D{n}" for n in range(1, 18)}


def test_scan_sees_the_citations(scanned):
    cited, _, _ = scanned
    assert cited >= 100, f"only {cited} citations found: is the scanner broken?"


def test_every_citation_resolves(scanned):
    _, problems, _ = scanned
    assert not problems, "citations without a target:\n" + "\n".join(problems)


def test_no_bare_citation(scanned):
    _, _, bare = scanned
    assert not bare, "cite as docs/<NAME>.md plus the section number:\n" + "\n".join(bare)


def _cite(name, *parts):
    return f"see docs/{name}.md " + ", ".join(SECTION + p for p in parts)


def test_parser_accepts_real_and_rejects_made_up_citations():
    assert check_line(_cite("ALGORITHM", "3.6")) == []
    assert check_line(_cite("EVAL", "0", "5", "7")) == []
    assert check_line(_cite("ALGORITHM", "6 D12")) == []
    assert check_line(_cite("ALGORITHM", "3.5-3.6")) == []
    assert check_line(_cite("ALGORITHM", "99.9")) == [
        "docs/ALGORITHM.md has no heading numbered 99.9"]
    assert check_line(_cite("ALGORITHM", "3.5-3.99")) == [
        "docs/ALGORITHM.md has no heading numbered 3.99"]
    assert check_line(_cite("API", "3", "42")) == ["docs/API.md has no heading numbered 42"]
    assert check_line(_cite("ALGORITHM", "6 D99")) == ["docs/ALGORITHM.md section 6 has no row D99"]
    assert check_line(_cite("ALGORITHM", "5 D12")) == ["docs/ALGORITHM.md section 5 has no row D12"]
    assert check_line(_cite("NOSUCHDOC", "1")) == ["docs/NOSUCHDOC.md does not exist"]
    # a section cited after a second file name belongs to that file
    line = _cite("API", "4") + " and " + _cite("EVAL", "10")
    assert check_line(line) == []
    assert citations(line) == [("API", ["4"], []), ("EVAL", ["10"], [])]


def test_bare_citations_are_caught():
    assert bare_citations("(ALGORITHM.md §3.6)") == ["ALGORITHM.md", "§3.6)"]
    assert bare_citations("ranking (§3.4)") != []
    assert bare_citations("builds each prompt (§7), then") != []
    assert bare_citations("falls back to last (D12)") == ["D12"]
    assert bare_citations("(§3.4) and docs/ALGORITHM.md §3.6") != []
    assert bare_citations(_cite("ALGORITHM", "3.3", "6 D6")) == []
    assert bare_citations(_cite("ALGORITHM", "6 D6, D12")) == []
    assert bare_citations("no citation: a [B, L, D] array, 2-D RoPE") == []
