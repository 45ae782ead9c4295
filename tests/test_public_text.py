"""What users read names only public things: the original ITOP code, papers and public repositories,
files in this repository. No private folders beside a checkout, no internal names, no issue numbers."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
USER_VISIBLE = ["README.md", "CHANGELOG.md", "docs/**/*.md", "src/**/*.py", "benchmarks/**/*.py"]

PRIVATE = {
    r"\.\./shared|shared/(?:reference|data|seed)|[\"']shared[\"']": "a folder beside the development checkout",
    r"\b(?:REFERENCE|SET)\.md\b": "a private reference note",
    r"\bissue \d+": "an internal issue number",
    r"\b[Tt]he seed's\b|\bseed README\b|\bseed SET\b|\bseed's SET": "the internal name of the original code",
    r"this project's machines|not re-run here": "the development machines",
}


def user_visible_files():
    seen = set()
    for pattern in USER_VISIBLE:
        for path in sorted(ROOT.glob(pattern)):
            if path.is_file() and path not in seen and "egg-info" not in str(path):
                seen.add(path)
                yield path


@pytest.mark.parametrize("pattern, what", PRIVATE.items(), ids=list(PRIVATE.values()))
def test_no_private_names_in_what_users_read(pattern, what):
    hits = []
    for path in user_visible_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(pattern, line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not hits, f"{what} named in:\n" + "\n".join(hits)
