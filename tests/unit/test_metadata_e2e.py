"""DataComp-schema rows end to end through the real steps: load (extra columns) → download over
HTTP (real sizes, hashes, the changed flag) → embed (carries every download column through) →
write (data/ with them) → index (column store) → ClipIndex filtered on every new column."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from clip_index import schema
from clip_index.config import DownloadConfig, EmbedConfig, IndexConfig, LoadConfig
from clip_index.download.step import run_download
from clip_index.embed.step import run_embed
from clip_index.index.build import run_index
from clip_index.index.write import run_write
from clip_index.load.step import plan_shards, run_load
from clip_index.search.searcher import ClipIndex
from tests.support import images
from tests.support.http_server import TestServer
from tests.support.outputs import random_unit

# (width, height, b32, l14, faces, source hash matches)
ROWS = [(640, 480, 0.31, 0.28, 0, True), (300, 900, 0.35, 0.33, 2, True),
        (800, 800, 0.22, 0.19, None, True), (1000, 250, 0.40, 0.36, 1, False),
        (500, 500, 0.29, 0.31, 0, True), (120, 90, 0.33, 0.30, 0, True),
        (720, 540, 0.26, 0.34, 3, True), (900, 600, 0.37, 0.22, 0, False)]


def test_datacomp_rows_filtered_on_every_new_column(tmp_path: Path,
                                                    http_server: TestServer) -> None:
    bodies = [images.noisy_jpeg(w, h, seed=i) for i, (w, h, *_) in enumerate(ROWS)]
    urls = [http_server.add_bytes(f"/{i}.jpg", b) for i, b in enumerate(bodies)]
    urls.append(http_server.url("/gone.jpg"))  # a dead link: a failed row, not in data/
    n = len(urls)
    rows = ROWS + [(10, 10, 0.5, 0.5, 0, True)]
    pq.write_table(pa.table({
        "uid": [f"{i:032x}" for i in range(n)], "url": urls,
        "text": [f"caption {i}" for i in range(n)],
        "original_width": [r[0] for r in rows], "original_height": [r[1] for r in rows],
        "clip_b32_similarity_score": [r[2] for r in rows],
        "clip_l14_similarity_score": [r[3] for r in rows],
        "face_bboxes": pa.array([None if r[4] is None else [[0.1, 0.2, 0.3, 0.4]] * r[4]
                                 for r in rows], pa.list_(pa.list_(pa.float64()))),
        "sha256": [hashlib.sha256(bodies[i]).hexdigest() if i < len(bodies) and rows[i][5]
                   else "f" * 64 for i in range(n)],
    }), tmp_path / "pool.parquet")
    run_load(LoadConfig(dataset=str(tmp_path / "pool.parquet"), shard_size=5),
             str(tmp_path / "urls"))
    run_download(str(tmp_path / "urls"), plan_shards(str(tmp_path / "urls")),
                 str(tmp_path / "images"),
                 DownloadConfig(allow_private_networks=True, download_retries=0, timeout_s=2.0,
                                max_failure_rate=0.5))
    run_embed([str(tmp_path / "images")], None, str(tmp_path / "emb"),
              EmbedConfig(model="tiny-clip", pretrained="none", device="cpu", num_workers=0))
    out = tmp_path / "out"
    run_write([str(tmp_path / "emb")], str(out))
    data = pq.read_table(next((out / schema.DATA_DIR).glob("part-*.parquet")))
    assert {"width", "height", "original_width", "source_sha256", "image_changed",
            "face_count", "clip_b32_similarity_score"} <= set(data.column_names)
    assert schema.THUMBNAIL not in data.column_names  # it goes to thumbnails/
    run_index(str(out), IndexConfig(index_key="Flat", recall_queries=0))
    ix = ClipIndex(out)
    assert len(ix) == len(ROWS)
    assert ix.columns.names == ["clip_b32_similarity_score", "clip_l14_similarity_score",
                                "face_count", "height", "image_changed", "width"]
    q = random_unit(1, ix.dim, seed=9)

    def kept(**filters: object) -> list[int]:
        return sorted(int(r.uid, 16) for r in ix.search_embedding(q, k=20, filters=filters)[0])

    assert kept() == list(range(8))
    assert kept(min_width=640) == [0, 2, 3, 6, 7]  # the downloaded image's real size
    assert kept(min_height=540) == [1, 2, 6, 7]
    assert kept(max_aspect_ratio=1.34) == [0, 2, 4, 5, 6]
    assert kept(min_clip_b32_score=0.33) == [1, 3, 5, 7]
    assert kept(min_clip_l14_score=0.33) == [1, 3, 6]
    assert kept(max_faces=0) == [0, 4, 5, 7]  # row 2's faces are unknown: not "no people"
    assert kept(exclude_changed=True) == [0, 1, 2, 4, 5, 6]
    (tmp_path / "subset.txt").write_text(f"{2:032x}\n{5:032x}\n{8:032x}\n")
    assert kept(uids=str(tmp_path / "subset.txt")) == [2, 5]
    assert kept(max_faces=0, exclude_changed=True, min_width=400) == [0, 4]
