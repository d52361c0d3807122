"""The memory store on disk: a directory with an SQLite index and the page images.

::

    STORE/
      memory.sqlite3      the index (stdlib sqlite3, WAL): settings, entries, their pages
      images/             one PNG per page of an entry at its current level

Every change is one ``BEGIN IMMEDIATE`` transaction, so concurrent writers (other processes)
take turns, and images are written inside it, atomically (:mod:`docconv.fsutil`), before the
rows that name them commit. A writer killed at any point therefore leaves either the whole
change or none of it; the only leftovers are image files no row names, which the next writer
deletes (it holds the write lock, so no other writer can be halfway through one).

The index is recognised before SQLite opens it, from its header: the ``application_id`` marks a
docconv memory index and ``user_version`` its format. A directory that is not a store, or whose
index is damaged, raises :class:`StoreError` and is left exactly as it was.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from docconv.fsutil import TEMP_MARKER, atomic_open

INDEX = "memory.sqlite3"
IMAGES = "images"
#: Written into the index's header (``PRAGMA application_id``): "dcmm", a docconv memory.
APPLICATION_ID = 0x64636D6D
#: The layout of the index's tables (``PRAGMA user_version``); a change that older code cannot
#: read gets a new number.
FORMAT_VERSION = 1
#: How long a writer waits for another process's transaction before giving up.
BUSY_TIMEOUT_S = 60.0

_SQLITE_MAGIC = b"SQLite format 3\x00"
_HEADER_SIZE = 100
_IMAGE_NAME = re.compile(r"e\d+-p\d+-[a-z]+\.png")

_SCHEMA = f"""
PRAGMA application_id = {APPLICATION_ID};
PRAGMA user_version = {FORMAT_VERSION};
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    step INTEGER NOT NULL,          -- the store's add count when it was added
    added_at REAL NOT NULL,         -- Unix time of the add
    level TEXT NOT NULL,            -- the mode its images are held at
    ratio_target REAL NOT NULL,     -- the --ratio it was rendered with
    meta TEXT NOT NULL,             -- the caller's JSON object
    text TEXT                       -- the source text, only with keep_text
);
CREATE TABLE pages (
    entry INTEGER NOT NULL REFERENCES entries (id) ON DELETE CASCADE,
    number INTEGER NOT NULL,        -- 1-based
    image TEXT NOT NULL UNIQUE,     -- file name in images/
    span_start INTEGER NOT NULL,    -- the characters of the source text it holds
    span_end INTEGER NOT NULL,
    text_tokens INTEGER NOT NULL,
    font_size REAL NOT NULL,
    legible INTEGER NOT NULL,
    PRIMARY KEY (entry, number)
);
"""


class StoreError(RuntimeError):
    """The store cannot be used as asked; the message names the path and what to do."""


def image_name(entry: int, page: int, level: str) -> str:
    """File name of one page image of ``entry`` held at ``level`` (written once, never changed)."""
    return f"e{entry}-p{page}-{level}.png"


class Transaction:
    """One change of the store: its SQL connection, and the image files it writes and drops."""

    def __init__(self, db: sqlite3.Connection, images: Path) -> None:
        self.db = db
        self._images = images
        self.written: list[Path] = []
        self.dropped: list[Path] = []

    def image_path(self, name: str) -> Path:
        return self._images / name

    def save_image(self, name: str, image: Image.Image) -> None:
        """Write ``image`` as ``name`` (deterministic PNG, lossless) before the rows naming it commit."""
        path = self._images / name
        with atomic_open(path, "wb", encoding=None) as handle:
            # Level 1: every add writes and downsizes several pages, and on these text pages
            # zlib's fastest level is ~2x faster than the default and no larger.
            image.save(handle, format="PNG", compress_level=1)
        self.written.append(path)

    def drop_image(self, name: str) -> None:
        """Delete ``name`` once the change has committed (until then the old rows still name it)."""
        self.dropped.append(self._images / name)


class Store:
    """An open store; use :meth:`read` and :meth:`write` for every access to the index."""

    def __init__(self, root: Path, db: sqlite3.Connection) -> None:
        self.root = root
        self.images = root / IMAGES
        self._db = db

    @classmethod
    def open(cls, root: str | os.PathLike[str], create: bool = False) -> Store:
        """Open the store at ``root``; with ``create``, make it first if the directory is new or empty."""
        path = Path(root)
        index = path / INDEX
        if _needs_creating(path, create):
            _create_index(path)
        _check_header(index)
        _check_tables(index)
        store = cls(path, _connect(index))
        store.images.mkdir(exist_ok=True)
        return store

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def image_path(self, name: str) -> Path:
        return self.images / name

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot of the index (a read transaction)."""
        with self._errors():
            self._db.execute("BEGIN DEFERRED")
            try:
                yield self._db
            finally:
                self._db.execute("COMMIT")

    @contextlib.contextmanager
    def write(self) -> Iterator[Transaction]:
        """One atomic change: commits if the block succeeds, else leaves the store as it was."""
        with self._errors():
            self._db.execute("BEGIN IMMEDIATE")
            transaction = Transaction(self._db, self.images)
            try:
                self._sweep()
                yield transaction
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                _unlink_all(transaction.written)
                raise
        _unlink_all(transaction.dropped)

    def _sweep(self) -> None:
        """Delete images no row names: leftovers of a writer killed before or after its commit."""
        named = {name for (name,) in self._db.execute("SELECT image FROM pages")}
        for path in self.images.iterdir():
            ours = _IMAGE_NAME.fullmatch(path.name) or TEMP_MARKER in path.name
            if ours and path.name not in named:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as error:
            if "locked" in str(error) or "busy" in str(error):
                raise StoreError(
                    f"{self.root}: the store stayed busy for {BUSY_TIMEOUT_S:g} s "
                    "(another process is writing); try again"
                ) from None
            raise _damaged(self.root / INDEX, error) from None
        except sqlite3.DatabaseError as error:
            raise _damaged(self.root / INDEX, error) from None


def _needs_creating(root: Path, create: bool) -> bool:
    """Whether ``root`` is a place for a new store; raises for one that is neither new nor a store."""
    if root.exists() and not root.is_dir():
        raise StoreError(f"{root}: not a directory; a memory store is a directory")
    if (root / INDEX).exists():
        return False
    others = sorted(p.name for p in root.iterdir() if TEMP_MARKER not in p.name) if root.exists() else []
    if others:
        raise StoreError(
            f"{root}: not a docconv memory store (it holds {others[0]!r} but no {INDEX}); "
            "give a new or empty directory"
        )
    if not create:
        raise StoreError(f"{root}: no memory store here; `docconv memory add {root} FILE` creates one")
    root.mkdir(parents=True, exist_ok=True)
    return True


def _create_index(root: Path) -> None:
    """Build the index under a temporary name, then link it in: a store has a whole index or none.

    Two processes creating the same store race on the link; the loser uses the winner's index.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{INDEX}{TEMP_MARKER}", dir=root)
    os.close(fd)
    try:
        db = sqlite3.connect(tmp, isolation_level=None)
        try:
            db.executescript(_SCHEMA)
            # Set last: the header then says WAL, and closing checkpoints everything into the file.
            db.execute("PRAGMA journal_mode=WAL")
        finally:
            db.close()
        with contextlib.suppress(FileExistsError):
            os.link(tmp, root / INDEX)
    finally:
        _unlink_all([Path(tmp)])


def _check_header(index: Path) -> None:
    """Recognise the index from its first bytes, without letting SQLite open (or touch) it."""
    try:
        with index.open("rb") as handle:
            header = handle.read(_HEADER_SIZE)
    except OSError as error:
        raise StoreError(f"{index}: cannot read the store's index ({error.strerror})") from None
    if len(header) < _HEADER_SIZE or not header.startswith(_SQLITE_MAGIC):
        raise _damaged(index, "not an SQLite database")
    if int.from_bytes(header[68:72], "big") != APPLICATION_ID:
        raise StoreError(
            f"{index}: an SQLite database of another program, not a docconv memory store; "
            "give a new or empty directory"
        )
    version = int.from_bytes(header[60:64], "big")
    if version != FORMAT_VERSION:
        raise StoreError(
            f"{index}: memory store format {version}, but this docconv reads format {FORMAT_VERSION}; "
            "use the docconv version that wrote it"
        )


def _check_tables(index: Path) -> None:
    """Read the index once as an immutable file: a damaged one fails here, before a normal
    connection would leave -wal and -shm files next to it.

    Only while no write-ahead log exists: with one, another process has the store open (and may
    be copying the log into the file, which an immutable reader must not see half done), or one
    was killed and a normal connection must first recover the log.
    """
    if index.with_name(index.name + "-wal").exists():
        return
    try:
        probe = sqlite3.connect(f"{index.resolve().as_uri()}?immutable=1", uri=True)
        try:
            for table in ("settings", "entries", "pages"):
                probe.execute(f"SELECT count(*) FROM {table}").fetchone()
        finally:
            probe.close()
    except sqlite3.DatabaseError as error:
        raise _damaged(index, error) from None


def _connect(index: Path) -> sqlite3.Connection:
    try:
        db = sqlite3.connect(index, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        db.execute("PRAGMA foreign_keys = ON")
        # FULL: a commit is on disk before it returns, not only in the OS's cache.
        db.execute("PRAGMA synchronous = FULL")
    except sqlite3.DatabaseError as error:
        raise _damaged(index, error) from None
    return db


def _damaged(index: Path, why: object) -> StoreError:
    return StoreError(
        f"{index}: the store's index is damaged ({why}); it was left untouched: restore it from a "
        "backup, or start a new store in another directory"
    )


def _unlink_all(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
