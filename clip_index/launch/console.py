"""The terminal of a local run: kfp.local prints every task's executor input and output JSON
(hundreds of lines); this keeps one line per task start and end (rows, failures, rate, time),
live download/embed progress, and sends kfp.local's full output to a log file per task.

The hook: kfp.local writes everything to ``sys.stdout`` (its logger's handler is created on
``sys.stdout`` for each task, and a task's streamed output goes through ``print``), from one
thread per running task (a loop runs two at once). So `TaskConsole` stands in for
``sys.stdout`` during the run (``contextlib.redirect_stdout``) and sorts lines by thread: a
thread's ``Executing task 'NAME'`` line opens its task, the executor input's ``outputFile``
names the task's folder (where ``task.log`` goes), ``finished with status`` closes it.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_START = re.compile(r"Executing task '([^']+)'")
_END = re.compile(r"Task '([^']+)' finished with status (\w+)")
_OUTPUT_FILE = re.compile(r'"outputFile": "([^"]+executor_output\.json)"')
# stats.Progress's line: "download shard 0: 120/240 rows, 103.4 rows/s, ETA 2s"
_PROGRESS = re.compile(r"([\w .-]+: \d+/\d+ rows, [\d.]+ rows/s, ETA \S+)$")
LOG_NAME = "task.log"
FAILED_TAIL_LINES = 20


@dataclass
class _Task:
    name: str
    start: float = field(default_factory=time.monotonic)
    lines: list[str] = field(default_factory=list)  # until the log file is known
    log: TextIO | None = None
    log_path: str | None = None
    output_file: str | None = None
    progress: str | None = None
    done: bool = False


class TaskConsole:
    """A stand-in for ``sys.stdout`` during a kfp.local run (see the module docstring).
    `terminal` receives the short lines; `run_log` receives lines outside any task."""

    def __init__(self, terminal: TextIO, run_log: str) -> None:
        self.terminal = terminal
        self.tty = terminal.isatty()
        os.makedirs(os.path.dirname(run_log) or ".", exist_ok=True)
        self.run_log = open(run_log, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self.run_log_path = run_log
        self.tasks: dict[int, _Task] = {}
        self.partial: dict[int, str] = {}
        self.lock = threading.RLock()
        self.status_shown = False
        self.failed: list[str] = []
        self.closed = False

    # the file interface kfp.local's print and logging use
    def write(self, text: str) -> int:
        if self.closed:  # a stray handler kept past the run: its lines go to the terminal
            self.terminal.write(text)
            return len(text)
        with self.lock:
            thread = threading.get_ident()
            buffered = self.partial.pop(thread, "") + text
            *lines, rest = buffered.split("\n")
            if rest:
                self.partial[thread] = rest
            for line in lines:
                self._line(thread, line)
        return len(text)

    def flush(self) -> None:
        if self.closed:
            return
        with self.lock:
            for task in self.tasks.values():
                if task.log:
                    task.log.flush()
            self.run_log.flush()

    def isatty(self) -> bool:
        return False  # what the tasks print is not for a terminal

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with self.lock:
            self._clear_status()
            for task in self.tasks.values():
                self._close_log(task)
            self.run_log.close()

    # sorting lines
    def _line(self, thread: int, raw: str) -> None:
        line = _ANSI.sub("", raw)
        start = _START.search(line)
        if start:
            old = self.tasks.pop(thread, None)
            if old:
                self._close_log(old)
            self.tasks[thread] = _Task(start.group(1))
            self._say(f"▸ {start.group(1)} started")
        task = self.tasks.get(thread)
        if task is None:
            self.run_log.write(line + "\n")
            return
        self._to_log(task, line)
        match = _OUTPUT_FILE.search(line)
        if match and task.output_file is None:
            task.output_file = match.group(1)
            self._open_log(task)
        progress = _PROGRESS.search(line)
        if progress:
            task.progress = progress.group(1).strip()
            self._show_progress(new=task.progress)
        end = _END.search(line)
        if end:
            self._finished(task, end.group(2))

    def _to_log(self, task: _Task, line: str) -> None:
        if task.log:
            task.log.write(line + "\n")
        else:
            task.lines.append(line)

    def _open_log(self, task: _Task) -> None:
        assert task.output_file
        task.log_path = os.path.join(os.path.dirname(task.output_file), LOG_NAME)
        os.makedirs(os.path.dirname(task.log_path), exist_ok=True)
        task.log = open(task.log_path, "w", encoding="utf-8")  # noqa: SIM115 (closed later)
        task.log.write("\n".join(task.lines) + "\n")
        task.lines = []

    def _close_log(self, task: _Task) -> None:
        if task.log:
            task.log.close()
            task.log = None

    def unfinished(self) -> None:
        """Say where the log of every task that did not finish is, with its last lines: with
        raise_on_error, kfp.local raises on a failed task without logging its end."""
        with self.lock:
            for task in self.tasks.values():
                if not task.done:
                    self._finished(task, "FAILURE")

    def _finished(self, task: _Task, status: str) -> None:
        seconds = time.monotonic() - task.start
        task.progress = None
        task.done = True
        if task.log:
            task.log.flush()
        if status != "SUCCESS":
            self.failed.append(task.log_path or task.name)
            self._say(f"✗ {task.name} {status.lower()} after {seconds:.1f}s; its log: "
                      f"{task.log_path or self.run_log_path}")
            for line in self._tail(task):
                self._say("    " + line)
            return
        self._say(f"✓ {task.name}{describe(read_metadata(task.output_file), seconds)}")

    def _tail(self, task: _Task) -> list[str]:
        if not task.log_path:
            return task.lines[-FAILED_TAIL_LINES:]
        with open(task.log_path, encoding="utf-8") as f:
            lines = [line.rstrip() for line in f if line.strip()]
        return lines[-FAILED_TAIL_LINES:]

    # the terminal
    def _say(self, text: str) -> None:
        self._clear_status()
        self.terminal.write(f"{time.strftime('%H:%M:%S')} {text}\n")
        self.terminal.flush()
        self._show_progress()

    def _show_progress(self, new: str | None = None) -> None:
        """On a terminal, one status line with every running task's progress, rewritten in
        place; elsewhere (a file, CI), each new progress line once."""
        lines = [t.progress for t in self.tasks.values() if t.progress]
        if self.tty and lines:
            self.terminal.write("\r\x1b[K" + " | ".join(lines)[:200])
            self.status_shown = True
        elif not self.tty and new:
            self.terminal.write(f"{time.strftime('%H:%M:%S')}   {new}\n")
        self.terminal.flush()

    def _clear_status(self) -> None:
        if self.status_shown:
            self.terminal.write("\r\x1b[K")
            self.status_shown = False


def read_metadata(output_file: str | None) -> dict[str, Any]:
    """The metadata of a task's first output artifact (rows, failures, ...), or {}."""
    if not output_file or not os.path.exists(output_file):
        return {}
    with open(output_file, encoding="utf-8") as f:
        data = json.load(f)
    for artifacts in data.get("artifacts", {}).values():
        for artifact in artifacts.get("artifacts", []):
            if artifact.get("metadata"):
                return dict(artifact["metadata"])
    return {}


def describe(meta: dict[str, Any], seconds: float) -> str:
    """``[shards 0-3]: 240 rows, 0 failures, 85.6 rows/s, 2.8s`` from a task's metadata
    (a work unit's `shard_numbers`, or one `shard`)."""
    parts = []
    rows = meta.get("rows", meta.get("vectors"))
    if rows is not None:
        parts.append(f"{int(rows)} rows")
    if meta.get("failures") is not None:
        parts.append(f"{int(meta['failures'])} failures")
    if rows and seconds > 0:
        parts.append(f"{int(rows) / seconds:.1f} rows/s")
    parts.append(f"{seconds:.1f}s")
    shard = ""
    if meta.get("shard_numbers") not in (None, ""):
        numbers = str(meta["shard_numbers"])
        shard = f" [shard{'s' if ',' in numbers or '-' in numbers else ''} {numbers}]"
    elif meta.get("shard") is not None:
        shard = f" [shard {int(meta['shard'])}]"
    return f"{shard}: " + ", ".join(parts)
