"""Optical memory: entries kept as page images that fade by downsizing as they age (``docconv memory``).

:class:`OpticalMemory` is the API an application uses; ``docconv memory`` wraps it. The idea,
the schedule and the budget rule are in ``docs/forgetting.md``.
"""

from __future__ import annotations

from docconv.memory.memory import (
    DEFAULT_RATIO,
    NO_BUDGET,
    BudgetError,
    Entry,
    MemoryContext,
    MemoryPage,
    OpticalMemory,
    Recollection,
)
from docconv.memory.schedule import FORGOTTEN, LEVELS, Schedule, ScheduleError
from docconv.memory.store import StoreError

__all__ = [
    "DEFAULT_RATIO",
    "FORGOTTEN",
    "LEVELS",
    "NO_BUDGET",
    "BudgetError",
    "Entry",
    "MemoryContext",
    "MemoryPage",
    "OpticalMemory",
    "Recollection",
    "Schedule",
    "ScheduleError",
    "StoreError",
]
