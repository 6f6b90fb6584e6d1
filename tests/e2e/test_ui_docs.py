"""docs/ui.md shows the screenshots the browser tests take (tests/e2e/test_ui_pages.py): every
picture it names exists and is small enough to commit."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_every_picture_in_the_ui_page_exists_and_is_commit_sized() -> None:
    text = (DOCS / "ui.md").read_text()
    pictures = re.findall(r"!\[[^\]]+\]\((img/[^)]+\.png)\)", text)
    assert {"img/ui-runs.png", "img/ui-run.png", "img/ui-approvals.png", "img/ui-costs.png"} <= set(pictures)
    for picture in pictures:
        path = DOCS / picture
        assert path.is_file(), f"{picture} is missing: run `pytest -m browser tests/e2e/test_ui_pages.py`"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size < 200_000
    assert "(ui.md)" in (DOCS / "observability.md").read_text()
