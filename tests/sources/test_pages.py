"""Page rendering: DPI per mode, passwords, rotation, EXIF, TIFF frames, odd pixels, bad files."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from docconv.sources.inputs import InputError
from docconv.sources.pages import MAX_DPI, MIN_DPI, dpi_for, to_rgb

from ..helpers import make_image, make_pdf, make_tiff, open_path


def test_pdf_is_rendered_at_the_modes_resolution(tmp_path: Path) -> None:
    source = open_path(make_pdf(tmp_path / "a.pdf", pages=1, size=(612, 792)))
    width, height = source.page_size_points(0)
    image = source.render(0, dpi_for("base", width, height))
    assert abs(max(image.size) - 1024) <= 20
    assert image.mode == "RGB"


def test_dpi_is_clamped() -> None:
    assert dpi_for("tiny", 5000, 5000) == MIN_DPI
    assert dpi_for("gundam-master", 100, 100) == MAX_DPI


def test_explicit_dpi_wins(tmp_path: Path) -> None:
    source = open_path(make_pdf(tmp_path / "a.pdf", pages=1, size=(72, 144)))
    assert source.render(0, 100).size == (100, 200)


def test_rotate_attribute_is_honoured(tmp_path: Path) -> None:
    source = open_path(make_pdf(tmp_path / "r.pdf", pages=1, size=(200, 400), rotate=90))
    image = source.render(0, 72)
    assert image.width > image.height


def test_text_layer_is_extracted(tmp_path: Path) -> None:
    source = open_path(make_pdf(tmp_path / "t.pdf", pages=2, texts=["alpha beta", " "]))
    assert source.text_layer(0) == "alpha beta"
    assert source.text_layer(1) is None


def test_encrypted_pdf_needs_the_right_password(tmp_path: Path) -> None:
    path = make_pdf(tmp_path / "e.pdf", pages=1, password="s3cret")
    with pytest.raises(InputError, match="pass --password"):
        open_path(path)
    with pytest.raises(InputError, match="password is wrong"):
        open_path(path, "nope")
    assert open_path(path, "s3cret").page_count == 1


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    source = open_path(make_image(tmp_path / "e.jpg", size=(200, 100), exif_orientation=6))
    assert source.page_size_points(0) == (100.0, 200.0)
    assert source.render(0, None).size == (100, 200)


def test_every_tiff_frame_is_a_page(tmp_path: Path) -> None:
    source = open_path(make_tiff(tmp_path / "t.tiff", frames=3))
    assert source.page_count == 3
    shades = [source.render(i, None).getpixel((0, 0)) for i in range(3)]
    assert shades == [(0, 0, 0), (40, 40, 40), (80, 80, 80)]


def test_tiny_image_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="too small"):
        open_path(make_image(tmp_path / "dot.png", size=(1, 1)))


def test_sixteen_bit_pixels_are_scaled_not_clipped() -> None:
    image = Image.new("I;16", (10, 10), 32896)  # mid grey in 16 bit
    assert to_rgb(image).getpixel((0, 0)) == (128, 128, 128)


def test_transparency_is_flattened_onto_white() -> None:
    image = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    assert to_rgb(image).getpixel((0, 0)) == (255, 255, 255)


def test_cmyk_becomes_rgb() -> None:
    assert to_rgb(Image.new("CMYK", (10, 10), (0, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("qpdf_empty_zero_pages.pdf", "no pages"),
        ("docling_2206.01062_pg3_encrypted.pdf", "pass --password"),
        ("pypdf_r6-user-password.pdf", "pass --password"),
        ("pillow_broken.png", "damaged or truncated"),
        ("pillow_decompression_bomb.gif", "decompression bomb"),
        ("pillow_1x1_l.png", "too small"),
    ],
)
def test_corpus_bad_inputs_give_clear_errors(corpus_root: Path, name: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        open_path(corpus_root / "bad-inputs" / name)


@pytest.mark.parametrize(
    ("name", "password"),
    [("docling_2206.01062_pg3_encrypted.pdf", "1234"), ("pypdf_r6-user-password.pdf", "asdfzxcv")],
)
def test_corpus_encrypted_pdfs_open_with_their_password(corpus_root: Path, name: str, password: str) -> None:
    source = open_path(corpus_root / "bad-inputs" / name, password)
    assert source.render(0, 72).mode == "RGB"


@pytest.mark.parametrize(
    "name",
    [
        "pillow_i_trns.png",
        "pillow_apng_mode_16bit.png",
        "pillow_pil_sample_cmyk.jpg",
        "rapidocr_black_font_color_transparent.png",
        "qpdf_page-no-content-no-mediabox.pdf",
    ],
)
def test_corpus_odd_but_valid_inputs_render_as_rgb(corpus_root: Path, name: str) -> None:
    image = open_path(corpus_root / "bad-inputs" / name).render(0, 72)
    assert image.mode == "RGB" and min(image.size) > 0


def test_corpus_transparent_text_stays_visible(corpus_root: Path) -> None:
    # Black glyphs on a transparent background: dropping alpha would give black on black.
    image = open_path(corpus_root / "bad-inputs" / "rapidocr_black_font_color_transparent.png").render(0, None)
    colours = {colour for _, colour in image.convert("L").getcolors(maxcolors=1 << 20)}
    assert min(colours) < 64 and max(colours) > 192
