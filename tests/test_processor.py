"""The DeepSeek-OCR processor reproduces the official ``infer()`` inputs exactly.

Parity cases come from the fixture set produced by the official implementation; the tables are
the test vectors of the spec (§5.2, §6.4, §11).
"""

from __future__ import annotations

import io
import json
import math
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.numpy import load_file

from deepseek_ocr.image_processing import ImageLoadError, load_image, render_views
from deepseek_ocr.modes import (
    MODES,
    ResolutionMode,
    candidate_grids,
    select_tile_grid,
    sequence_token_count,
    vision_budget,
)
from deepseek_ocr.processing import DeepseekOcrProcessor
from deepseek_ocr.prompts import TASK_PROMPTS, locate_prompt
from deepseek_ocr.tokenization import TokenizerError

from .conftest import PARITY, missing_shared_data, shared_params

CASES = sorted(path.parent for path in PARITY.glob("cases/*/meta.json"))
VIEW_DIRS = sorted(path.parent for path in PARITY.glob("preprocess/*/*/global_view.png"))
DECODED = sorted(PARITY.glob("preprocess/*/decoded_rgb.png"))
CASE_PARAMS = shared_params(CASES, "parity cases (cases/*/meta.json)", PARITY / "cases")


def _case_id(path: Path) -> str:
    return path.name


def _view_id(path: Path) -> str:
    return f"{path.parent.name}-{path.name}"


@cache
def _processor(model_dir: Path) -> DeepseekOcrProcessor:
    return DeepseekOcrProcessor.from_pretrained(model_dir)


def _case(case_dir: Path) -> tuple[dict, dict[str, np.ndarray], DeepseekOcrProcessor]:
    meta = json.loads((case_dir / "meta.json").read_text(encoding="utf-8"))
    expected = load_file(str(case_dir / "expected.safetensors"))
    return meta, expected, _processor(PARITY / "models" / f"seed{meta['seed']}")


def _mode_of(meta: dict) -> ResolutionMode:
    """The geometry the reference ran with, so fixture sets with other mode names still check out."""
    return ResolutionMode(meta["mode"], meta["base_size"], meta["image_size"], meta["crop_mode"])


@cache
def _modes_used_by_cases() -> dict[str, ResolutionMode]:
    metas = (json.loads((case / "meta.json").read_text(encoding="utf-8")) for case in CASES)
    return {meta["mode"]: _mode_of(meta) for meta in metas}


def _image_for_stem(stem: str) -> Path:
    (path,) = (PARITY / "images").glob(f"{stem}.*")
    return path


def _assert_view_statistics(values: torch.Tensor, expected: dict[str, np.ndarray], prefix: str) -> None:
    array = values.numpy()
    assert list(array.shape) == expected[f"{prefix}.shape"].tolist()
    np.testing.assert_array_equal(
        array.reshape(-1)[expected[f"{prefix}.sample_idx"]], expected[f"{prefix}.sample_val"]
    )
    as_double = array.astype(np.float64)
    np.testing.assert_allclose(as_double.sum(), expected[f"{prefix}.sum"][0], rtol=1e-9)
    np.testing.assert_allclose((as_double**2).sum(), expected[f"{prefix}.sumsq"][0], rtol=1e-9)
    np.testing.assert_allclose(as_double.sum(axis=(2, 3)), expected[f"{prefix}.channel_sum"], rtol=1e-9)


# ------------------------------------------------------------------------------------------------
# Parity with the official implementation
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case_dir", CASE_PARAMS, ids=_case_id)
def test_model_inputs_match_reference(case_dir: Path) -> None:
    meta, expected, processor = _case(case_dir)
    batch = processor(PARITY / "images" / meta["image"], meta["prompt"], _mode_of(meta))

    assert batch["input_ids"][0].tolist() == expected["input_ids"].tolist()
    assert batch["images_seq_mask"][0].tolist() == expected["images_seq_mask"].tolist()
    assert batch["images_spatial_crop"].tolist() == expected["images_spatial_crop"].tolist()
    _assert_view_statistics(batch["pixel_values"], expected, "images_ori")
    if expected["images_spatial_crop"].tolist() != [[1, 1]]:
        _assert_view_statistics(batch["pixel_values_tiles"], expected, "images_crop")
    else:
        assert batch["pixel_values_tiles"] is None


@pytest.mark.parametrize(
    "view_dir",
    shared_params(VIEW_DIRS, "reference views (preprocess/*/*/global_view.png)", PARITY / "preprocess"),
    ids=_view_id,
)
def test_uint8_views_match_reference_pngs(view_dir: Path) -> None:
    image = load_image(_image_for_stem(view_dir.parent.name))
    views = render_views(image, _modes_used_by_cases().get(view_dir.name, view_dir.name))

    np.testing.assert_array_equal(views.global_view, np.asarray(Image.open(view_dir / "global_view.png")))
    crops = sorted(view_dir.glob("crop_*.png"))
    if views.tiles is None:
        assert crops == []
    else:
        assert len(crops) == len(views.tiles)
        for tile, crop in zip(views.tiles, crops, strict=True):
            np.testing.assert_array_equal(tile, np.asarray(Image.open(crop)))


@pytest.mark.parametrize(
    "decoded",
    shared_params(DECODED, "reference decodes (preprocess/*/decoded_rgb.png)", PARITY / "preprocess"),
    ids=lambda path: path.parent.name,
)
def test_exif_jpeg_decodes_and_rotates_like_reference(decoded: Path) -> None:
    image = load_image(_image_for_stem(decoded.parent.name))
    np.testing.assert_array_equal(np.asarray(image), np.asarray(Image.open(decoded)))


@pytest.mark.parametrize("case_dir", CASE_PARAMS, ids=_case_id)
def test_decode_matches_reference_text(case_dir: Path) -> None:
    meta, expected, processor = _case(case_dir)
    assert processor.decode(expected["greedy_ids"]) == meta["greedy_text"]
    returned = processor.strip_eos(processor.decode(expected["infer_eval_ids"])).strip()
    assert returned == meta["infer_eval"]["returned_text"]


def test_locate_prompt_matches_reference_tokens() -> None:
    ref_cases = [case for case in CASES if case.name.endswith("_ref")]
    if not ref_cases:
        missing_shared_data("a locate parity case (cases/*_ref)", PARITY / "cases")
    meta, expected, processor = _case(ref_cases[0])
    ids, mask = processor.build_input_ids(locate_prompt("the table"), meta["n_image_tokens"])
    assert ids == expected["input_ids"].tolist()
    assert mask == expected["images_seq_mask"].tolist()


# ------------------------------------------------------------------------------------------------
# Tiling and token arithmetic (spec tables)
# ------------------------------------------------------------------------------------------------

TILING_VECTORS = [
    # (W, H, grid max 9, seq max 9, grid max 6, seq max 6); (1, 1) = no tiles
    (1224, 1584, (2, 3), 903, (2, 3), 903),
    (1190, 1684, (2, 3), 903, (2, 3), 903),
    (1654, 2339, (2, 3), 903, (2, 3), 903),
    (1024, 1024, (2, 2), 693, (2, 2), 693),
    (641, 641, (2, 2), 693, (2, 2), 693),
    (640, 640, (1, 1), 273, (1, 1), 273),
    (800, 600, (3, 2), 893, (3, 2), 893),
    (600, 800, (2, 3), 903, (2, 3), 903),
    (1400, 700, (2, 1), 483, (2, 1), 483),
    (700, 1400, (1, 2), 493, (1, 2), 493),
    (3000, 1000, (3, 1), 583, (3, 1), 583),
    (2000, 500, (4, 1), 683, (4, 1), 683),
    (500, 2000, (1, 4), 713, (1, 4), 713),
    (1920, 1080, (4, 2), 1093, (2, 1), 483),
    (1080, 1920, (2, 4), 1113, (1, 2), 493),
]


@pytest.mark.parametrize(("width", "height", "grid9", "seq9", "grid6", "seq6"), TILING_VECTORS)
def test_gundam_tiling_vectors(width, height, grid9, seq9, grid6, seq6) -> None:
    assert select_tile_grid(width, height, "gundam", max_tiles=9) == grid9
    assert vision_budget(width, height, "gundam", max_tiles=9).sequence == seq9
    assert select_tile_grid(width, height, "gundam", max_tiles=6) == grid6
    assert vision_budget(width, height, "gundam", max_tiles=6).sequence == seq6


def test_candidate_orders_are_the_references_set_order() -> None:
    for max_tiles in (9, 6):
        literal = candidate_grids(2, max_tiles)
        generated = set(literal)
        expected = {(i, j) for i in range(1, 10) for j in range(1, 10) if 2 <= i * j <= max_tiles}
        assert generated == expected
        assert [i * j for i, j in literal] == sorted(i * j for i, j in literal)
    twelve = candidate_grids(2, 12)
    assert set(twelve) == {(i, j) for i in range(1, 13) for j in range(1, 13) if 2 <= i * j <= 12}
    assert [i * j for i, j in twelve] == sorted(i * j for i, j in twelve)


def test_more_tiles_allowed_changes_the_grid() -> None:
    assert select_tile_grid(1920, 1080, "gundam", max_tiles=12) == (4, 2)
    assert select_tile_grid(4000, 1000, "gundam", max_tiles=3) == (3, 1)
    with pytest.raises(ValueError, match="min_tiles"):
        vision_budget(2000, 1000, "gundam", max_tiles=1)


@given(
    width=st.integers(1, 6000),
    height=st.integers(1, 6000),
    max_tiles=st.integers(2, 12),
)
@settings(max_examples=200, deadline=None)
def test_selected_grid_has_the_closest_aspect_among_allowed_grids(width, height, max_tiles) -> None:
    cols, rows = select_tile_grid(width, height, "gundam", max_tiles=max_tiles)
    if width <= 640 and height <= 640:
        assert (cols, rows) == (1, 1)
        return
    assert 2 <= cols * rows <= max_tiles
    best = min(abs(width / height - i / j) for i, j in candidate_grids(2, max_tiles))
    assert abs(width / height - cols / rows) == best


MODE_TOKENS = [
    # (mode, paper vision tokens, sequence tokens) for a page that is not tiled
    ("tiny", 64, 73),
    ("small", 100, 111),
    ("base", 256, 273),
    ("large", 400, 421),
    ("gundam", 256, 273),
    ("gundam-master", 400, 421),
]


@pytest.mark.parametrize(("mode", "tokens", "sequence"), MODE_TOKENS)
def test_token_counts_per_mode(mode, tokens, sequence) -> None:
    budget = vision_budget(600, 600, mode)
    assert (budget.tokens, budget.sequence) == (tokens, sequence)
    assert budget.valid == tokens  # a square page wastes nothing on letterbox padding


GRID_TOKENS = [
    # (cols, rows, gundam seq, gundam paper, gundam-master seq, gundam-master paper)  spec §5.2
    (1, 2, 493, 456, 965, 912),
    (2, 1, 483, 456, 949, 912),
    (1, 3, 603, 556, 1237, 1168),
    (3, 1, 583, 556, 1205, 1168),
    (2, 2, 693, 656, 1477, 1424),
    (2, 3, 903, 856, 2005, 1936),
    (3, 2, 893, 856, 1989, 1936),
    (4, 2, 1093, 1056, 2501, 2448),
    (3, 3, 1203, 1156, 2773, 2704),
    (9, 1, 1183, 1156, 2741, 2704),
]


@pytest.mark.parametrize(("cols", "rows", "g_seq", "g_paper", "m_seq", "m_paper"), GRID_TOKENS)
def test_tiled_token_counts(cols, rows, g_seq, g_paper, m_seq, m_paper) -> None:
    # A page exactly as large as the grid's tiles gets that grid (ties go to it, not to its double).
    for mode, sequence, paper in (("gundam", g_seq, g_paper), ("gundam-master", m_seq, m_paper)):
        tile = MODES[mode].tile_size
        width, height = tile * cols, tile * rows
        assert select_tile_grid(width, height, mode) == (cols, rows)
        budget = vision_budget(width, height, mode)
        assert (budget.tokens, budget.sequence) == (paper, sequence)


def test_valid_tokens_exclude_letterbox_padding() -> None:
    ratio = 1224 / 1584
    assert vision_budget(1224, 1584, "tiny").valid == 64  # stretched: every token sees the page
    assert vision_budget(1224, 1584, "small").valid == 100
    assert vision_budget(1224, 1584, "base").valid == int(256 * ratio) == 197
    assert vision_budget(1224, 1584, "large").valid == int(400 * ratio)
    assert vision_budget(1224, 1584, "gundam").valid == int(256 * ratio) + 6 * 100
    assert vision_budget(1224, 1584, "gundam-master").valid == int(400 * ratio) + 6 * 256
    assert vision_budget(600, 300, "gundam").valid == 128  # no tiles: only the half-empty global view


def test_640_pixel_threshold_for_tiles() -> None:
    assert select_tile_grid(640, 640, "gundam") == (1, 1)
    assert select_tile_grid(641, 640, "gundam") != (1, 1)
    assert select_tile_grid(640, 641, "gundam") != (1, 1)
    # Gundam-Master keeps the official 640 threshold although its tiles are 1024 pixels.
    assert select_tile_grid(640, 640, "gundam-master") == (1, 1)
    assert select_tile_grid(700, 600, "gundam-master") != (1, 1)
    assert select_tile_grid(5000, 5000, "large") == (1, 1)


def test_gundam_master_tiles_are_1024_pixels(tiny_model_dir: Path) -> None:
    processor = DeepseekOcrProcessor.from_pretrained(tiny_model_dir)
    page = Image.new("RGB", (1300, 700), (250, 250, 250))
    inputs = processor.preprocess_image(page, "gundam-master")
    assert inputs.grid == (2, 1)
    assert tuple(inputs.global_view.shape) == (3, 1280, 1280)
    assert tuple(inputs.tiles.shape) == (2, 3, 1024, 1024)
    assert inputs.n_image_tokens == sequence_token_count("gundam-master", (2, 1)) == 949
    assert inputs.vision_tokens == 912
    assert inputs.valid_vision_tokens == int(400 * 700 / 1300) + 512


def test_budget_agrees_with_real_preprocessing(tiny_model_dir: Path) -> None:
    processor = DeepseekOcrProcessor.from_pretrained(tiny_model_dir, max_tiles=6)
    page = Image.new("RGB", (1920, 1080), (255, 255, 255))
    inputs = processor.preprocess_image(page, "gundam")
    budget = processor.vision_budget(1920, 1080, "gundam")
    assert inputs.grid == (2, 1)  # max 6 tiles, unlike the default 9 which picks 4x2
    assert (budget.tokens, budget.valid, budget.sequence) == (
        inputs.vision_tokens,
        inputs.valid_vision_tokens,
        inputs.n_image_tokens,
    )


def test_unknown_mode_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown resolution mode 'huge'; use one of: tiny"):
        vision_budget(100, 100, "huge")
    assert set(MODES) == {"tiny", "small", "base", "large", "gundam", "gundam-master"}


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------


def _jpeg_with_orientation(size: tuple[int, int], orientation: int) -> bytes:
    image = Image.new("RGB", size, (255, 255, 255))
    image.paste((255, 0, 0), (0, 0, 10, 10))  # marks the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif, quality=95)
    return buffer.getvalue()


def test_exif_orientation_is_applied(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    path.write_bytes(_jpeg_with_orientation((300, 100), orientation=6))
    image = load_image(path.read_bytes())
    assert image.size == (100, 300)
    assert image.getpixel((95, 5))[0] > 200 > image.getpixel((95, 5))[1]  # stored top-left is now top-right
    inputs = DeepseekOcrProcessor.from_pretrained(tiny_model_dir).preprocess_image(path, "base")
    assert inputs.image_size == (100, 300)


def test_alpha_is_dropped_like_reference_unless_a_background_is_given() -> None:
    transparent_red = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert load_image(transparent_red).getpixel((0, 0)) == (255, 0, 0)
    assert load_image(transparent_red, alpha_background=(255, 255, 255)).getpixel((0, 0)) == (255, 255, 255)


def test_unreadable_image_names_the_file(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.png"
    bogus.write_text("not an image")
    with pytest.raises(ImageLoadError, match=r"notes\.png: not a readable image"):
        load_image(bogus)
    with pytest.raises(ImageLoadError, match=r"missing\.png: file not found"):
        load_image(tmp_path / "missing.png")


def test_small_image_modes_stretch_and_large_modes_letterbox() -> None:
    wide = Image.new("RGB", (800, 200), (0, 0, 0))
    stretched = render_views(wide, "small").global_view
    assert stretched.shape == (640, 640, 3)
    assert stretched.max() == 0  # fully covered by the page
    letterboxed = render_views(wide, "base").global_view
    assert letterboxed.shape == (1024, 1024, 3)
    assert (letterboxed[0, 0] == 127).all() and (letterboxed[512, 512] == 0).all()


# ------------------------------------------------------------------------------------------------
# Tokenizer, prompts and batches
# ------------------------------------------------------------------------------------------------


def test_special_ids_are_read_from_the_tokenizer(tiny_model_dir: Path) -> None:
    processor = DeepseekOcrProcessor.from_pretrained(tiny_model_dir)
    config = json.loads((tiny_model_dir / "config.json").read_text(encoding="utf-8"))
    assert (processor.bos_token_id, processor.eos_token_id, processor.pad_token_id) == (0, 1, 2)
    assert processor.image_token_id == config["image_token_id"]
    ids, mask = processor.build_input_ids(TASK_PROMPTS["markdown"], 3)
    encode = processor.tokenizer.encode
    text_after = (
        encode("\n")
        + [processor.special_token_id("<|grounding|>")]
        + encode("Convert the document to markdown.")
    )
    assert ids == [0] + [processor.image_token_id] * 3 + text_after
    assert mask == [False] + [True] * 3 + [False] * len(text_after)
    table = processor.decode([processor.special_token_id("<td>"), processor.special_token_id("</td>")])
    assert table == "<td></td>"
    assert processor.count_tokens("<td>") == 1


def test_prompt_is_stripped_and_needs_one_image_tag(tiny_model_dir: Path) -> None:
    processor = DeepseekOcrProcessor.from_pretrained(tiny_model_dir)
    assert processor.build_input_ids("  <image>\nFree OCR. \n", 2) == processor.build_input_ids(
        TASK_PROMPTS["text"], 2
    )
    with pytest.raises(ValueError, match="exactly one '<image>'"):
        processor.build_input_ids("Free OCR.", 2)
    with pytest.raises(ValueError, match="exactly one '<image>'"):
        processor.build_input_ids("<image><image>Free OCR.", 2)


def _copy_checkpoint_files(source: Path, target: Path) -> None:
    for name in ("tokenizer.json", "config.json"):
        (target / name).write_bytes((source / name).read_bytes())


def test_tokenizer_without_image_token_is_rejected(tiny_model_dir: Path, tmp_path: Path) -> None:
    _copy_checkpoint_files(tiny_model_dir, tmp_path)
    data = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    data["added_tokens"] = [token for token in data["added_tokens"] if token["content"] != "<image>"]
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(TokenizerError, match="'<image>' is not a single special token"):
        DeepseekOcrProcessor.from_pretrained(tmp_path)


def test_config_image_token_must_match_tokenizer(tiny_model_dir: Path, tmp_path: Path) -> None:
    _copy_checkpoint_files(tiny_model_dir, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))
    config["image_token_id"] = 128815
    (tmp_path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(TokenizerError, match="image_token_id 128815"):
        DeepseekOcrProcessor.from_pretrained(tmp_path)
    with pytest.raises(TokenizerError, match="tokenizer.json not found"):
        DeepseekOcrProcessor.from_pretrained(tmp_path / "nowhere")


def test_batch_is_left_padded_and_tiles_follow_page_order(tiny_model_dir: Path) -> None:
    processor = DeepseekOcrProcessor.from_pretrained(tiny_model_dir)
    tall = Image.new("RGB", (700, 1400), (10, 10, 10))  # 1x2 tiles
    small = Image.new("RGB", (300, 200), (128, 128, 128))  # no tiles
    wide = Image.new("RGB", (1400, 700), (240, 240, 240))  # 2x1 tiles
    prompts = [TASK_PROMPTS["markdown"], TASK_PROMPTS["text"], locate_prompt("the title of the page")]
    batch = processor([tall, small, wide], prompts, "gundam")

    singles = [processor.build_input_ids(p, n) for p, n in zip(prompts, (493, 273, 483), strict=True)]
    width = max(len(ids) for ids, _ in singles)
    assert batch["input_ids"].shape == (3, width) and batch["input_ids"].dtype == torch.int64
    for row, (ids, mask) in enumerate(singles):
        pad = width - len(ids)
        assert batch["input_ids"][row].tolist() == [processor.pad_token_id] * pad + ids
        assert batch["attention_mask"][row].tolist() == [0] * pad + [1] * len(ids)
        assert batch["images_seq_mask"][row].tolist() == [False] * pad + mask
    assert batch["images_spatial_crop"].tolist() == [[1, 2], [1, 1], [2, 1]]
    assert tuple(batch["pixel_values"].shape) == (3, 3, 1024, 1024)
    tiles = batch["pixel_values_tiles"]
    assert tuple(tiles.shape) == (4, 3, 640, 640)
    dark, light = (10 / 255 - 0.5) / 0.5, (240 / 255 - 0.5) / 0.5
    assert [math.isclose(tile.mean().item(), dark, abs_tol=0.01) for tile in tiles[:2]] == [True, True]
    assert [math.isclose(tile.mean().item(), light, abs_tol=0.01) for tile in tiles[2:]] == [True, True]
    assert batch["vision_tokens"] == [456, 256, 456]


def test_batch_without_tiles_has_no_tile_tensor(tiny_model_dir: Path) -> None:
    processor = DeepseekOcrProcessor.from_pretrained(tiny_model_dir)
    batch = processor(Image.new("RGB", (900, 300)), TASK_PROMPTS["text"], "tiny")
    assert batch["pixel_values_tiles"] is None
    assert tuple(batch["pixel_values"].shape) == (1, 3, 512, 512)
    assert batch["valid_vision_tokens"] == [64]
    with pytest.raises(ValueError, match="2 prompts"):
        processor([Image.new("RGB", (9, 9))], ["<image>a", "<image>b"], "tiny")
