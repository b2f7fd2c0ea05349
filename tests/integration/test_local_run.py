"""The whole pipeline, locally through kfp.local, on images served from 127.0.0.1: every input
row is accounted for, and an image query finds that same image first."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clip_index import io
from clip_index.launch.runner import run_local
from clip_index.search.searcher import ClipIndex
from tests.support.http_server import TestServer

pytestmark = pytest.mark.integration

BROKEN = {"/missing.jpg": "failed_to_download", "/page.html": "failed_to_decode"}


def _urls(sample_dir: Path, server: TestServer) -> pa.Table:
    captions = pq.read_table(sample_dir / "captions.parquet")
    for row in captions.to_pylist():
        server.add_bytes(f"/{row['file']}", (sample_dir / row["file"]).read_bytes())
    server.add_bytes("/page.html", b"<html>not an image</html>", content_type="image/jpeg")
    rows = [{"uid": r["uid"], "url": server.url(f"/{r['file']}"), "text": r["text"]}
            for r in captions.to_pylist()]
    rows += [{"uid": f"broken{i}", "url": server.url(p), "text": "x"}
             for i, p in enumerate(BROKEN)]
    return pa.Table.from_pylist(rows)


def _params(urls: Path, out: Path) -> dict:
    return {"dataset": str(urls), "output_dir": str(out), "model": "tiny-clip",
            "pretrained": "none", "shard_size": 50, "image_size": 96,
            "allow_private_networks": True, "timeout_s": 5.0, "download_retries": 0}


def test_run_accounts_for_every_row_and_finds_images(tmp_path, sample_dir, http_server,
                                                    capsys) -> None:
    urls = tmp_path / "urls.parquet"
    table = _urls(sample_dir, http_server)
    pq.write_table(table, urls)
    out = tmp_path / "out"
    summary = run_local(_params(urls, out), pipeline_root=str(tmp_path / "root"))
    assert "rows: 122" in summary
    # the terminal: a line per task start and end, no kfp.local executor JSON; that goes to
    # a task.log per task under the run's folder
    terminal = capsys.readouterr().out
    assert "executor_input" not in terminal and '"outputFile"' not in terminal
    # 122 rows, 50 per shard: 3 shards in the local run's 2 download units (LOCAL_WIDTHS)
    assert terminal.count("▸ download-images started") == 2
    assert "✓ download-images [shards 1-2]: 72 rows, 2 failures" in terminal
    assert len(terminal.splitlines()) < 30, terminal
    logs = list((tmp_path / "root").rglob("task.log"))
    tasks = {p.parent for p in (tmp_path / "root").rglob("executor_output.json")}
    assert {p.parent for p in logs} == tasks  # every task has its log
    assert sum(p.parent.name == "download-images" for p in logs) == 2
    download_logs = [p.read_text() for p in logs if p.parent.name == "download-images"]
    assert all("Got executor_input" in log for log in download_logs)
    assert sum("download: shard 2" in log for log in download_logs) == 1
    for step in ("download-images", "embed-images", "write-embeddings", "build-index"):
        assert f"{step} " in summary  # seconds per step, from each task's artifact metadata

    manifest = io.read_json(str(out / "manifest.json"))
    totals = manifest["totals"]
    assert totals["rows"] == table.num_rows == 122
    assert totals["successes"] == 120
    assert totals["statuses"] == {"success": 120, "failed_to_download": 1,
                                  "failed_to_decode": 1}
    failed = pa.concat_tables(io.read_parquet(p) for p in io.list_shards(str(out / "failed")))
    reasons = dict(zip(failed.column("uid").to_pylist(), failed.column("status").to_pylist()))
    assert reasons == {"broken0": "failed_to_download", "broken1": "failed_to_decode"}
    errors = dict(zip(failed.column("uid").to_pylist(), failed.column("error").to_pylist()))
    assert errors["broken0"].startswith("http_404") and errors["broken1"].startswith("decode")
    assert (out / "faiss" / "knn.index").exists() and (out / "report.md").exists()

    index = ClipIndex(out)
    assert len(index) == 120
    for uid in ("sample-000003", "sample-000077"):
        file = next(sample_dir.glob(f"images/{uid}.*"))
        top = index.search_image(file, k=3)[0]
        assert top.uid == uid and top.score > 0.99


def test_compiled_yaml_runs_locally(tmp_path, sample_dir, http_server) -> None:
    """The YAML that Vertex receives, loaded back and run by kfp.local."""
    from kfp import components, local

    from clip_index.launch.compiler import compile_all
    from clip_index.launch.runner import pipeline_defaults
    from clip_index.pipelines import PipelineSettings

    urls = tmp_path / "urls.parquet"
    pq.write_table(_urls(sample_dir, http_server).slice(0, 60), urls)
    path = compile_all(str(tmp_path / "compiled"), PipelineSettings(gpu_count=0))[0]
    pipeline = components.load_component_from_file(path)
    local.init(runner=local.SubprocessRunner(use_venv=False),
               pipeline_root=str(tmp_path / "root"), raise_on_error=True)
    out = tmp_path / "out"
    pipeline(**{**pipeline_defaults(), **_params(urls, out), "shard_size": 30})
    totals = io.read_json(str(out / "manifest.json"))["totals"]
    assert totals["rows"] == 60 and totals["successes"] == 60
    assert ClipIndex(out).search_text("a red circle", k=5)


def test_a_failed_task_says_where_its_log_is(tmp_path, sample_dir, http_server,
                                              capsys) -> None:
    """A download task that fails (its failure rate passes max_failure_rate=0): the terminal
    names the task, where its full log is, and ends with the step's own error."""
    urls = tmp_path / "urls.parquet"
    pq.write_table(_urls(sample_dir, http_server).slice(115), urls)  # 5 images, 2 broken
    params = {**_params(urls, tmp_path / "out"), "max_failure_rate": 0.0}
    with pytest.raises(RuntimeError):
        run_local(params, pipeline_root=str(tmp_path / "root"))
    terminal = capsys.readouterr().out
    assert "✗ download-images failure after" in terminal, terminal
    # two download tasks (the local widths), one with the dataset's one shard: it failed
    logs = [log for log in (tmp_path / "root").rglob("download-images/task.log")
            if "passes max_failure_rate" in log.read_text()]
    assert len(logs) == 1 and f"its log: {logs[0]}" in terminal
    assert "max_failure_rate" in terminal.split("its log:")[1]  # the tail shows the reason
