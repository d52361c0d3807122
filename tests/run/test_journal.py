"""The page journal: durable per page, tolerant of a torn last line, invalidated by changes."""

from __future__ import annotations

from pathlib import Path

from docconv.output.document import Block, Page
from docconv.run.journal import Journal, fingerprint, journal_path


def _page(number: int) -> Page:
    return Page(
        number=number,
        width=10,
        height=20,
        mode="base",
        raw=f"raw {number}",
        blocks=[Block(type="text", text=f"text {number}", bboxes=[(0, 0, 5, 5)])],
    )


def test_recorded_pages_survive_a_new_journal(tmp_path: Path) -> None:
    path = journal_path(tmp_path / "out.md")
    with Journal(path, "digest") as journal:
        journal.record(_page(1))
        journal.record(_page(2))
    reopened = Journal(path, "digest")
    assert sorted(reopened.finished) == [1, 2]
    assert reopened.finished[2].blocks[0].text == "text 2"


def test_torn_last_line_is_dropped_and_appending_continues(tmp_path: Path) -> None:
    path = journal_path(tmp_path / "out.md")
    with Journal(path, "digest") as journal:
        journal.record(_page(1))
    with path.open("a") as handle:
        handle.write('{"number": 2, "wid')  # a run killed mid-write
    with Journal(path, "digest") as journal:
        assert sorted(journal.finished) == [1]
        journal.record(_page(2))
    assert sorted(Journal(path, "digest").finished) == [1, 2]


def test_changed_fingerprint_discards_the_journal(tmp_path: Path) -> None:
    path = journal_path(tmp_path / "out.md")
    with Journal(path, fingerprint("a.pdf:1", {"mode": "base"})) as journal:
        journal.record(_page(1))
    assert Journal(path, fingerprint("a.pdf:1", {"mode": "large"})).finished == {}
    assert Journal(path, fingerprint("a.pdf:2", {"mode": "base"})).finished == {}


def test_remove_deletes_the_file(tmp_path: Path) -> None:
    path = journal_path(tmp_path / "out.md")
    journal = Journal(path, "d")
    journal.record(_page(1))
    journal.remove()
    assert not path.exists()


def test_journal_is_hidden_next_to_the_output(tmp_path: Path) -> None:
    path = journal_path(tmp_path / "sub" / "out.md")
    assert path.parent == tmp_path / "sub" and path.name.startswith(".out.md")
