"""Dataset fingerprints (the load step's cache key, issue 16): they change when the content
changes (a file rewritten, added, a new GCS generation, a new hub revision) and not otherwise;
the compiled pipeline passes them to the load task, whose cache key includes its inputs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fsspec import AbstractFileSystem, register_implementation

from clip_index.launch import fingerprint
from tests.support.hub_server import HubFile, HubRepo, HubStandIn


def _folder(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    (data / "part-0.parquet").write_bytes(b"a" * 100)
    (data / "part-1.parquet").write_bytes(b"b" * 50)
    return data


def test_folder_fingerprint_follows_sizes_mtimes_and_files(tmp_path: Path) -> None:
    data = _folder(tmp_path)
    first = fingerprint.dataset_fingerprint(str(data))
    assert first.startswith("files:") and first == fingerprint.dataset_fingerprint(str(data))
    (data / "_SUCCESS").write_text("")  # skipped by the load step: no change
    (data / ".hidden").write_text("x")
    assert fingerprint.dataset_fingerprint(str(data)) == first
    (data / "part-1.parquet").write_bytes(b"c" * 50)  # same size, rewritten later
    stat = (data / "part-1.parquet").stat()
    os.utime(data / "part-1.parquet", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = fingerprint.dataset_fingerprint(str(data))
    assert second != first
    (data / "part-2.parquet").write_bytes(b"d")
    assert fingerprint.dataset_fingerprint(str(data)) not in (first, second)
    single = fingerprint.dataset_fingerprint(str(data / "part-0.parquet"))
    assert single.startswith("files:") and single != first


class _FakeGcs(AbstractFileSystem):
    """Stands in for gcsfs: `info()` carries GCS's generation (a new one on every write), the
    size and md5Hash, as gcsfs reports them."""

    protocol = "fakegcs"
    objects: dict[str, dict[str, Any]] = {}

    def _info(self, path: str) -> dict[str, Any]:
        return {"name": path, "type": "file", **self.objects[path]}

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        if path in self.objects:
            return self._info(path)
        if any(k.startswith(path.rstrip("/") + "/") for k in self.objects):
            return {"name": path, "type": "directory", "size": 0}
        raise FileNotFoundError(path)

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> Any:
        path = self._strip_protocol(path).rstrip("/")
        found = [self._info(k) for k in self.objects if k.startswith(path + "/")]
        return found if detail else [f["name"] for f in found]


@pytest.fixture
def fake_gcs() -> Iterator[type[_FakeGcs]]:
    register_implementation("fakegcs", _FakeGcs, clobber=True)
    _FakeGcs.objects = {
        "bucket/pool/part-0.parquet": {"size": 10, "generation": "1700000000000001",
                                       "md5Hash": "aaa"},
        "bucket/pool/part-1.parquet": {"size": 10, "generation": "1700000000000002",
                                       "md5Hash": "bbb"},
    }
    yield _FakeGcs
    _FakeGcs.objects = {}


def test_gcs_generation_changes_the_fingerprint(fake_gcs: type[_FakeGcs]) -> None:
    first = fingerprint.dataset_fingerprint("fakegcs://bucket/pool")
    assert first == fingerprint.dataset_fingerprint("fakegcs://bucket/pool/")
    # same size, same path, overwritten: only the generation tells
    fake_gcs.objects["bucket/pool/part-1.parquet"]["generation"] = "1700000000000003"
    assert fingerprint.dataset_fingerprint("fakegcs://bucket/pool") != first


def test_hub_dataset_fingerprint_is_its_revision(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    hub = HubStandIn().start()
    try:
        monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        repo = HubRepo("org/pool", private=False)
        repo.commits = {"1" * 40: {"a.parquet": HubFile("a.parquet", b"x", lfs=True)},
                        "2" * 40: {"a.parquet": HubFile("a.parquet", b"y", lfs=True)}}
        repo.branches["main"] = "1" * 40
        hub.repos["org/pool"] = repo
        assert fingerprint.dataset_fingerprint("org/pool") == "hf:" + "1" * 40
        repo.branches["main"] = "2" * 40  # a new revision pushed
        assert fingerprint.dataset_fingerprint("org/pool") == "hf:" + "2" * 40
    finally:
        hub.stop()


def test_unknown_content_is_never_reused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    missing = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        fingerprint.dataset_fingerprint(missing)
    a, b = fingerprint.fingerprint_or_unique(missing), fingerprint.fingerprint_or_unique(missing)
    assert a.startswith("unique:") and a != b
    assert "will not be reused from the cache" in caplog.text


def test_with_fingerprint_keeps_a_given_value(tmp_path: Path) -> None:
    data = _folder(tmp_path)
    assert fingerprint.with_fingerprint({"dataset": str(data), "dataset_fingerprint": "v1"}) == {
        "dataset": str(data), "dataset_fingerprint": "v1"}
    got = fingerprint.with_fingerprint({"dataset": str(data), "dataset_fingerprint": ""})
    assert got["dataset_fingerprint"] == fingerprint.dataset_fingerprint(str(data))


def test_compiled_load_task_takes_the_fingerprint(tmp_path: Path) -> None:
    import yaml

    from clip_index.launch.compiler import compile_pipeline
    from clip_index.pipelines import PipelineSettings

    spec = yaml.safe_load(Path(compile_pipeline("clip-index", str(tmp_path),
                                                PipelineSettings())).read_text())
    root = spec["root"]
    assert root["inputDefinitions"]["parameters"]["dataset_fingerprint"]["defaultValue"] == ""
    load = root["dag"]["tasks"]["load-dataset"]
    assert load["cachingOptions"]["enableCache"] is True
    assert load["inputs"]["parameters"]["dataset_fingerprint"] == {
        "componentInputParameter": "dataset_fingerprint"}
