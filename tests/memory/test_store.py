"""The store on disk: recognising it, refusing what is not one (untouched), concurrency, kill -9."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import sqlite3
import time
from pathlib import Path

import pytest
from PIL import Image

from docconv.compress import RenderedPage, mode_side
from docconv.fsutil import TEMP_MARKER
from docconv.memory import OpticalMemory, StoreError
from docconv.memory.store import APPLICATION_ID, FORMAT_VERSION, INDEX, Store

SPAWN = multiprocessing.get_context("spawn")  # real, fresh processes: no SQLite handle crosses a fork
BUDGET = 1400
PAGES_PER_ENTRY = 2  # so that half an entry would show


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` and a digest of its bytes."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def two_page_entry(png: Path) -> list[RenderedPage]:
    with Image.open(png) as image:
        page = image.convert("RGB")
    return [
        RenderedPage(image=page, text="x", span=(i, i + 1), text_tokens=500, vision_tokens=400, ratio=1.25,
                     font_size=14.0, legible=True)
        for i in range(PAGES_PER_ENTRY)
    ]  # fmt: skip


@pytest.fixture
def page_png(tmp_path: Path, round_pages) -> Path:
    path = tmp_path / "page.png"
    round_pages[0].image.save(path)
    return path


def check_consistent(root: Path) -> list[int]:
    """The store opens, its index passes SQLite's integrity check, and every entry is whole."""
    with OpticalMemory(root, create=False) as memory:
        entries = memory.entries()
        for entry in entries:
            assert len(entry.pages) == PAGES_PER_ENTRY, entry
            for path in entry.images:
                with Image.open(path) as image:
                    assert image.size == (mode_side(entry.mode),) * 2
                    image.load()  # the whole file is there, not a torn write
        assert sum(entry.vision_tokens for entry in entries) <= memory.budget
    index = sqlite3.connect(root / INDEX)
    try:
        assert index.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        index.close()
    return [entry.id for entry in entries]


# -- recognising a store ------------------------------------------------------------------------


def test_a_new_store_is_marked_in_its_header_and_reopens(tmp_path):
    with OpticalMemory(tmp_path / "store", budget=300):
        pass
    header = (tmp_path / "store" / INDEX).read_bytes()[:100]
    assert int.from_bytes(header[68:72], "big") == APPLICATION_ID
    assert int.from_bytes(header[60:64], "big") == FORMAT_VERSION
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["images", INDEX]
    with OpticalMemory(tmp_path / "store", create=False) as memory:
        assert memory.budget == 300


def refuses_untouched(root: Path, match: str) -> None:
    before = snapshot(root)
    with pytest.raises(StoreError, match=match):
        OpticalMemory(root)
    assert snapshot(root) == before


def test_a_foreign_directory_is_refused_and_left_alone(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("buy milk")
    refuses_untouched(tmp_path / "notes", "not a docconv memory store")


def test_a_garbage_index_is_refused_and_left_alone(tmp_path):
    root = tmp_path / "store"
    OpticalMemory(root).close()
    (root / INDEX).write_bytes(b"this is not a database" * 40)
    refuses_untouched(root, "damaged")


def test_a_damaged_index_with_a_valid_header_is_refused(tmp_path, round_pages):
    root = tmp_path / "store"
    with OpticalMemory(root) as memory:
        memory.add_pages(round_pages)
    data = bytearray((root / INDEX).read_bytes())
    data[100:] = b"\xff" * (len(data) - 100)  # every page but the header's first bytes destroyed
    (root / INDEX).write_bytes(bytes(data))
    before = {name: digest for name, digest in snapshot(root).items()}
    with pytest.raises(StoreError, match="damaged"):
        OpticalMemory(root)
    assert snapshot(root) == before


def test_another_programs_sqlite_database_is_refused_and_left_alone(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    other = sqlite3.connect(root / INDEX)
    other.execute("CREATE TABLE settings (key TEXT, value TEXT)")
    other.commit()
    other.close()
    refuses_untouched(root, "another program")


def test_a_store_of_another_format_is_refused(tmp_path):
    root = tmp_path / "store"
    OpticalMemory(root).close()
    index = sqlite3.connect(root / INDEX)
    index.execute(f"PRAGMA user_version = {FORMAT_VERSION + 1}")
    index.close()
    refuses_untouched(root, f"format {FORMAT_VERSION + 1}")


def test_a_file_or_a_missing_store_is_an_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="not a directory"):
        OpticalMemory(tmp_path / "file")
    with pytest.raises(StoreError, match="no memory store here"):
        OpticalMemory(tmp_path / "missing", create=False)
    assert not (tmp_path / "missing").exists()


def test_the_next_change_deletes_leftovers_of_a_killed_writer(tmp_path, round_pages):
    root = tmp_path / "store"
    with OpticalMemory(root) as memory:
        kept = memory.add_pages(round_pages)
        (memory.store.images / "e99-p1-large.png").write_bytes(b"left by a killed add")
        (memory.store.images / f".e98-p1-large.png{TEMP_MARKER}x1").write_bytes(b"torn")
        (memory.store.images / "mine.txt").write_text("not ours: kept")
        memory.add_pages(round_pages)
        names = {path.name for path in memory.store.images.iterdir()}
    assert names == {kept.images[0].name, "e2-p1-large.png", "mine.txt"}


# -- real processes -----------------------------------------------------------------------------


def _add_entries(root: str, png: str, count: int, start: multiprocessing.synchronize.Barrier) -> None:
    pages = two_page_entry(Path(png))
    start.wait()
    with OpticalMemory(root, budget=BUDGET) as memory:
        for number in range(count):
            memory.add_pages(pages, {"pid": os.getpid(), "number": number})


def _add_forever(root: str, png: str) -> None:
    pages = two_page_entry(Path(png))
    with OpticalMemory(root, budget=BUDGET) as memory:
        while True:
            memory.add_pages(pages)


@pytest.mark.slow
def test_two_processes_create_and_add_at_once(tmp_path, page_png):
    root = tmp_path / "store"  # does not exist yet: both processes create it
    start = SPAWN.Barrier(2)
    workers = [
        SPAWN.Process(target=_add_entries, args=(str(root), str(page_png), 4, start)) for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=180)
    assert [worker.exitcode for worker in workers] == [0, 0]
    check_consistent(root)
    with Store.open(root) as store, store.read() as db:
        step, forgotten = counter(db, "step"), counter(db, "forgotten")
        held = db.execute("SELECT count(*) FROM entries").fetchone()[0]
    assert step == 8 and held + forgotten == 8  # every add of both processes happened, once


def leftovers(root: Path) -> set[str]:
    """Files in images/ that no entry names: what a writer killed inside a change left."""
    with OpticalMemory(root, create=False) as memory:
        named = {path.name for entry in memory.entries() for path in entry.images}
    return {path.name for path in (root / "images").iterdir()} - named


def counter(db, key: str) -> int:
    """A counter of the settings table: 'step' (adds so far) or 'forgotten'; 0 before its first."""
    row = db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
    return int(row[0]) if row else 0


def adds_so_far(root: Path) -> int:
    with Store.open(root) as store, store.read() as db:
        return counter(db, "step")


@pytest.mark.slow
def test_kill_9_in_the_middle_of_adds_leaves_whole_entries_or_none(tmp_path, page_png):
    root = tmp_path / "store"
    OpticalMemory(root, budget=BUDGET).close()
    rng = random.Random(18)
    inside_an_add = 0
    for _ in range(3):
        before = adds_so_far(root)
        worker = SPAWN.Process(target=_add_forever, args=(str(root), str(page_png)))
        worker.start()
        deadline = time.monotonic() + 600  # generous: a loaded CI machine starts processes slowly
        while adds_so_far(root) == before:
            assert worker.is_alive() and time.monotonic() < deadline, "the adding process never added"
            time.sleep(0.1)
        time.sleep(rng.random() * 0.5)  # somewhere inside a later add: it adds without pause
        worker.kill()  # SIGKILL
        worker.join()
        assert worker.exitcode == -9
        ids = check_consistent(root)
        inside_an_add += bool(leftovers(root))
        # Entries are whole, and the held ones are the newest, without gaps, up to the last add.
        assert ids == list(range(ids[0], ids[-1] + 1)) and ids[-1] == adds_so_far(root) > before
    # Killed with files of an unfinished add on disk: the kills did land inside adds.
    assert inside_an_add >= 1
    # The next writer sweeps what a killed one left; then exactly the held images remain.
    with OpticalMemory(root) as memory:
        memory.forget(memory.entries()[0])
        names = {path.name for path in memory.store.images.iterdir()}
        assert names == {path.name for entry in memory.entries() for path in entry.images}
