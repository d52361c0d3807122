"""recall: the engine (the tiny real checkpoint) reads entries back from their current images."""

from __future__ import annotations

import pytest

from docconv.engines import create_engine
from docconv.engines.base import EngineOptions
from docconv.memory.schedule import page_vision_tokens


@pytest.fixture(scope="module")
def tiny_engine(tiny_model_dir):
    return create_engine(EngineOptions(model=str(tiny_model_dir), device="cpu"))


def test_recall_reads_each_entry_at_the_level_it_has_faded_to(open_memory, round_pages, tiny_engine):
    memory = open_memory(schedule="large:0,tiny:1")
    old = memory.add_pages(round_pages)
    new = memory.add_pages(round_pages)
    for entry, level in ((old, "tiny"), (new, "large")):
        recollection = memory.recall(entry.id, tiny_engine, max_new_tokens=3)
        assert recollection.entry.mode == level
        # The engine was given the held image in the held mode: it reports that level's tokens.
        assert recollection.vision_tokens == (page_vision_tokens(level),) * len(round_pages)
        assert len(recollection.pages) == len(round_pages)
        assert all(isinstance(text, str) for text in recollection.pages)
    with pytest.raises(KeyError, match="no entry 99"):
        memory.recall(99, tiny_engine)
