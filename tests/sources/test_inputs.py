"""Input resolution: typing by content, directory walks, lists, stdin, output collisions."""

from __future__ import annotations

import io
from pathlib import Path, PurePosixPath

import pytest

from docconv.sources.inputs import InputError, read_list, resolve_inputs, sniff_type

from ..helpers import make_image, make_pdf, make_tiff


def test_type_comes_from_content_not_extension(tmp_path: Path) -> None:
    pdf_named_png = make_pdf(tmp_path / "scan.pdf", pages=1).rename(tmp_path / "scan.png")
    resolved = resolve_inputs([str(pdf_named_png)])
    assert [d.kind for d in resolved.documents] == ["pdf"]


@pytest.mark.parametrize(
    ("name", "image_format", "kind"),
    [
        ("a.png", "PNG", "png"),
        ("a.jpg", "JPEG", "jpeg"),
        ("a.webp", "WEBP", "webp"),
        ("a.bmp", "BMP", "bmp"),
        ("a.gif", "GIF", "gif"),
        ("a.tif", "TIFF", "tiff"),
    ],
)
def test_every_supported_image_type_is_recognised(
    tmp_path: Path, name: str, image_format: str, kind: str
) -> None:
    path = make_image(tmp_path / name, image_format=image_format)
    assert resolve_inputs([str(path)]).documents[0].kind == kind


def test_unsupported_content_is_a_failure_with_the_supported_list(tmp_path: Path) -> None:
    text = tmp_path / "notes.pdf"
    text.write_text("oops\n")
    resolved = resolve_inputs([str(text)])
    assert resolved.documents == []
    assert "unsupported file type" in resolved.failures[0].message
    assert "PDF, PNG" in resolved.failures[0].message


def test_git_lfs_pointer_says_to_pull() -> None:
    with pytest.raises(InputError, match="git lfs pull"):
        sniff_type(b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\n")


def test_pdf_header_after_junk_is_still_a_pdf() -> None:
    assert sniff_type(b"\r\n  %PDF-1.7\n") == "pdf"


def test_directory_walk_is_sorted_recursive_skips_hidden_and_mirrors_relative_paths(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    make_pdf(root / "b.pdf", pages=1)
    make_image(root / "a" / "z.png")
    make_image(root / ".hidden" / "x.png")
    make_image(root / ".secret.png")
    resolved = resolve_inputs([str(root)])
    assert [str(d.relative) for d in resolved.documents] == ["a/z", "b"]
    assert resolved.failures == []


def test_glob_filters_directory_members(tmp_path: Path) -> None:
    make_pdf(tmp_path / "d" / "keep.pdf", pages=1)
    make_image(tmp_path / "d" / "drop.png")
    resolved = resolve_inputs([str(tmp_path / "d")], glob="*.pdf")
    assert [d.relative for d in resolved.documents] == [PurePosixPath("keep")]


def test_bad_file_inside_directory_fails_alone(tmp_path: Path) -> None:
    make_pdf(tmp_path / "d" / "good.pdf", pages=1)
    (tmp_path / "d" / "readme.txt").write_text("hello")
    resolved = resolve_inputs([str(tmp_path / "d")])
    assert [d.relative.name for d in resolved.documents] == ["good"]
    assert [Path(f.source).name for f in resolved.failures] == ["readme.txt"]


def test_missing_path_is_reported(tmp_path: Path) -> None:
    resolved = resolve_inputs([str(tmp_path / "nope.pdf")])
    assert "no such file" in resolved.failures[0].message


def test_stdin_document_is_read_once_and_typed(tmp_path: Path) -> None:
    data = make_pdf(tmp_path / "x.pdf", pages=1).read_bytes()
    resolved = resolve_inputs(["-"], stdin=io.BytesIO(data))
    (document,) = resolved.documents
    assert (document.kind, document.data, str(document.relative)) == ("pdf", data, "stdin")


def test_outputs_that_would_collide_fail_the_second_input(tmp_path: Path) -> None:
    make_pdf(tmp_path / "d" / "report.pdf", pages=1)
    make_image(tmp_path / "d" / "report.png")
    resolved = resolve_inputs([str(tmp_path / "d")])
    assert len(resolved.documents) == 1
    assert "overwrite" in resolved.failures[0].message


def test_read_list_newlines_and_nul() -> None:
    assert read_list(io.BytesIO(b"a.pdf\r\nb c.pdf\n\n"), nul_separated=False) == ["a.pdf", "b c.pdf"]
    assert read_list(io.BytesIO(b"a\nb.pdf\0c.pdf\0"), nul_separated=True) == ["a\nb.pdf", "c.pdf"]


def test_tiff_is_typed(tmp_path: Path) -> None:
    assert resolve_inputs([str(make_tiff(tmp_path / "t.tiff"))]).documents[0].kind == "tiff"


def test_the_same_input_named_twice_is_converted_once(tmp_path: Path) -> None:
    pdf = str(make_pdf(tmp_path / "a.pdf", pages=1))
    resolved = resolve_inputs([pdf, pdf])
    assert len(resolved.documents) == 1 and resolved.failures == []
