"""Run a command as a bounded subprocess and measure its whole process tree.

Wall time; CPU seconds of every process in the tree (from ``getrusage(RUSAGE_CHILDREN)`` deltas,
cross-checked by psutil samples of the live tree); peak RSS summed over the tree, sampled every
0.1 s (and peak PSS, which counts pages shared between the processes once, every 1 s; the tree's
membership is refreshed every 1 s too);
optionally the CPU that other processes (the nginx server) used meanwhile.

``RUSAGE_CHILDREN`` only counts descendants that someone waited for. A tool whose helpers
outlive their parent (multiprocessing's forkserver is never waited for by the main process)
would hide their CPU, so the benchmark makes itself a child subreaper
(``PR_SET_CHILD_SUBREAPER``): orphans of the measured tree are re-parented to it, and it reaps
them after the main process exits (killing any that linger past a grace period).

The child runs in its own session with a parent-death signal, so a timeout, Ctrl-C or crash of
the benchmark kills its whole group and nothing outlives the benchmark.
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> bool:
    try:
        return int(ctypes.CDLL("libc.so.6", use_errno=True).prctl(option, value)) == 0
    except (OSError, AttributeError):  # not Linux / no libc
        return False


def become_subreaper() -> bool:
    """Adopt orphaned descendants, so their CPU time reaches our RUSAGE_CHILDREN when reaped."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def die_with_parent() -> None:
    """preexec_fn: ask Linux to SIGTERM this child when the benchmark dies (even by SIGKILL)."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Measurement:
    """What one measured run cost."""

    returncode: int | None
    wall_s: float
    cpu_s: float  # user + sys of the whole tree (rusage of waited-for descendants)
    cpu_s_sampled: float  # the same from psutil samples (misses the last 0.1 s of short children)
    peak_rss_mb: float  # max over samples of the summed RSS of the tree
    peak_pss_mb: float  # max over samples of the summed PSS (shared pages counted once)
    max_process_rss_mb: float  # the largest single process seen in any sample
    peak_processes: int
    timed_out: bool
    lingering: int = 0  # descendants still alive after the grace period (killed)
    background_cores: float = 0.0  # CPU used by unrelated processes during the run, in cores
    other_cpu_s: dict[str, float] = field(default_factory=dict)  # e.g. {"nginx": 3.1}
    log_path: str = ""
    # the started process's own share of cpu_s_sampled (for clip-index the event loop: HTTP,
    # rows, checkpoint writes; the rest is its decode workers)
    main_cpu_s_sampled: float = 0.0

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (``/proc/stat``, all cores)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    # user nice system idle iowait irq softirq steal ...: everything but idle and iowait
    busy = sum(fields[:3]) + sum(fields[5:8])
    return busy / os.sysconf("SC_CLK_TCK")


def _tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root] + root.children(recursive=True)
    except psutil.Error:
        return []


def cpu_of(pids: Sequence[int]) -> float:
    """User + system CPU seconds of these processes (the ones that still exist)."""
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _reap_orphans(pgid: int, known: set[int], grace_s: float) -> int:
    """Wait for (then kill) descendants re-parented to us; returns how many had to be killed."""
    deadline = time.monotonic() + grace_s
    killed = 0
    while True:
        try:
            mine = psutil.Process().children()
        except psutil.Error:
            return killed
        orphans = []
        for child in mine:
            try:
                if child.pid in known or os.getpgid(child.pid) == pgid:
                    orphans.append(child.pid)
            except (ProcessLookupError, psutil.Error):
                pass
        alive = []
        for pid in orphans:
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == 0:
                    alive.append(pid)
            except ChildProcessError:
                pass
        if not alive:
            return killed
        if time.monotonic() > deadline:
            for pid in alive:
                logger.warning("descendant %d still running %.0f s after the tool exited: killing",
                               pid, grace_s)
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    killed += 1
                except (ProcessLookupError, ChildProcessError):
                    pass
            deadline = time.monotonic() + grace_s
        time.sleep(0.05)


def kill_tree(proc: subprocess.Popen[bytes], grace_s: float = 5) -> None:
    """SIGTERM the child's process group (its own session), then SIGKILL what is left."""
    if proc.poll() is not None:
        return
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return
    members = _tree(psutil.Process(proc.pid)) if psutil.pid_exists(proc.pid) else []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            continue
        break
    # children that left the group (setsid) but are still ours by ancestry
    for p in members:
        try:
            if p.is_running():
                p.kill()
        except psutil.Error:
            pass


def run_measured(
    cmd: Sequence[str],
    *,
    timeout_s: float,
    log_path: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    interval_s: float = 0.1,
    others: dict[str, Callable[[], list[int]]] | None = None,
) -> Measurement:
    """Run ``cmd`` (stdout+stderr to ``log_path``), bounded by ``timeout_s``, and measure it.

    ``others`` maps a name to a function returning pids (e.g. nginx's) whose CPU use during the
    run is reported too.
    """
    others = others or {}
    become_subreaper()
    other_pids = {name: get() for name, get in others.items()}
    other_before = {name: cpu_of(pids) for name, pids in other_pids.items()}
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    self_before = resource.getrusage(resource.RUSAGE_SELF)
    busy_before = machine_busy_s()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    peak_rss = 0
    peak_pss = 0
    peak_single = 0
    peak_procs = 0
    known: set[int] = set()
    last_cpu: dict[int, float] = {}  # pid -> last sampled user+sys
    timed_out = False
    logger.info("running: %s", " ".join(cmd))
    with open(log_path, "wb") as log:
        start = time.monotonic()
        proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                                start_new_session=True, preexec_fn=die_with_parent)
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak_rss, peak_pss, peak_single, peak_procs
            try:
                root = psutil.Process(proc.pid)
            except psutil.Error:
                return
            tick = 0
            procs: list[psutil.Process] = []
            while not stop.is_set():
                rss = pss = 0
                # Walking the tree scans all of /proc and PSS reads smaps: once a second only,
                # so the sampler costs ~1% of a core; RSS and CPU of the members every tick.
                slow_tick = tick % 10 == 0
                if slow_tick:
                    procs = _tree(root)
                for p in procs:
                    try:
                        with p.oneshot():
                            if slow_tick:
                                mem = p.memory_full_info()
                                pss += mem.pss
                            else:
                                mem = p.memory_info()
                            rss += mem.rss
                            peak_single = max(peak_single, mem.rss)
                            t = p.cpu_times()
                            last_cpu[p.pid] = t.user + t.system
                            known.add(p.pid)
                    except psutil.Error:
                        pass
                peak_rss = max(peak_rss, rss)
                peak_pss = max(peak_pss, pss)
                peak_procs = max(peak_procs, len(procs))
                tick += 1
                stop.wait(interval_s)

        sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
        sampler.start()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            logger.error("timed out after %.0f s: killing %s", timeout_s, cmd[0])
            kill_tree(proc)
        except BaseException:
            kill_tree(proc)
            raise
        finally:
            wall = time.monotonic() - start
            stop.set()
            sampler.join(5)
            lingering = _reap_orphans(proc.pid, known, grace_s=10)
    usage_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    self_after = resource.getrusage(resource.RUSAGE_SELF)
    busy = machine_busy_s() - busy_before
    cpu = (usage_after.ru_utime - usage_before.ru_utime
           + usage_after.ru_stime - usage_before.ru_stime)
    other_cpu = {name: round(cpu_of(other_pids[name]) - other_before[name], 2) for name in others}
    own = (self_after.ru_utime - self_before.ru_utime + self_after.ru_stime - self_before.ru_stime)
    background = max(0.0, busy - cpu - own - sum(other_cpu.values())) / wall if wall else 0.0
    m = Measurement(
        returncode=proc.returncode,
        wall_s=wall,
        cpu_s=cpu,
        cpu_s_sampled=sum(last_cpu.values()),
        peak_rss_mb=peak_rss / 2**20,
        peak_pss_mb=peak_pss / 2**20,
        max_process_rss_mb=peak_single / 2**20,
        peak_processes=peak_procs,
        timed_out=timed_out,
        lingering=lingering,
        background_cores=round(background, 2),
        other_cpu_s=other_cpu,
        log_path=str(log_path),
        main_cpu_s_sampled=last_cpu.get(proc.pid, 0.0),
    )
    logger.info("exit %s in %.1f s, CPU %.1f s (sampled %.1f s, %.1f s of it the main process), "
                "peak RSS %.0f MB (PSS %.0f MB, "
                "largest process %.0f MB) in %d processes, background load %.2f cores%s",
                m.returncode, m.wall_s, m.cpu_s, m.cpu_s_sampled, m.main_cpu_s_sampled,
                m.peak_rss_mb, m.peak_pss_mb,
                m.max_process_rss_mb, m.peak_processes, m.background_cores,
                "".join(f", {k} CPU {v:.1f} s" for k, v in other_cpu.items()))
    return m
