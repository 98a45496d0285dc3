"""The README and docs/ stay true: their runnable examples run and print what they say, and
every relative link resolves to a file (and heading) of the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#+\s+(.*)$", re.MULTILINE)
_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def _anchor(heading: str) -> str:
    # GitHub's rule for ASCII headings: lower case, punctuation dropped, spaces to hyphens.
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _python_blocks(page: Path) -> list[str]:
    return _BLOCK.findall(page.read_text(encoding="utf-8"))


def test_the_pages_exist() -> None:
    # Counterfactual: a doc renamed or deleted without its links would pass the link test
    # vacuously for the pages it no longer finds.
    names = {p.name for p in PAGES}
    assert {"README.md", "behaviour.md", "sync.md", "replay.md", "gateway.md"} <= names
    assert {"performance.md", "index-internals.md"} <= names


def test_readme_is_a_front_page() -> None:
    # Counterfactual: appended sections would grow it back into a lab notebook.
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 150


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for link in _LINK.findall(page.read_text(encoding="utf-8")):
        if link.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, fragment = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists() or ROOT not in (target, *target.parents):
            broken.append(link)
        elif fragment:
            headings = {_anchor(h) for h in _HEADING.findall(target.read_text(encoding="utf-8"))}
            if fragment not in headings:
                broken.append(link)
    assert broken == [], f"{page.name}: links to nothing in the repository: {broken}"


def _run(code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # examples may write files
    exec(compile(code, "<doc example>", "exec"), {"__name__": "__doc_example__"})


def test_readme_quick_start_routes_as_its_comments_say(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (code,) = _python_blocks(ROOT / "README.md")
    _run(code, tmp_path, monkeypatch)
    # Cold, then warm on the same replica, then moved by the load guard.
    assert capsys.readouterr().out.split() == ["gpu-a", "gpu-a", "gpu-b"]


def test_sync_in_memory_example_shares_affinity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _python_blocks(ROOT / "docs" / "sync.md")[0]
    assert "InMemoryTransport" in code
    _run(code, tmp_path, monkeypatch)
    assert capsys.readouterr().out.splitlines() == [
        "ReplicaKey(node_id='gpu-2', replica=0)",
        "1 True",
    ]


def test_replay_own_trace_example_writes_a_trace_the_replay_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefixcache.replay import load_trace

    (code,) = _python_blocks(ROOT / "docs" / "replay.md")
    _run(code, tmp_path, monkeypatch)
    requests = load_trace(tmp_path / "my_trace.jsonl")
    assert [len(r.blocks) for r in requests] == [3, 4]
    # The second prompt extends the first, so they share its full leading blocks.
    assert requests[1].blocks[:2] == requests[0].blocks[:2]
    assert requests[1].blocks[2] != requests[0].blocks[2]
