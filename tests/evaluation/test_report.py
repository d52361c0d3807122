"""The Table 2 report: buckets, means per mode, the summary bands and the renderings."""

from __future__ import annotations

import csv
import io
import json

import pytest

from docconv.evaluation.report import ABOUT_20X, AT_MOST_10X, Bucket, build_report, parse_buckets, render
from docconv.evaluation.run import PageResult


def result(
    key: str, mode: str, tokens: int, vision: int, precision: float, distance: float = 0.0
) -> PageResult:
    return PageResult(key, "doc/manifest.json", 1, mode, tokens, vision, precision, distance, 10, "eos")


def test_the_default_buckets_are_the_papers_rows() -> None:
    buckets = parse_buckets("600-1300/100")
    assert [b.label for b in buckets] == [
        "600-700",
        "700-800",
        "800-900",
        "900-1000",
        "1000-1100",
        "1100-1200",
        "1200-1300",
    ]
    assert parse_buckets("600-1300") == buckets


def test_other_bucket_forms() -> None:
    assert parse_buckets("0-1000/250") == tuple(Bucket(a, a + 250) for a in (0, 250, 500, 750))
    assert parse_buckets("0-1000/300")[-1] == Bucket(900, 1000)  # the last bucket ends at HIGH
    assert parse_buckets("600,800,1300") == (Bucket(600, 800), Bucket(800, 1300))
    for bad in ("1300-600", "600-700/0", "600", "800,600", "a-b", "600,,700"):
        with pytest.raises(ValueError, match="--buckets"):
            parse_buckets(bad)


def test_a_bucket_holds_its_low_edge_not_its_high_one() -> None:
    assert Bucket(600, 700).holds(600) and not Bucket(600, 700).holds(700)


def test_rows_hold_the_mean_precision_and_compression_per_mode() -> None:
    results = [
        result("a", "tiny", 640, 64, 0.9),  # 10x
        result("b", "tiny", 680, 64, 0.7),  # 10.625x
        result("a", "small", 640, 100, 1.0),  # 6.4x
        result("c", "tiny", 1280, 64, 0.5, 0.4),  # 20x
        result("d", "tiny", 5000, 64, 0.1),  # outside the buckets
    ]
    report = build_report(results, parse_buckets("600-1300"), ["tiny", "small"], "model-x")
    first = report.rows[0].cells
    assert (first["tiny"].pages, first["tiny"].precision) == (2, pytest.approx(0.8))
    assert first["tiny"].compression == pytest.approx((10 + 10.625) / 2)
    assert (first["small"].pages, first["small"].precision, first["small"].compression) == (1, 1.0, 6.4)
    last = report.rows[-1].cells["tiny"]
    assert (last.pages, last.precision, last.compression, last.edit_distance) == (1, 0.5, 20.0, 0.4)
    assert report.rows[1].cells["tiny"].pages == 0 and report.rows[1].cells["tiny"].precision is None
    assert report.total.cells["tiny"].pages == 4  # every page, in a bucket or not
    assert report.outside_buckets == 1
    # <=10x: a tiny (10x) and a small (6.4x); ~20x: c (20x)
    assert (report.at_most_10x.pages, report.at_most_10x.precision) == (2, pytest.approx(0.95))
    assert (report.about_20x.pages, report.about_20x.precision) == (1, 0.5)
    assert report.summary_line() == (
        f"precision at <={AT_MOST_10X:g}x: 95.0% (2 page reads) / at ~20x ({ABOUT_20X[0]:g}-{ABOUT_20X[1]:g}x): "
        "50.0% (1 page reads)"
    )


def test_json_csv_and_markdown_carry_the_same_numbers() -> None:
    results = [result("a", "tiny", 650, 64, 0.8, 0.25), result("a", "small", 650, 100, 1.0)]
    report = build_report(results, parse_buckets("600-800"), ["tiny", "small"], "model-x")
    data = json.loads(render(report, "json"))
    assert data["version"] == 1 and data["modes"] == ["tiny", "small"] and data["model"] == "model-x"
    assert [b["label"] for b in data["buckets"]] == ["600-700", "700-800"]
    assert data["buckets"][0]["modes"]["tiny"] == {
        "pages": 1,
        "precision": 0.8,
        "compression": round(650 / 64, 4),
        "edit_distance": 0.25,
    }
    assert data["buckets"][1]["modes"]["small"] == {
        "pages": 0,
        "precision": None,
        "compression": None,
        "edit_distance": None,
    }
    assert data["summary"]["at_most_10x"]["pages"] == 1 and data["summary"]["about_20x"]["pages"] == 0
    assert [p["mode"] for p in data["pages"]] == ["tiny", "small"]
    rows = list(csv.DictReader(io.StringIO(render(report, "csv"))))
    assert rows[0] == {
        "bucket": "600-700",
        "low": "600",
        "high": "700",
        "mode": "tiny",
        "pages": "1",
        "precision": "0.8",
        "compression": str(round(650 / 64, 4)),
        "edit_distance": "0.25",
    }
    assert [r["bucket"] for r in rows] == ["600-700", "600-700", "700-800", "700-800", "all", "all"]
    markdown = render(report, "md").splitlines()
    assert markdown[0].startswith("| text tokens | precision tiny | compression tiny | pages tiny |")
    assert markdown[2] == "| 600-700 | 80.0% | 10.2x | 1 | 100.0% | 6.5x | 1 |"
    assert markdown[3] == "| 700-800 | - | - | 0 | - | - | 0 |"
    assert markdown[-1].startswith("precision at <=10x: 100.0% (1 page reads)")
    table = render(report, "table")
    assert "600-700" in table and "80.0%" in table and "10.2x" in table and "precision at <=10x" in table
