"""Levels and the forgetting schedule: how old an entry may get before it is downsized.

A level is one of the model's square, untiled resolution modes (large 1280, base 1024, small
640, tiny 512 pixels; :data:`docconv.compress.COMPRESS_MODES`), or :data:`FORGOTTEN` (no image
left). A schedule maps an entry's age to a level; ages count added entries (``steps`` clock)
or seconds since the entry was added (``time`` clock). It is written as
``LEVEL:AGE,LEVEL:AGE,...``, each level holding from its age on, e.g. the default
``large:0,base:2,small:4,tiny:8,forgotten:16``; time ages take a unit (``s``, ``m``, ``h``,
``d``, ``w``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from PIL import Image

from docconv.compress import COMPRESS_MODES, mode_side, mode_vision_tokens

#: The level of an entry whose images are gone.
FORGOTTEN = "forgotten"

#: The modes a page can be rendered for (square, untiled), sharpest first: the levels an entry
#: can be held at. Each is a plain resize of the page, so a lower level is the previous level's
#: image made smaller.
LEVELS: tuple[str, ...] = tuple(sorted(COMPRESS_MODES, key=mode_side, reverse=True))

STEPS = "steps"
TIME = "time"
CLOCKS = (STEPS, TIME)

#: Each level from an age on; steps: number of entries added since; time: seconds since added.
DEFAULT_SCHEDULES: dict[str, str] = {
    STEPS: "large:0,base:2,small:4,tiny:8,forgotten:16",
    TIME: "large:0,base:1h,small:1d,tiny:1w,forgotten:30d",
}

#: Pillow's filter for every downsizing step. Fixed, so a level's image is reproducible from
#: the previous one (the tests recompute it); Lanczos keeps strokes as sharp as the size allows.
DOWNSIZE_FILTER = Image.Resampling.LANCZOS

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")


class ScheduleError(ValueError):
    """A schedule that cannot be used; the message says what to write instead."""


def page_vision_tokens(level: str) -> int:
    """Vision tokens the model reads one page image of ``level`` through (0 once forgotten)."""
    return 0 if level == FORGOTTEN else mode_vision_tokens(level)


def rank(level: str) -> int:
    """0 for the sharpest level, growing as information is lost; FORGOTTEN ranks last."""
    return len(LEVELS) if level == FORGOTTEN else LEVELS.index(level)


def downsize(image: Image.Image, level: str) -> Image.Image:
    """The page image one level down: ``image`` resized to ``level``'s side with the fixed filter."""
    side = mode_side(level)
    return image.resize((side, side), DOWNSIZE_FILTER)


@dataclass(frozen=True)
class Schedule:
    """Ordered ``(level, from_age)`` steps; the first starts at age 0, levels only go down."""

    steps: tuple[tuple[str, float], ...]
    clock: str = STEPS

    def __post_init__(self) -> None:
        _validate(self.steps, self.clock)

    @classmethod
    def parse(cls, text: str, clock: str = STEPS) -> Schedule:
        """``large:0,base:2,...`` (see the module doc) on ``clock``."""
        if clock not in CLOCKS:
            raise ScheduleError(f"unknown clock {clock!r}; use one of: {', '.join(CLOCKS)}")
        steps = []
        for part in text.split(","):
            level, sep, age = part.strip().partition(":")
            if not sep:
                raise ScheduleError(f"schedule step {part.strip()!r}: write LEVEL:AGE, e.g. base:2")
            steps.append((level.strip(), _parse_age(age.strip(), clock)))
        return cls(tuple(steps), clock)

    @classmethod
    def default(cls, clock: str = STEPS) -> Schedule:
        return cls.parse(DEFAULT_SCHEDULES[clock], clock)

    def __str__(self) -> str:
        return ",".join(f"{level}:{_format_age(age, self.clock)}" for level, age in self.steps)

    @property
    def levels(self) -> tuple[str, ...]:
        """The levels an entry passes through, sharpest first (FORGOTTEN last if scheduled)."""
        return tuple(level for level, _ in self.steps)

    @property
    def first(self) -> str:
        """The level a new entry is rendered at."""
        return self.steps[0][0]

    def level_at(self, age: float) -> str:
        """The level an entry of ``age`` is due for."""
        due = self.steps[0][0]
        for level, start in self.steps:
            if age >= start:
                due = level
        return due

    def below(self, level: str) -> str:
        """The next level down from ``level`` in this schedule: the sharpest one that is smaller."""
        for candidate in self.levels:
            if rank(candidate) > rank(level):
                return candidate
        return FORGOTTEN

    def path(self, start: str, end: str) -> list[str]:
        """The levels an image passes through on its way down from ``start`` to ``end``, ``end`` included."""
        levels = []
        level = start
        while rank(level) < rank(end):
            level = self.below(level)
            if rank(level) > rank(end):
                level = end
            levels.append(level)
        return levels


def _validate(steps: tuple[tuple[str, float], ...], clock: str) -> None:
    if clock not in CLOCKS:
        raise ScheduleError(f"unknown clock {clock!r}; use one of: {', '.join(CLOCKS)}")
    if not steps:
        raise ScheduleError("a schedule needs at least one level, e.g. large:0")
    known = (*LEVELS, FORGOTTEN)
    for level, _ in steps:
        if level not in known:
            raise ScheduleError(f"unknown level {level!r} in the schedule; levels: {', '.join(known)}")
    if steps[0][1] != 0:
        raise ScheduleError(f"the schedule's first level must start at age 0, not {steps[0][1]:g}")
    if steps[0][0] == FORGOTTEN:
        raise ScheduleError("the schedule's first level cannot be 'forgotten'")
    for (level, age), (next_level, next_age) in zip(steps, steps[1:], strict=False):
        if next_age <= age:
            raise ScheduleError(
                f"schedule ages must increase: {next_level}:{next_age:g} after {level}:{age:g}"
            )
        if rank(next_level) <= rank(level):
            raise ScheduleError(
                f"schedule levels must get smaller ({', '.join(known)}): {next_level} after {level}"
            )


def _parse_age(text: str, clock: str) -> float:
    match = _AGE.fullmatch(text)
    if match is None:
        raise ScheduleError(
            f"schedule age {text!r}: expected a number" + (" with s, m, h, d or w" if clock == TIME else "")
        )
    number, unit = match.groups()
    if clock == STEPS:
        if unit or "." in number:
            raise ScheduleError(f"schedule age {text!r}: the steps clock counts entries, give a whole number")
        return int(number)
    return float(number) * _UNITS[unit or "s"]


def _format_age(age: float, clock: str) -> str:
    if clock == STEPS or age == 0:
        return str(int(age))
    for unit in ("w", "d", "h", "m"):
        if age % _UNITS[unit] == 0:
            return f"{int(age // _UNITS[unit])}{unit}"
    return f"{age:g}s"
