"""The command line: bad input fails before any work with a message naming the value; query
prints results as text or JSON."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clip_index import io, schema
from clip_index.cli import main
from clip_index.config import IndexConfig
from clip_index.index.build import run_index
from clip_index.index.write import run_write


@pytest.fixture
def urls(tmp_path):
    path = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"uid": ["a"], "url": ["http://127.0.0.1:9/a.jpg"], "text": ["x"]}),
                   path)
    return path


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--model", "ViT-B-99"], "closest known names"),
        (["--pretrained", "no-such-tag"], "not a file nor a pretrained tag"),
        (["--url-column", "link"], "url_column='link' is not a column"),
        (["--resize-mode", "stretch"], "resize_mode='stretch'"),
        (["--shard-size", "0"], "shard_size=0"),
        (["--download-parallelism", "101"], "download_parallelism=101: expected 1 to 100 tasks "
                                            "(--download-parallelism)"),
        (["--embed-parallelism", "0"], "(--embed-parallelism)"),
    ],
)
def test_run_refuses_bad_input_before_work(tmp_path, urls, capsys, extra, needle) -> None:
    out = tmp_path / "out"
    code = main(["run", "--dataset", str(urls), "--output-dir", str(out), *extra])
    assert code == 2
    assert needle in capsys.readouterr().err
    assert not (out / ".pipeline").exists()


def test_run_refuses_missing_dataset_and_unwritable_output(tmp_path, urls, capsys) -> None:
    assert main(["run", "--dataset", str(tmp_path / "none.csv"), "--output-dir",
                 str(tmp_path / "o")]) == 2
    assert "was not found" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["run", "--dataset", str(urls), "--output-dir", str(blocker / "o")]) == 2
    assert "cannot be written" in capsys.readouterr().err


@pytest.fixture
def output_dir(tmp_path):
    """A published folder built from random 64-d embeddings labelled as tiny-clip (random
    weights, seed 0), so a text query runs the real model."""
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(30, 64)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    table = pa.table({
        "uid": [f"u{i}" for i in range(30)], "url": [f"http://x/{i}" for i in range(30)],
        "caption": [f"c{i}" for i in range(30)], "status": ["success"] * 30,
        "error": pa.nulls(30, pa.string()),
        "embedding": pa.array(list(emb), pa.list_(pa.float32())),
    })
    emb_dir = tmp_path / "emb"
    io.write_parquet_atomic(str(emb_dir / io.shard_name(0)),
                            table.cast(schema.embeddings_schema(64)))
    model = {"model": "tiny-clip", "pretrained": "none", "dim": 64, "seed": 0,
             "dtype": "float32", "normalised": True}
    (emb_dir / io.stats_name(0)).write_text(json.dumps(
        {"shard": 0, "rows": 30, "statuses": {"success": 30}, "model": model}))
    out = tmp_path / "out"
    run_write([str(emb_dir)], str(out), expected_shards=[0])
    run_index(str(out), IndexConfig(index_key="Flat", recall_queries=10))
    (tmp_path / "vec.json").write_text(json.dumps(emb[4].tolist()))
    return out


def test_query_json_and_text(output_dir, capsys) -> None:
    assert main(["query", str(output_dir), "--embedding",
                 str(output_dir.parent / "vec.json"), "-k", "3", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["uid"] for r in results][:1] == ["u4"]
    assert set(results[0]) == {"id", "uid", "url", "caption", "score"}
    assert results[0]["score"] >= results[1]["score"] >= results[2]["score"]
    assert main(["query", str(output_dir), "--text", "a red circle", "-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "top 2 for 'a red circle'" in out and "tiny-clip" in out


def test_query_needs_exactly_one_input(output_dir, capsys) -> None:
    assert main(["query", str(output_dir)]) == 2
    assert "exactly one of" in capsys.readouterr().err


def test_download_input_takes_datacomps_columns(tmp_path, http_server, capsys) -> None:
    """`download --input` on DataComp's columns (uid, url, text): the caption comes from
    `text`; a missing column is named with the columns there are, before any download."""
    from tests.support.images import image_bytes

    url = http_server.add_bytes("/a.jpg", image_bytes())
    path = tmp_path / "datacomp.parquet"
    pq.write_table(pa.table({"uid": ["u1"], "url": [url], "text": ["a red thing"],
                             "original_width": [64]}), path)
    out = tmp_path / "out"
    assert main(["download", "--input", str(path), "--output-dir", str(out),
                 "--allow-private-networks", "--download-retries", "0"]) == 0
    rows = pq.read_table(out / "part-00000.parquet").to_pylist()
    assert [(r["uid"], r["url"], r["caption"], r["status"]) for r in rows] == [
        ("u1", url, "a red thing", "success")]
    capsys.readouterr()
    assert main(["download", "--input", str(path), "--output-dir", str(out),
                 "--url-column", "image_url"]) == 2
    err = capsys.readouterr().err
    assert "url_column='image_url' is not a column of" in err  # as the load step says it
    assert "['original_width', 'text', 'uid', 'url']" in err



def test_local_runs_never_require_cuda(tmp_path) -> None:
    """A local run ignores the accelerator request: its embed task runs on device "auto"
    (this machine's GPU when usable, else the CPU), never with CUDA required."""
    import yaml
    from kfp import compiler

    from clip_index.launch.runner import local_settings
    from clip_index.pipelines import PipelineSettings, make_index_pipeline

    def embed_device(settings: PipelineSettings) -> str:
        path = tmp_path / "p.yaml"
        compiler.Compiler().compile(make_index_pipeline(settings), str(path))
        spec = yaml.safe_load(path.read_text())
        group = next(c["dag"]["tasks"] for c in spec["components"].values()
                     if "embed-images" in c.get("dag", {}).get("tasks", {}))
        return group["embed-images"]["inputs"]["parameters"]["device"]["runtimeValue"]["constant"]

    gpu = PipelineSettings(gpu_count=2)
    assert embed_device(gpu) == "cuda"  # what Vertex gets: fail fast without a GPU
    assert local_settings(gpu).gpu_count == 0
    assert embed_device(local_settings(gpu)) == "auto"
