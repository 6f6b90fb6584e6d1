"""The API examples added to the layer docs run as written and print what they say: structured
output through the gateway, time travel in a graph, batch writes with metadata in memory, and
the providers' quick start (public imports only)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def section(page: str, title: str) -> str:
    text = (DOCS / page).read_text()
    start = text.index(f"\n{title}\n")
    end = text.find("\n#", start + len(title) + 2)
    return text[start : end if end != -1 else len(text)]


def run_blocks(page: str, text: str) -> dict[str, object]:
    namespace: dict[str, object] = {"__name__": f"docs_{page}"}
    for block in re.findall(r"```python\n(.*?)```", text, flags=re.S):
        exec(compile(block, str(DOCS / page), "exec", dont_inherit=True), namespace)
    return namespace


def test_structured_output_example(capsys: pytest.CaptureFixture[str]) -> None:
    run_blocks("gateway-core.md", section("gateway-core.md", "## Structured output"))
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "number='INV-7' total_eur=120.5"
    assert out[1] == "Invoice"
    assert "is not a valid Invoice: total_eur: Field required" in out[2]


def test_time_travel_example(capsys: pytest.CaptureFixture[str]) -> None:
    run_blocks("orchestration.md", section("orchestration.md", "## Time travel"))
    assert capsys.readouterr().out.splitlines() == [
        "3 days in Lisbon",
        "3 days in Porto",
        "('book',) 3 days in Lisbon",
    ]


def test_batch_writes_and_metadata_example(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # the example writes notes.db
    run_blocks("memory.md", section("memory.md", "#### Batch writes and metadata"))
    assert capsys.readouterr().out.splitlines() == [
        "[1, 2]",
        "['Ada asked for a refund of order 1042', 'Bob asked for a refund of order 7']",
    ]


def test_providers_quick_start_and_script_run(capsys: pytest.CaptureFixture[str]) -> None:
    page = (DOCS / "gateway-providers.md").read_text()
    # the first block and the fake server's script (the second registers providers globally)
    quick, _, scripted = re.findall(r"```python\n.*?```", page, flags=re.S)[:3]
    run_blocks("gateway-providers.md", quick)
    assert capsys.readouterr().out.startswith("Hello from the fake upstream Usage(")
    namespace = run_blocks("gateway-providers.md", scripted)
    asyncio.run(namespace["scripted"]())  # type: ignore[operator]


def test_docs_import_only_public_paths() -> None:
    private = re.compile(r"from bastion\.[\w.]*\._\w+ import|import bastion\.[\w.]*\._\w+")
    pages = [*DOCS.glob("*.md"), DOCS.parent / "README.md", *(DOCS.parent / "examples").glob("*.py")]
    found = [f"{p.name}: {m.group(0)}" for p in pages for m in private.finditer(p.read_text())]
    assert not found, f"docs and examples must import public names only: {found}"


def test_the_sync_update_state_branches_like_the_async_one() -> None:
    from bastion.checkpoint import MemoryCheckpointer

    trip = run_blocks("orchestration.md", section("orchestration.md", "## Time travel"))["trip"]
    app = trip.compile(checkpointer=MemoryCheckpointer())  # type: ignore[attr-defined]
    app.invoke({}, thread_id="t")
    [before_book] = [s for s in app.get_state_history("t") if s.next == ("book",)]
    app.update_state("t", {"city": "Oslo"}, checkpoint_id=before_book.checkpoint_id)
    assert app.invoke(None, thread_id="t")["plan"] == "3 days in Oslo"
