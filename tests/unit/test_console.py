"""The local run's terminal: kfp.local's lines from two task threads at once are sorted into a
log per task, the terminal gets a line per task start and end (with the rows, failures and
rate the task's artifact records) and the progress lines; a failed task shows its log's tail."""

from __future__ import annotations

import io as _io
import json
import threading
from pathlib import Path

from clip_index.launch.console import TaskConsole


def kfp_lines(root: Path, iteration: int, status: str = "SUCCESS") -> list[str]:
    """What kfp.local prints for one download task (colours included), abridged."""
    folder = root / f"for-loop-1-iteration-{iteration}" / "download-images"
    folder.mkdir(parents=True)
    (folder / "executor_output.json").write_text(json.dumps({"artifacts": {"images": {
        "artifacts": [{"metadata": {"shard": iteration, "rows": 100, "failures": 7}}]}}}))
    return [
        "20:00:40.1 - INFO - Executing task \x1b[96m'download-images'\x1b[0m",
        "20:00:40.1 - INFO - Streamed logs:",
        "    [KFP Executor 2026 INFO]: Got executor_input:",
        f'            "outputFile": "{folder}/executor_output.json"',
        f"    [KFP Executor 2026 INFO]: download shard {iteration}: 50/100 rows, 10.0 rows/s, "
        "ETA 5s",
        f"    [KFP Executor 2026 INFO]: download: shard {iteration}: done",
        f"20:00:41.2 - INFO - Task \x1b[96m'download-images'\x1b[0m finished with status "
        f"\x1b[92m{status}\x1b[0m",
    ]


def test_two_tasks_at_once_get_a_log_each_and_a_line_each(tmp_path: Path) -> None:
    terminal = _io.StringIO()
    console = TaskConsole(terminal, str(tmp_path / "kfp-local.log"))
    threads = []
    for iteration in (0, 1):
        lines = kfp_lines(tmp_path, iteration)

        def task(lines: list[str] = lines) -> None:
            for line in lines:
                console.write(line[:10])  # partial writes, as print and logging make them
                console.write(line[10:] + "\n")

        threads.append(threading.Thread(target=task))
    console.write("Running pipeline: 'clip-index'\n")  # outside any task
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    console.close()
    out = terminal.getvalue()
    assert out.count("▸ download-images started") == 2
    for iteration in (0, 1):
        assert f"✓ download-images [shard {iteration}]: 100 rows, 7 failures" in out
        assert f"download shard {iteration}: 50/100 rows, 10.0 rows/s, ETA 5s" in out
        log = (tmp_path / f"for-loop-1-iteration-{iteration}" / "download-images" /
               "task.log").read_text()
        assert "Got executor_input" in log and f"download: shard {iteration}: done" in log
        assert f"shard {1 - iteration}" not in log  # the other thread's lines are not here
    assert "executor_input" not in out
    assert "Running pipeline" in (tmp_path / "kfp-local.log").read_text()


def test_a_failed_task_shows_where_its_log_is_and_its_tail(tmp_path: Path) -> None:
    terminal = _io.StringIO()
    console = TaskConsole(terminal, str(tmp_path / "kfp-local.log"))
    for line in kfp_lines(tmp_path, 0, status="FAILURE"):
        console.write(line + "\n")
    console.close()
    out = terminal.getvalue()
    assert "✗ download-images failure after" in out
    assert str(tmp_path / "for-loop-1-iteration-0" / "download-images" / "task.log") in out
    assert "    [KFP Executor 2026 INFO]: download: shard 0: done" in out


def test_a_work_unit_is_described_by_its_shard_numbers() -> None:
    from clip_index.launch.console import describe

    assert describe({"shard_numbers": "0-3", "rows": 40, "failures": 1}, 2.0) == \
        " [shards 0-3]: 40 rows, 1 failures, 20.0 rows/s, 2.0s"
    assert describe({"shard_numbers": "7", "rows": 10, "failures": 0}, 1.0) == \
        " [shard 7]: 10 rows, 0 failures, 10.0 rows/s, 1.0s"
