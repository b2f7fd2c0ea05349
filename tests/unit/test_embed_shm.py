"""The embed loader within a small /dev/shm: the real DataLoader workers, in a mount namespace
whose /dev/shm is a 16 MiB tmpfs (a pod without a memory-backed /dev/shm has 64 MB). Before,
2 workers x prefetch 4 of 32 decoded 224 px images overfilled it and batches were lost (the
workers' queue feeder logs "No space left on device" and drops the batch); now the loader
sizes workers and prefetch to what /dev/shm holds, logs it, and every row comes through."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clip_index import schema
from clip_index.embed import loader
from tests.support.images import encoded, photo_like

ROOT = Path(__file__).resolve().parents[2]
ROWS, BATCH, SHM_MIB = 192, 32, 16


def _namespaces_work() -> bool:
    if not shutil.which("unshare") or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs -o size=1m tmpfs /dev/shm"],
                           capture_output=True, check=False)
    return probe.returncode == 0


needs_namespace = pytest.mark.skipif(not _namespaces_work(),
                                     reason="needs root and `unshare -m` to mount a small "
                                            "tmpfs on /dev/shm")


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One image shard of distinct 341x256 JPEGs (~55 kB each), 32 rows per row group."""
    base = np.asarray(photo_like(341, 256, seed=1))
    rows = [{"uid": f"u{i}", "url": "http://x", "caption": None, "status": "success",
             "error": None, "image": encoded(Image.fromarray(np.roll(base, 7 * i, axis=1)),
                                             quality=95),
             "width": 341, "height": 256, "original_width": 341, "original_height": 256,
             "sha256": "x"} for i in range(ROWS)]
    path = tmp_path_factory.mktemp("shm") / "part-00000.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema.IMAGES_SCHEMA), path,
                   row_group_size=BATCH)
    return str(path)


def _run_in_small_shm(shard: str, plan: str, decode: str) -> tuple[dict, str]:
    script = (f"mount -t tmpfs -o size={SHM_MIB}m tmpfs /dev/shm && exec {sys.executable} -m "
              f"tests.support.shm_loader {shard} {BATCH} 2 {plan} {decode}")
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


@needs_namespace
def test_the_small_shm_is_real_and_overfilled_without_the_plan(shard) -> None:
    """The control: the previous loader settings lose batches in this /dev/shm."""
    out, stderr = _run_in_small_shm(shard, "no-plan", "cpu")
    assert out["rows"] < ROWS and "No space left on device" in stderr


@needs_namespace
@pytest.mark.parametrize("decode", ["cpu", "device"])
def test_every_row_comes_through_a_small_shm(shard, decode) -> None:
    """Decoded pixels (~4.6 MiB a batch) do not fit 2 workers' queues in 8 MiB (half of the
    tmpfs): the main process reads. JPEG bytes (~1.7 MiB a batch, in one tensor) keep the
    workers, with less prefetch. Either way /dev/shm's size is logged and no row is lost."""
    out, stderr = _run_in_small_shm(shard, "plan", decode)
    assert out["rows"] == ROWS
    assert f"/dev/shm: {SHM_MIB} MiB" in stderr and "No space left" not in stderr
    if decode == "device":
        assert out["workers"] >= 1 and out["prefetch"] < 4
    else:
        assert out["workers"] == 0


def test_processes_on_one_shm_share_its_budget(monkeypatch) -> None:
    """Eight GPU processes plan for the same 64 MB at once: each gets an eighth."""
    class Stat:
        f_frsize = 4096
        f_blocks = f_bavail = 64 * 2**20 // 4096

    monkeypatch.setattr(loader.os, "statvfs", lambda path: Stat())
    batch = 4 * 2**20
    alone, shared = loader.shm_plan(4, batch), loader.shm_plan(4, batch, sharers=8)
    assert (alone.workers, alone.prefetch) == (4, 1)  # (4 x 1 + 2) x 4 MiB <= 32 MiB
    assert shared.workers == 0  # 4 MiB: less than 2 batches in flight fit
    assert (loader.shm_plan(4, 2**19, sharers=8).workers, loader.shm_plan(
        4, 2**19, sharers=8).prefetch) == (4, 1)  # (4 + 2) x 0.5 MiB <= 4 MiB


def test_shm_plan_cuts_prefetch_then_workers(monkeypatch) -> None:
    class Stat:
        f_frsize = 4096

        def __init__(self, mib: int) -> None:
            self.f_blocks = self.f_bavail = mib * 2**20 // 4096

    mib = 2**20
    monkeypatch.setattr(loader.os, "statvfs", lambda path: Stat(8192))  # Kubeflow's 8 Gi
    assert (loader.shm_plan(4, 40 * mib).workers, loader.shm_plan(4, 40 * mib).prefetch) == (4, 4)
    monkeypatch.setattr(loader.os, "statvfs", lambda path: Stat(64))  # a pod's default
    plan = loader.shm_plan(4, 2 * mib)  # (workers * prefetch + 2) * 2 MiB <= 32 MiB
    assert (plan.workers, plan.prefetch) == (4, 3)
    assert loader.shm_plan(4, 40 * mib).workers == 0
    assert "64 MiB" in loader.shm_plan(4, 40 * mib).describe()


def test_a_batch_of_jpegs_is_one_bytes_tensor_plus_offsets() -> None:
    """256 JPEGs used to cross from a worker as 256 shared-memory segments and descriptors."""
    import torch

    datas = [encoded(photo_like(40 + i, 30, seed=i), quality=90) for i in range(3)]
    rows = [{"uid": f"u{i}", "jpeg": torch.frombuffer(bytearray(d), dtype=torch.uint8)}
            for i, d in enumerate(datas)]
    rows.insert(1, {"uid": "png", "pixels": torch.zeros((3, 8, 8), dtype=torch.uint8)})
    rows.append({"uid": "broken", "pixels": None})
    batch = loader.collate(rows)
    tensors = [v for v in batch.values() if isinstance(v, torch.Tensor)]
    assert len(tensors) == 3  # bytes, offsets, the worker-decoded pixels
    assert [r["uid"] for r in batch["good"]] == ["u0", "png", "u1", "u2"]
    assert [r["uid"] for r in batch["bad"]] == ["broken"]
    got = loader.batch_jpegs(batch)
    assert got[1] is None and batch["decoded_rows"] == [1]
    assert [bytes(g.numpy()) for g in got if g is not None] == datas
