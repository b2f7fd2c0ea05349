"""Many shards through kfp.local: the loops keep their compiled widths whatever the number of
shards, and every row comes out exactly once (a rehearsal of DataComp-small's 1,280 shards; the
full-size rehearsal is `python -m bench.scale.rehearsal`)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clip_index import io
from clip_index.launch.runner import run_local
from clip_index.pipelines import PipelineSettings
from tests.support.http_server import TestServer
from tests.support.images import image_bytes

pytestmark = pytest.mark.integration

SHARDS, ROWS_PER_SHARD = 130, 3
SETTINGS = PipelineSettings(download_parallelism=12, embed_parallelism=3)


def _tasks(pipeline_root: Path, component: str) -> list[Path]:
    """The output folders of every task of `component` in the run under `pipeline_root`."""
    return [p.parent for p in pipeline_root.rglob("executor_output.json")
            if p.parent.name == component]


def test_130_shards_run_in_a_bounded_number_of_tasks(tmp_path: Path,
                                                     http_server: TestServer) -> None:
    images = [image_bytes(48 + 8 * i, 40, (40 * i, 200 - 30 * i, 90)) for i in range(6)]
    for i, body in enumerate(images):
        http_server.add_bytes(f"/img-{i}.jpg", body)
    rows = [{"uid": f"row-{n}",
             "url": http_server.url(f"/img-{n % len(images)}.jpg?n={n}") if n % 50 else
             http_server.url(f"/gone.jpg?n={n}"),
             "text": f"caption {n}"} for n in range(SHARDS * ROWS_PER_SHARD)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "urls.parquet")
    out, root = tmp_path / "out", tmp_path / "root"
    run_local({"dataset": str(tmp_path / "urls.parquet"), "output_dir": str(out),
               "model": "tiny-clip", "pretrained": "bundled", "shard_size": ROWS_PER_SHARD,
               "image_size": 64, "allow_private_networks": True, "timeout_s": 5.0,
               "download_retries": 0, "recall_queries": 0},
              pipeline_root=str(root), settings=SETTINGS)

    # the loops ran one task per work unit: the compiled widths, not one task per shard
    downloads, embeds = _tasks(root, "download-images"), _tasks(root, "embed-images")
    assert len(downloads) == 12 and len(embeds) == 3
    per_task = [len(io.list_shards(str(d / "images"))) for d in downloads]
    assert sum(per_task) == SHARDS and max(per_task) - min(per_task) <= 1
    meta = json.loads((downloads[0] / "executor_output.json").read_text())
    table = meta["artifacts"]["images"]["artifacts"][0]["metadata"]["per_shard"]
    assert len(table) == per_task[0]  # a per-shard table inside the one artifact

    # every row exactly once: embedded in data/, or in failed/ with its reason
    manifest = io.read_json(str(out / "manifest.json"))
    assert manifest["shards"] == list(range(SHARDS))
    data = [io.read_parquet(p, ["uid"]) for p in io.list_shards(str(out / "data"))]
    failed = [io.read_parquet(p, ["uid", "status"]) for p in io.list_shards(str(out / "failed"))]
    uids = Counter(u for t in data + [f.select(["uid"]) for f in failed]
                   for u in t.column("uid").to_pylist())
    assert set(uids) == {r["uid"] for r in rows} and set(uids.values()) == {1}
    statuses = Counter(s for f in failed for s in f.column("status").to_pylist())
    assert statuses == {"failed_to_download": len(rows) // 50 + 1}
    assert manifest["totals"]["successes"] == len(rows) - statuses["failed_to_download"]
