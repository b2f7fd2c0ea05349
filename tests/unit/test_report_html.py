"""The report: run table and failures in Markdown and HTML, and a thumbnail grid of sample
query results cut from the downloaded shards as data URIs (real faiss, real images)."""

from __future__ import annotations

import base64
import io as _io
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clip_index import io, schema
from clip_index.stats import ShardStats
from clip_index.units import UnitRecord
from tests.support.thumbs import add_thumbnail_column, webp_of

pytest.importorskip("faiss")

DIM = 16
MODEL = {"model": "tiny-clip", "pretrained": "none", "dim": DIM, "dtype": "float32",
         "normalised": True, "seed": 0}


def jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (300, 200)) -> bytes:
    buf = _io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


def make_run(tmp: Path, shards: int = 2, rows: int = 12, thumbnails: bool = True) -> str:
    """Embedding shards as embed writes them (one failed row per shard; with `thumbnails`, the
    download step's WebP of each image carried through), then the real write and index
    steps."""
    from clip_index.config import IndexConfig
    from clip_index.index.build import run_index
    from clip_index.index.write import run_write

    rng = np.random.default_rng(0)
    embed_dir = tmp / "embeddings"
    embed_dir.mkdir()
    bodies: dict[str, bytes] = {}
    for shard in range(shards):
        uids = [f"s{shard}-{i}" for i in range(rows)]
        status = ["failed_to_download" if i == 0 else "success" for i in range(rows)]
        error = ["http_404: Not Found" if i == 0 else None for i in range(rows)]
        image = [None if i == 0 else jpeg((20 * i, 100, 50 * shard)) for i in range(rows)]
        table = pa.table({
            schema.UID: uids, schema.URL: [f"http://img.test/{u}.jpg" for u in uids],
            schema.CAPTION: [f"caption {u}" for u in uids], schema.STATUS: status,
            schema.ERROR: error, schema.IMAGE: image,
            schema.WIDTH: [None if i == 0 else 300 for i in range(rows)],
            schema.HEIGHT: [None if i == 0 else 200 for i in range(rows)],
            schema.ORIGINAL_WIDTH: [None] * rows, schema.ORIGINAL_HEIGHT: [None] * rows,
            schema.SHA256: [None] * rows, schema.THUMBNAIL: [None] * rows},
            schema=schema.IMAGES_SCHEMA)
        bodies.update({u: b for u, b in zip(uids, image) if b is not None})
        vectors = rng.normal(size=(rows, DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        esch = schema.embeddings_schema(DIM)
        meta = table.select([schema.UID, schema.URL, schema.CAPTION, schema.STATUS,
                             schema.ERROR])
        # successes only: pyarrow 25.0.1 cannot read back a null row of a fixed-size list
        # column ("Expected all lists to be of size=16"), reported to the lead; the failed rows
        # are still counted by the shard stats, which is what the report reads
        good = meta.slice(1).append_column(schema.EMBEDDING, pa.FixedSizeListArray.from_arrays(
            pa.array(vectors[1:].reshape(-1)), DIM))
        bad = meta.slice(0, 1).append_column(schema.EMBEDDING,
                                             pa.nulls(1, esch.field(schema.EMBEDDING).type))
        assert bad.num_rows == 1
        pq.write_table(good.cast(esch), embed_dir / io.shard_name(shard))
        stats = ShardStats(shard=shard)
        for s, e in zip(status, error):
            stats.count(s, e)
        io.write_json(str(embed_dir / io.stats_name(shard)), {**stats.as_dict(), "model": MODEL})
    UnitRecord(list(range(shards)), list(range(shards))).write(str(embed_dir))
    if thumbnails:
        add_thumbnail_column(embed_dir, lambda uid: webp_of(bodies[uid]))
    out = str(tmp / "out")
    run_write([str(embed_dir)], out)
    run_index(out, IndexConfig(index_key="Flat", recall_queries=5))
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_run(tmp_path_factory.mktemp("report"))


def test_report_tables_and_thumbnail_grid(run_dir: str) -> None:
    """The grid shows the thumbnails the download step made and the write step published:
    the report reads the output folder only."""
    from clip_index.publish.report import build_report

    report = build_report(run_dir, sample_queries=3, k=4)
    assert report.summary["rows"] == 24 and report.summary["successes"] == 22
    assert report.summary["statuses"] == {"failed_to_download": 2, "success": 22}
    assert report.summary["errors"] == {"http_404": 2}
    assert report.summary["index_key"] == "Flat" and report.summary["model"] == "tiny-clip"
    for text in (report.markdown, report.html):
        assert "failed_to_download" in text and "http_404" in text and "Flat" in text
    assert len(report.samples) == 3
    for query, results in report.samples:
        assert results[0].uid == query.uid  # its own embedding finds itself first
        assert results[0].score == pytest.approx(1.0, abs=1e-5)
    # every sample and result has its kept WebP: one data URI each, decodable
    uris = re.findall(r'src="(data:image/webp;base64,[^"]+)"', report.html)
    assert len(uris) == 3 * 5  # 3 queries + 3 x 4 results
    assert report.summary["thumbnails"] == len(
        {t.uid for q, rs in report.samples for t in [q, *rs]})
    thumb = Image.open(_io.BytesIO(base64.b64decode(uris[0].split(",", 1)[1])))
    assert thumb.format == "WEBP" and max(thumb.size) == 128
    assert "http://img.test/" in report.markdown  # the Markdown links URLs instead
    assert "<script" not in report.html


def test_results_without_a_thumbnail_link_their_url(tmp_path: Path) -> None:
    from clip_index.publish.report import build_report

    report = build_report(make_run(tmp_path, thumbnails=False), sample_queries=2, k=3)
    assert "data:image" not in report.html
    assert report.html.count("(no thumbnail kept)") == 2 * 4
    assert report.summary["thumbnails"] == 0


def test_run_report_writes_both_files(run_dir: str) -> None:
    from clip_index.publish.report import REPORT_HTML, run_report

    report = run_report(run_dir)
    assert Path(run_dir, schema.REPORT).read_text() == report.markdown
    assert Path(run_dir, REPORT_HTML).read_text() == report.html
    assert report.html.startswith("<!doctype html>")
