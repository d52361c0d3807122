"""Optical memory: text kept as page images that fade by downsizing as the entry ages.

The idea is the one the DeepSeek-OCR paper ends on (arXiv 2510.18234, Figure 13): render each
round of context onto images, keep recent rounds sharp, and shrink older images step by step,
so their vision tokens fall and their text blurs until it is gone. :class:`OpticalMemory`
implements it over a :class:`~docconv.memory.store.Store`: :meth:`~OpticalMemory.add` renders
an entry with :func:`docconv.compress.render_text` at the schedule's first level; every change
then ages the entries (:mod:`docconv.memory.schedule`) and applies the budget, making each
lower level by resizing the previous level's image, never by rendering the text again.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from PIL import Image

from deepseek_ocr.prompts import TASK_PROMPTS
from docconv.compress import mode_side, render_text
from docconv.engines.base import EngineOptions
from docconv.memory.schedule import (
    FORGOTTEN,
    STEPS,
    TIME,
    Schedule,
    ScheduleError,
    downsize,
    page_vision_tokens,
    rank,
)
from docconv.memory.store import Store, StoreError, Transaction, image_name
from docconv.models.registry import DEFAULT_MODEL

if TYPE_CHECKING:
    from docconv.engines.base import Engine

#: ``add`` renders each page with about this many text tokens per vision token of the first
#: level: high fidelity (the paper's Fox study reads >= 97% back below 10x).
DEFAULT_RATIO = 4.0
#: ``budget=NO_BUDGET``: no limit on the store's vision tokens.
NO_BUDGET = 0

_SCHEDULE = "schedule"
_CLOCK = "clock"
_BUDGET = "budget"
_STEP = "step"
_FORGOTTEN = "forgotten"


class BudgetError(ValueError):
    """An entry that cannot fit the budget even at the smallest level with everything else forgotten."""


class RenderedPageLike(Protocol):
    """What :meth:`OpticalMemory.add_pages` needs of a page (``docconv.compress.RenderedPage`` has it)."""

    image: Image.Image
    span: tuple[int, int]
    text_tokens: int
    font_size: float
    legible: bool


@dataclass(frozen=True)
class MemoryPage:
    """One page image of an entry, at the entry's current level."""

    number: int
    image: Path
    span: tuple[int, int]
    text_tokens: int
    font_size: float
    legible: bool


@dataclass(frozen=True)
class Entry:
    """An entry as the memory holds it now."""

    id: int
    age: float  # entries added since (steps clock) or seconds since it was added (time clock)
    mode: str  # the level: the mode its images are held at
    pages: tuple[MemoryPage, ...]
    added_at: float
    ratio_target: float
    meta: dict[str, Any] = field(default_factory=dict)
    text: str | None = None  # the source text, only in a store that keeps it

    @property
    def level(self) -> int:
        """How far it has faded: 0 for large, then 1 base, 2 small, 3 tiny."""
        return rank(self.mode)

    @property
    def images(self) -> tuple[Path, ...]:
        return tuple(page.image for page in self.pages)

    @property
    def vision_tokens(self) -> int:
        """Vision tokens the model reads the entry through now (every page at its level)."""
        return len(self.pages) * page_vision_tokens(self.mode)

    @property
    def text_tokens(self) -> int:
        return sum(page.text_tokens for page in self.pages)

    @property
    def ratio(self) -> float:
        """Compression now: text tokens per vision token (it grows as the entry fades)."""
        return self.text_tokens / self.vision_tokens if self.vision_tokens else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The entry as ``docconv memory show --json`` and the context manifest give it."""
        return {
            "id": self.id,
            "age": self.age,
            "level": self.level,
            "mode": self.mode,
            "vision_tokens": self.vision_tokens,
            "image": str(self.images[0]),
            "images": [str(path) for path in self.images],
            "text_tokens": self.text_tokens,
            "ratio": round(self.ratio, 3),
            "added_at": self.added_at,
            "meta": self.meta,
        }


@dataclass(frozen=True)
class MemoryContext:
    """The memory as a vision-language model's prompt takes it: images in order, and a manifest."""

    images: tuple[Path, ...]
    manifest: dict[str, Any]


@dataclass(frozen=True)
class Recollection:
    """What the engine read back from an entry's current images, page by page."""

    entry: Entry
    pages: tuple[str, ...]
    vision_tokens: tuple[int, ...]  # what the engine read each page through (the level's count)

    @property
    def text(self) -> str:
        return "\n".join(self.pages)


class OpticalMemory:
    """A store of entries rendered as images that fade with age; usable without the CLI.

    ``schedule`` (a :class:`Schedule` or its text), ``clock`` and ``budget`` (vision tokens,
    :data:`NO_BUDGET` for none) are the store's own settings: a new store is made with them (or
    the defaults); an existing one keeps what it has unless they are given, and then they
    replace them within the next change
    (an add, forget or clear) or read (:meth:`entries`, :meth:`context`, ...), in its
    transaction: an add the new budget refuses leaves the old settings, too
    (:meth:`refresh` writes them without another change).
    ``engine`` names the model whose tokenizer counts an entry's text tokens (``count_tokens``
    replaces it) and which :meth:`recall` reads with when given no engine. ``keep_text`` keeps
    each added entry's source text (for evaluation); otherwise only the images remain.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        schedule: Schedule | str | None = None,
        budget: int | None = None,
        *,
        clock: str | None = None,
        ratio: float = DEFAULT_RATIO,
        keep_text: bool = False,
        engine: EngineOptions | None = None,
        count_tokens: Callable[[str], int] | None = None,
        create: bool = True,
    ) -> None:
        if budget is not None and budget < 0:
            raise BudgetError(f"budget must be a number of vision tokens (0 for none), not {budget}")
        if ratio <= 0:
            raise ValueError(f"ratio must be positive, not {ratio}")
        self.path = Path(path)
        self.ratio = ratio
        self.keep_text = keep_text
        self.engine_options = engine or EngineOptions(model=DEFAULT_MODEL)
        self._count_tokens = count_tokens
        self._engine: Engine | None = None
        self.store = Store.open(self.path, create=create)
        self._configure(schedule, budget, clock)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> OpticalMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- settings ---------------------------------------------------------------------------

    @property
    def schedule(self) -> Schedule:
        return _schedule_of(self._settings())

    @property
    def budget(self) -> int:
        return int(self._settings()[_BUDGET])

    def _settings(self) -> dict[str, str]:
        """The store's settings with those given to this handle and not yet written over them."""
        with self.store.read() as db:
            return _stored_settings(db) | self._pending

    def _configure(self, schedule: Schedule | str | None, budget: int | None, clock: str | None) -> None:
        self._pending: dict[str, str] = {}
        current = self._settings()
        wanted = _wanted_settings(current, schedule, budget, clock)
        self._pending = {key: value for key, value in wanted.items() if current.get(key) != value}
        if _SCHEDULE not in current:  # a new store: made with its settings, nothing to refuse yet
            self.refresh()

    @contextmanager
    def _change(self) -> Iterator[Transaction]:
        """One write transaction: the pending settings, the block's change, then the schedule and
        budget brought to bear (nothing to do when nothing is due)."""
        with self.store.write() as tx:
            for key, value in self._pending.items():
                tx.db.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", (key, value))
            yield tx
            self._settle(tx)
        self._pending = {}

    # -- changes ----------------------------------------------------------------------------

    def add(self, text: str, meta: Mapping[str, Any] | None = None, *, markdown: bool = True) -> Entry:
        """Render ``text`` (Markdown unless ``markdown`` is false) at the schedule's first level and
        store it as the newest entry; the others age by one step."""
        first = self.schedule.first
        pages = render_text(
            text, mode=first, ratio=self.ratio, count_tokens=self._token_counter(), markdown=markdown
        )
        return self.add_pages(pages, meta, text=text)

    def add_pages(
        self,
        pages: Sequence[RenderedPageLike],
        meta: Mapping[str, Any] | None = None,
        text: str | None = None,
    ) -> Entry:
        """Store already rendered pages (``render_text``'s, at the first level's size) as the newest entry.

        ``text`` is the source text, kept only when the memory keeps text.
        """
        meta_json = json.dumps(dict(meta or {}), ensure_ascii=False, sort_keys=True)
        with self._change() as tx:
            settings = _stored_settings(tx.db)
            schedule = _schedule_of(settings)
            _check_page_sizes(pages, schedule.first)
            step = int(settings[_STEP]) + 1
            tx.db.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", (_STEP, str(step)))
            cursor = tx.db.execute(
                "INSERT INTO entries (step, added_at, level, ratio_target, meta, text) VALUES (?, ?, ?, ?, ?, ?)",
                (step, time.time(), schedule.first, self.ratio, meta_json, text if self.keep_text else None),
            )
            entry_id = int(cursor.lastrowid or 0)
            for number, page in enumerate(pages, start=1):
                name = image_name(entry_id, number, schedule.first)
                tx.save_image(name, page.image.convert("RGB"))
                tx.db.execute(
                    "INSERT INTO pages VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (entry_id, number, name, *page.span, page.text_tokens, page.font_size, int(page.legible)),
                )
            self._settle(tx, added=entry_id)
            entry = _read_entry(tx.db, self.store, entry_id, _stored_settings(tx.db))
        if entry is None:  # pragma: no cover - _settle raises BudgetError instead of forgetting it
            raise BudgetError("the new entry did not fit the budget")
        return entry

    def forget(self, entry: int | Entry) -> None:
        """Drop an entry and its images now, whatever its age."""
        entry_id = entry.id if isinstance(entry, Entry) else int(entry)
        with self._change() as tx:
            if not _drop_entry(tx, entry_id):
                raise KeyError(f"{self.path}: no entry {entry_id} (it may have been forgotten already)")

    def clear(self) -> int:
        """Forget every entry; returns how many there were. The settings stay."""
        with self._change() as tx:
            ids = [entry_id for (entry_id,) in tx.db.execute("SELECT id FROM entries")]
            for entry_id in ids:
                _drop_entry(tx, entry_id)
        return len(ids)

    def refresh(self) -> None:
        """Write pending settings and age the entries to now (the time clock moves without adds)."""
        if self._pending or self.schedule.clock == TIME:
            with self._change():
                pass

    def _settle(self, tx: Transaction, added: int | None = None) -> None:
        """Bring every entry to the level its age and the budget allow, oldest first down."""
        settings = _stored_settings(tx.db)
        schedule = _schedule_of(settings)
        budget = int(settings[_BUDGET])
        rows = tx.db.execute(
            "SELECT e.id, e.step, e.added_at, e.level, count(p.number) FROM entries e "
            "JOIN pages p ON p.entry = e.id GROUP BY e.id ORDER BY e.id"
        ).fetchall()
        now_step, now = int(settings[_STEP]), time.time()
        current = {entry_id: level for entry_id, _, _, level, _ in rows}
        pages = {entry_id: count for entry_id, *_, count in rows}
        due = {
            entry_id: _lower(level, schedule.level_at(_age(schedule.clock, now_step - step, now - added_at)))
            for entry_id, step, added_at, level, _ in rows
        }
        if budget != NO_BUDGET:
            _fit_budget(due, pages, budget, schedule, added)
        for entry_id, level in due.items():
            if level != current[entry_id]:
                _fade(tx, entry_id, current[entry_id], level, schedule)

    # -- reading ----------------------------------------------------------------------------

    def entries(self) -> list[Entry]:
        """The entries held now, oldest first."""
        self.refresh()
        with self.store.read() as db:
            settings = _stored_settings(db)
            ids = [entry_id for (entry_id,) in db.execute("SELECT id FROM entries ORDER BY id")]
            entries = (_read_entry(db, self.store, entry_id, settings) for entry_id in ids)
            return [entry for entry in entries if entry is not None]

    def entry(self, entry_id: int) -> Entry:
        self.refresh()
        with self.store.read() as db:
            entry = _read_entry(db, self.store, entry_id, _stored_settings(db))
        if entry is None:
            raise KeyError(f"{self.path}: no entry {entry_id} (it may have been forgotten already)")
        return entry

    def total_vision_tokens(self) -> int:
        return sum(entry.vision_tokens for entry in self.entries())

    def forgotten_count(self) -> int:
        """How many entries have faded out (or were forgotten or cleared) so far."""
        return int(self._settings()[_FORGOTTEN])

    def context(self) -> MemoryContext:
        """Every held image, oldest first, with a manifest a vision-language model's prompt can take.

        The manifest's ``content`` is a list of chat content parts (``{"type": "text"}`` and
        ``{"type": "image", "path": ...}``, as transformers' chat templates read them).
        """
        entries = self.entries()
        _check_images_exist(entries)
        content: list[dict[str, Any]] = []
        for entry in entries:
            content.append({"type": "text", "text": _entry_caption(entry, self.schedule.clock)})
            content.extend({"type": "image", "path": str(path)} for path in entry.images)
        manifest = {
            "store": str(self.path),
            "clock": self.schedule.clock,
            "schedule": str(self.schedule),
            "entries": [entry.to_dict() for entry in entries],
            "total_vision_tokens": sum(entry.vision_tokens for entry in entries),
            "budget": self.budget,
            "content": content,
        }
        return MemoryContext(images=tuple(p for entry in entries for p in entry.images), manifest=manifest)

    def recall(
        self, entry: int | Entry, engine: Engine | None = None, max_new_tokens: int | None = None
    ) -> Recollection:
        """What the engine reads back from the entry's current images (plain OCR prompt)."""
        from docconv.engines.base import DEFAULT_GENERATION, PageJob

        held = self.entry(entry.id if isinstance(entry, Entry) else int(entry))
        _check_images_exist([held])
        reader = engine or self._default_engine()
        limit = max_new_tokens or DEFAULT_GENERATION.max_new_tokens
        jobs = []
        for page in held.pages:
            with Image.open(page.image) as image:
                jobs.append(
                    PageJob(image.convert("RGB"), held.mode, TASK_PROMPTS["text"], max_new_tokens=limit)
                )
        outputs = reader.generate(jobs)
        return Recollection(
            held, tuple(output.text for output in outputs), tuple(output.vision.valid for output in outputs)
        )

    def _default_engine(self) -> Engine:
        if self._engine is None:
            from docconv.engines import create_engine

            self._engine = create_engine(self.engine_options)
        return self._engine

    def _token_counter(self) -> Callable[[str], int]:
        if self._count_tokens is None:
            from docconv.engines import text_token_counter

            self._count_tokens = text_token_counter(self.engine_options)
        return self._count_tokens


# -- the rules ----------------------------------------------------------------------------------


def _age(clock: str, steps: int, seconds: float) -> float:
    return steps if clock == STEPS else max(0.0, seconds)


def _lower(level: str, other: str) -> str:
    """The more faded of two levels: an entry never gets sharper again."""
    return level if rank(level) >= rank(other) else other


def _fit_budget(
    due: dict[int, str], pages: Mapping[int, int], budget: int, schedule: Schedule, added: int | None
) -> None:
    """Lower the oldest entries, one level at a time, until the total fits ``budget``."""
    total = sum(pages[entry_id] * page_vision_tokens(level) for entry_id, level in due.items())
    for entry_id in sorted(due):  # ids grow with every add: oldest first
        while total > budget and due[entry_id] != FORGOTTEN:
            lower = schedule.below(due[entry_id])
            if entry_id == added and lower == FORGOTTEN:
                smallest = pages[entry_id] * page_vision_tokens(due[entry_id])
                raise BudgetError(
                    f"the entry needs {smallest} vision tokens even at its smallest level "
                    f"({pages[entry_id]} page(s) at {due[entry_id]}), more than the budget of {budget}; "
                    "raise --budget or add a shorter text"
                )
            total -= pages[entry_id] * (page_vision_tokens(due[entry_id]) - page_vision_tokens(lower))
            due[entry_id] = lower


def _fade(tx: Transaction, entry_id: int, start: str, end: str, schedule: Schedule) -> None:
    """Move an entry from ``start`` down to ``end``: each level is the resize of the previous one."""
    if end == FORGOTTEN:
        _drop_entry(tx, entry_id)
        return
    steps = schedule.path(start, end)
    for number, name in tx.db.execute(
        "SELECT number, image FROM pages WHERE entry = ?", (entry_id,)
    ).fetchall():
        with Image.open(tx.image_path(name)) as stored:
            image = stored.convert("RGB")
        for level in steps:
            image = downsize(image, level)
        faded = image_name(entry_id, number, end)
        tx.save_image(faded, image)
        tx.db.execute("UPDATE pages SET image = ? WHERE entry = ? AND number = ?", (faded, entry_id, number))
        tx.drop_image(name)
    tx.db.execute("UPDATE entries SET level = ? WHERE id = ?", (end, entry_id))


def _drop_entry(tx: Transaction, entry_id: int) -> bool:
    names = [name for (name,) in tx.db.execute("SELECT image FROM pages WHERE entry = ?", (entry_id,))]
    deleted = tx.db.execute("DELETE FROM entries WHERE id = ?", (entry_id,)).rowcount
    for name in names:
        tx.drop_image(name)
    if deleted:
        forgotten = int(_stored_settings(tx.db)[_FORGOTTEN]) + 1
        tx.db.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", (_FORGOTTEN, str(forgotten)))
    return bool(deleted)


def _check_page_sizes(pages: Sequence[RenderedPageLike], level: str) -> None:
    if not pages:
        raise ValueError("an entry needs at least one page")
    side = mode_side(level)
    for number, page in enumerate(pages, start=1):
        if page.image.size != (side, side):
            raise ValueError(
                f"page {number} is {page.image.width}x{page.image.height}; the first level ({level}) "
                f"holds {side}x{side} images"
            )


def _check_images_exist(entries: Sequence[Entry]) -> None:
    for entry in entries:
        for path in entry.images:
            if not path.is_file():
                raise StoreError(
                    f"{path}: image of entry {entry.id} is missing from the store; "
                    f"`docconv memory forget` the entry or restore the file"
                )


def _entry_caption(entry: Entry, clock: str) -> str:
    age = f"{entry.age:g} entries ago" if clock == STEPS else f"{entry.age:.0f} s ago"
    return (
        f"Memory entry {entry.id}, added {age}, held at {entry.mode} ({entry.vision_tokens} vision tokens):"
    )


# -- the index ----------------------------------------------------------------------------------


def _stored_settings(db: Any) -> dict[str, str]:
    """The settings rows, over the counters' starting values (a new store has no rows yet)."""
    return {_STEP: "0", _FORGOTTEN: "0"} | dict(db.execute("SELECT key, value FROM settings").fetchall())


def _schedule_of(settings: Mapping[str, str]) -> Schedule:
    return Schedule.parse(settings[_SCHEDULE], settings[_CLOCK])


def _wanted_settings(
    current: Mapping[str, str], schedule: Schedule | str | None, budget: int | None, clock: str | None
) -> dict[str, str]:
    """The store's settings after this open: the given ones over the stored ones over defaults."""
    stored_clock = current.get(_CLOCK, STEPS)
    if isinstance(schedule, Schedule):
        chosen = schedule
    elif schedule is not None:
        chosen = Schedule.parse(schedule, clock or stored_clock)
    elif (clock is not None and clock != stored_clock) or _SCHEDULE not in current:
        chosen = Schedule.default(clock or stored_clock)
    else:
        chosen = Schedule.parse(current[_SCHEDULE], stored_clock)
    if clock is not None and chosen.clock != clock:
        raise ScheduleError(f"the schedule {chosen} is on the {chosen.clock} clock, not {clock}")
    return {
        _SCHEDULE: str(chosen),
        _CLOCK: chosen.clock,
        _BUDGET: str(budget if budget is not None else int(current.get(_BUDGET, NO_BUDGET))),
    }


def _read_entry(db: Any, store: Store, entry_id: int, settings: Mapping[str, str]) -> Entry | None:
    row = db.execute(
        "SELECT step, added_at, level, ratio_target, meta, text FROM entries WHERE id = ?", (entry_id,)
    ).fetchone()
    if row is None:
        return None
    step, added_at, level, ratio_target, meta, text = row
    age = _age(settings[_CLOCK], int(settings[_STEP]) - step, time.time() - added_at)
    pages = tuple(
        MemoryPage(number, store.image_path(name), (start, end), tokens, font_size, bool(legible))
        for number, name, start, end, tokens, font_size, legible in db.execute(
            "SELECT number, image, span_start, span_end, text_tokens, font_size, legible FROM pages "
            "WHERE entry = ? ORDER BY number",
            (entry_id,),
        )
    )
    return Entry(entry_id, age, level, pages, added_at, ratio_target, json.loads(meta), text)
