"""OpticalMemory: ageing, the budget, downsizing, and the API an application uses."""

from __future__ import annotations

import time

import pytest
from PIL import Image

from docconv.compress import mode_side, mode_vision_tokens, render_text
from docconv.memory import FORGOTTEN, LEVELS, BudgetError, OpticalMemory, Schedule
from docconv.memory.schedule import DOWNSIZE_FILTER, page_vision_tokens, rank
from tests.memory.conftest import ROUND


def pixels(path) -> bytes:
    with Image.open(path) as image:
        return image.convert("RGB").tobytes()


def resized_along(image: Image.Image, levels: list[str]) -> Image.Image:
    """The test's own chain of resizes (Pillow, the documented filter), one level at a time."""
    for level in levels:
        if level == FORGOTTEN:
            break
        image = image.resize((mode_side(level), mode_side(level)), DOWNSIZE_FILTER)
    return image


def test_levels_are_the_square_modes_sharpest_first_with_the_models_token_counts():
    assert LEVELS == ("large", "base", "small", "tiny")
    assert [page_vision_tokens(level) for level in LEVELS] == [mode_vision_tokens(m) for m in LEVELS]
    assert page_vision_tokens(FORGOTTEN) == 0


def add_and_check(memory: OpticalMemory, pages, adds: int, budget: int) -> set[tuple[str, str]]:
    """Add ``pages`` ``adds`` times; after each add check the budget, the order of levels, and that
    every entry that went down holds exactly the resize of the image it had one level up."""
    schedule = memory.schedule
    seen: dict[int, tuple[str, Image.Image]] = {}  # entry -> (level last seen, its image then)
    faded = set()
    for number in range(adds):
        added = memory.add_pages(pages, {"round": number})
        assert added.mode == schedule.first and added.age == 0
        entries = memory.entries()
        assert sum(entry.vision_tokens for entry in entries) <= budget
        assert [entry.id for entry in entries] == sorted(entry.id for entry in entries)
        # Older entries are never sharper than younger ones.
        levels = [entry.level for entry in entries]
        assert levels == sorted(levels, reverse=True)
        for entry in entries:
            assert entry.age == added.id - entry.id  # one step per add
            previous = seen.get(entry.id)
            if previous is not None and previous[0] != entry.mode:
                assert rank(entry.mode) > rank(previous[0])  # levels never rise
                expected = resized_along(previous[1], schedule.path(previous[0], entry.mode))
                assert pixels(entry.images[0]) == expected.tobytes(), (entry.id, previous[0], entry.mode)
                faded.add((previous[0], entry.mode))
            if previous is None or previous[0] != entry.mode:
                with Image.open(entry.images[0]) as image:
                    seen[entry.id] = (entry.mode, image.convert("RGB"))
                    assert image.size == (mode_side(entry.mode),) * 2
        for gone in set(seen) - {entry.id for entry in entries}:
            seen.pop(gone)
    assert memory.forgotten_count() == adds - len(memory.entries())
    # Only the held images remain on disk.
    held = {path.name for entry in memory.entries() for path in entry.images}
    assert {path.name for path in memory.store.images.iterdir()} == held
    return faded


@pytest.mark.slow
def test_200_adds_keep_the_budget_age_downward_and_downsize_from_the_previous_level(
    open_memory, count_tokens
):
    # Small pages keep 200 adds quick; the next test walks the default ladder from large.
    pages = render_text(ROUND, mode="small", ratio=4.0, count_tokens=count_tokens)
    budget = 700  # 3 small + 6 tiny pages: the budget forgets entries long before age 40 does
    memory = open_memory(schedule="small:0,tiny:3,forgotten:40", budget=budget)
    assert add_and_check(memory, pages, 200, budget) == {("small", "tiny")}
    assert memory.forgotten_count() > 150


@pytest.mark.slow
def test_the_default_ladder_under_a_budget(open_memory, round_pages):
    budget = 1500  # about four large pages
    memory = open_memory(budget=budget)
    assert str(memory.schedule) == "large:0,base:2,small:4,tiny:8,forgotten:16"
    faded = add_and_check(memory, round_pages, 12, budget)
    assert {("large", "base"), ("base", "small"), ("small", "tiny")} <= faded


def test_the_schedule_alone_fades_entries_by_age(open_memory, round_pages):
    memory = open_memory(schedule="large:0,base:1,tiny:3,forgotten:5")
    for _ in range(6):
        memory.add_pages(round_pages)
    assert [(entry.age, entry.mode) for entry in memory.entries()] == [
        (4, "tiny"),
        (3, "tiny"),
        (2, "base"),
        (1, "base"),
        (0, "large"),
    ]
    assert memory.forgotten_count() == 1


def test_the_oldest_entries_go_down_first_under_the_budget(open_memory, round_pages):
    large, base = page_vision_tokens("large"), page_vision_tokens("base")
    budget = 2 * large + base
    # Ages far beyond the test: only the budget moves entries down this ladder.
    memory = open_memory(schedule="large:0,base:100,small:200,tiny:300", budget=budget)
    for _ in range(3):
        memory.add_pages(round_pages)
    # Three large pages do not fit; the oldest goes down one level and then they do.
    assert [entry.mode for entry in memory.entries()] == ["base", "large", "large"]
    memory.add_pages(round_pages)
    # The oldest goes all the way down (forgotten) before the next oldest loses a level.
    assert [(entry.id, entry.mode) for entry in memory.entries()] == [(2, "base"), (3, "large"), (4, "large")]
    assert memory.total_vision_tokens() == budget and memory.forgotten_count() == 1


def test_a_lower_budget_applies_at_once_and_a_too_small_one_refuses_the_add(
    open_memory, round_pages, tmp_path
):
    memory = open_memory()
    for _ in range(3):
        memory.add_pages(round_pages)
    assert [entry.mode for entry in memory.entries()] == ["base", "large", "large"]
    memory.close()
    smaller = open_memory(tmp_path / "store", budget=page_vision_tokens("large") + page_vision_tokens("tiny"))
    assert [(entry.id, entry.mode) for entry in smaller.entries()] == [(2, "tiny"), (3, "large")]
    tight = open_memory(tmp_path / "tight", budget=page_vision_tokens("tiny") - 1)
    with pytest.raises(BudgetError, match="budget"):
        tight.add_pages(round_pages)
    assert tight.entries() == [] and list(tight.store.images.iterdir()) == []


def test_an_add_refused_by_a_new_budget_leaves_the_store_and_its_settings_as_they_were(
    open_memory, round_pages, tmp_path
):
    memory = open_memory(tmp_path / "store", budget=2000)
    for _ in range(3):
        memory.add_pages(round_pages)
    before = [(entry.id, entry.mode) for entry in memory.entries()]
    memory.close()
    refused = open_memory(tmp_path / "store", budget=page_vision_tokens("tiny") - 1)
    with pytest.raises(BudgetError):
        refused.add_pages(round_pages)
    refused.close()
    again = open_memory(tmp_path / "store")
    assert again.budget == 2000 and [(entry.id, entry.mode) for entry in again.entries()] == before


def test_the_store_keeps_its_schedule_and_budget_until_told_otherwise(open_memory, tmp_path):
    first = open_memory(tmp_path / "store", schedule="large:0,small:2", budget=900)
    assert str(first.schedule) == "large:0,small:2" and first.budget == 900
    first.refresh()  # given settings are written with the next change or read; here, now
    first.close()
    again = open_memory(tmp_path / "store")
    assert str(again.schedule) == "large:0,small:2" and again.budget == 900
    again.close()
    changed = open_memory(tmp_path / "store", budget=0, clock="time")
    changed.refresh()
    assert changed.schedule == Schedule.default("time") and changed.budget == 0


def test_add_renders_the_text_at_the_first_level_and_keeps_text_only_when_asked(open_memory, tmp_path):
    kept = open_memory(tmp_path / "kept", keep_text=True)
    entry = kept.add(ROUND, {"role": "round"})
    assert entry.text == ROUND and entry.meta == {"role": "round"} and entry.mode == "large"
    assert entry.pages[0].span == (0, len(ROUND)) and 3.0 > entry.ratio > 0
    plain = open_memory(tmp_path / "plain")
    assert plain.add(ROUND).text is None
    with pytest.raises(ValueError, match="at least one page"):
        plain.add("   \n")


def test_a_long_entry_keeps_every_page_through_the_levels(open_memory, count_tokens):
    memory = open_memory(schedule="large:0,tiny:1", ratio=1.0)
    long = memory.add(" ".join([ROUND] * 8))
    assert len(long.pages) >= 2
    memory.add(ROUND)
    faded = memory.entry(long.id)
    assert faded.mode == "tiny" and len(faded.pages) == len(long.pages)
    assert faded.vision_tokens == len(long.pages) * page_vision_tokens("tiny")
    assert [page.span for page in faded.pages] == [page.span for page in long.pages]


def test_forget_and_clear(open_memory, round_pages):
    memory = open_memory()
    ids = [memory.add_pages(round_pages).id for _ in range(3)]
    memory.forget(ids[1])
    assert [entry.id for entry in memory.entries()] == [ids[0], ids[2]]
    with pytest.raises(KeyError, match=f"no entry {ids[1]}"):
        memory.forget(ids[1])
    assert memory.clear() == 2
    assert memory.entries() == [] and list(memory.store.images.iterdir()) == []
    assert memory.forgotten_count() == 3


def test_context_lists_the_images_oldest_first_with_a_prompt_ready_manifest(open_memory, round_pages):
    memory = open_memory(schedule="large:0,base:1", budget=5000)
    for number in range(3):
        memory.add_pages(round_pages, {"round": number})
    context = memory.context()
    entries = memory.entries()
    assert context.images == tuple(path for entry in entries for path in entry.images)
    manifest = context.manifest
    assert [e["meta"]["round"] for e in manifest["entries"]] == [0, 1, 2]
    assert manifest["total_vision_tokens"] == sum(entry.vision_tokens for entry in entries)
    assert manifest["budget"] == 5000
    images = [part["path"] for part in manifest["content"] if part["type"] == "image"]
    assert images == [str(path) for path in context.images]
    assert manifest["content"][0]["type"] == "text" and "base" in manifest["content"][0]["text"]


def test_the_time_clock_ages_entries_by_seconds(open_memory, round_pages):
    memory = open_memory(schedule="large:0,small:0.5s", clock="time")
    entry = memory.add_pages(round_pages)
    assert memory.entry(entry.id).mode == "large"
    time.sleep(0.6)
    aged = memory.entry(entry.id)
    assert aged.mode == "small" and aged.age >= 0.5


def test_two_handles_on_one_store_see_each_others_adds(open_memory, round_pages, tmp_path):
    one = open_memory(tmp_path / "store")
    two = OpticalMemory(tmp_path / "store")
    try:
        one.add_pages(round_pages)
        two.add_pages(round_pages)
        assert [entry.age for entry in one.entries()] == [1, 0]
    finally:
        two.close()
