"""The Hugging Face Hub round trip against a stand-in for the Hub's HTTP API on 127.0.0.1:
`clip-index publish` (files, card, nothing new the second time), `ClipIndex.from_hub`,
`clip-index query hf://ORG/NAME`, and the errors for bad ids, missing repos and private repos."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from clip_index.config import PublishConfig
from clip_index.hub import parse_hub_uri
from clip_index.publish.step import run_publish
from clip_index.search.searcher import ClipIndex
from tests.support.hub_server import HubStandIn
from tests.support.outputs import make_output_dir

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def output_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = make_output_dir(tmp_path_factory.mktemp("pub"))
    (out / ".pipeline").mkdir()  # kfp.local's task folders: must not be published
    (out / ".pipeline" / "executor_output.json").write_text("{}")
    return out


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[HubStandIn]:
    import huggingface_hub.constants as constants

    # the stand-in speaks the LFS "basic" transfer, not Xet; the suite runs offline otherwise
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    server = HubStandIn().start()
    try:
        yield server
    finally:
        server.stop()


def publish(hub: HubStandIn, output_dir: Path, hub_repo_id: str = "org/idx", **kwargs: object):
    config = PublishConfig(hub_repo_id=hub_repo_id, **kwargs)  # type: ignore[arg-type]
    return run_publish(str(output_dir), config, token=hub.token, endpoint=hub.endpoint)


def test_publish_uploads_the_folder_and_a_card_then_nothing_new(hub: HubStandIn,
                                                                output_dir: Path) -> None:
    first = publish(hub, output_dir, source="gs://bucket/datacomp-sample.parquet")
    files = hub.files("org/idx")
    local = {str(p.relative_to(output_dir)): p.read_bytes() for p in output_dir.rglob("*")
             if p.is_file() and not p.relative_to(output_dir).parts[0].startswith(".")}
    assert {"README.md", "manifest.json", "index_infos.json", "faiss/knn.index",
            "data/part-00000.parquet", "data/part-00001.parquet", "failed/part-00000.parquet",
            "id_mapping/part-00001.parquet"} <= set(local)
    assert {p: files[p] for p in local} == local  # every byte arrived
    assert not [p for p in files if p.startswith(".pipeline")]
    assert first.commit == hub.repos["org/idx"].branches["main"]
    assert first.files == len(local)
    uploads, commits = len(hub.uploads), len(hub.commits)
    assert uploads >= 7 and commits == 1  # parquet shards + index went through LFS

    card = files["README.md"].decode()
    front = yaml.safe_load(card.split("---")[1])
    assert [c["config_name"] for c in front["configs"]] == ["embeddings", "failed", "id_mapping"]
    assert front["size_categories"] == ["n<1K"]
    for expected in ("`gs://bucket/datacomp-sample.parquet`", "| rows | 120 |",
                     "| embedded (in the index) | 116 |", "| failed_to_download | 2 |",
                     "| failed_to_decode | 2 |", "`tiny-clip`", "| embedding dimension | 64 |",
                     "| dtype | float32 |", "`Flat`", "recall@1 / recall@10",
                     "`uid` string", "`embedding` fixed_size_list<element: float>[64]",
                     "`status` string", "clip-index query hf://org/idx",
                     'ClipIndex.from_hub("org/idx")'):
        assert expected in card, expected

    again = publish(hub, output_dir, source="gs://bucket/datacomp-sample.parquet")
    assert (len(hub.uploads), len(hub.commits)) == (uploads, commits)  # nothing new
    assert again.commit == first.commit


def test_publish_to_a_branch_of_a_private_repo(hub: HubStandIn, output_dir: Path) -> None:
    publish(hub, output_dir, hub_repo_id="org/private", hub_private=True, hub_revision="v1")
    assert hub.repos["org/private"].private
    assert "faiss/knn.index" in hub.files("org/private", "v1")
    assert set(hub.files("org/private", "main")) == {".gitattributes"}


def test_publish_refuses_bad_input_before_any_request(hub: HubStandIn, output_dir: Path,
                                                       tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as constants

    with pytest.raises(ValueError, match="hub_repo_id='no-slash': expected a Hugging Face dataset"):
        publish(hub, output_dir, hub_repo_id="no-slash")
    with pytest.raises(FileNotFoundError, match="not an index folder"):
        publish(hub, tmp_path)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(PermissionError, match="needs a token with write access"):
        run_publish(str(output_dir), PublishConfig(hub_repo_id="org/x"), endpoint=hub.endpoint)
    with pytest.raises(PermissionError, match="refused to let this token write"):
        run_publish(str(output_dir), PublishConfig(hub_repo_id="org/x"), token="hf_wrong",
                    endpoint=hub.endpoint)
    assert hub.uploads == [] and hub.commits == []


def test_from_hub_downloads_what_a_query_needs_once(hub: HubStandIn, output_dir: Path,
                                                   tmp_path: Path) -> None:
    publish(hub, output_dir)
    cache = str(tmp_path / "cache")
    index = ClipIndex.from_hub("org/idx", endpoint=hub.endpoint, token=hub.token,
                               cache_dir=cache)
    data = pq.read_table(output_dir / "data" / "part-00000.parquet")
    vector = np.asarray(data.column("embedding")[3].as_py(), dtype=np.float32)
    best = index.search_embedding(vector, k=1)[0][0]
    assert best.uid == data.column("uid")[3].as_py() and best.score == pytest.approx(1.0, 1e-4)
    assert not (Path(index.output_dir) / "data").exists()  # embeddings are not needed to query
    # nor the parquet id mapping, when the memory-mapped Arrow copy is there
    assert index.layout.mapping_file and not (Path(index.output_dir) / "id_mapping").exists()
    downloads = [p for m, p in hub.requests if m == "GET" and "/resolve/" in p]
    ClipIndex.from_hub("org/idx", endpoint=hub.endpoint, token=hub.token, cache_dir=cache)
    assert [p for m, p in hub.requests if m == "GET" and "/resolve/" in p] == downloads
    full = ClipIndex.from_hub("org/idx", endpoint=hub.endpoint, token=hub.token,
                              cache_dir=cache, full=True)
    assert (Path(full.output_dir) / "data" / "part-00001.parquet").exists()


def test_from_hub_fetches_the_parquet_mapping_for_folders_without_the_arrow_file(
        hub: HubStandIn, output_dir: Path, tmp_path: Path) -> None:
    older = tmp_path / "older"
    shutil.copytree(output_dir, older)
    (older / "faiss" / "id_mapping.arrow").unlink()  # as built before the file existed
    publish(hub, older, hub_repo_id="org/older")
    index = ClipIndex.from_hub("org/older", endpoint=hub.endpoint, token=hub.token,
                               cache_dir=str(tmp_path / "cache"))
    assert not index.layout.mapping_file and (Path(index.output_dir) / "id_mapping").is_dir()
    data = pq.read_table(output_dir / "data" / "part-00000.parquet")
    vector = np.asarray(data.column("embedding")[2].as_py(), dtype=np.float32)
    assert index.search_embedding(vector, k=1)[0][0].uid == data.column("uid")[2].as_py()


def test_from_hub_errors_say_what_was_expected(hub: HubStandIn, output_dir: Path,
                                               tmp_path: Path) -> None:
    publish(hub, output_dir, hub_repo_id="org/secret", hub_private=True)
    cache = str(tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="'org/missing' was not found.*does not exist"):
        ClipIndex.from_hub("org/missing", endpoint=hub.endpoint, token=hub.token,
                           cache_dir=cache)
    with pytest.raises(FileNotFoundError, match="private and no token"):
        ClipIndex.from_hub("org/secret", endpoint=hub.endpoint, token=False, cache_dir=cache)
    with pytest.raises(FileNotFoundError, match="no revision 'nope'"):
        ClipIndex.from_hub("org/secret", revision="nope", endpoint=hub.endpoint,
                           token=hub.token, cache_dir=cache)
    assert len(ClipIndex.from_hub("org/secret", endpoint=hub.endpoint, token=hub.token,
                                  cache_dir=cache)) == 116
    with pytest.raises(ValueError, match="expected hf://ORG/NAME"):
        ClipIndex("hf://just-a-name")


def test_hub_uri_forms() -> None:
    assert parse_hub_uri("hf://org/name") == ("org/name", None)
    assert parse_hub_uri("hf://datasets/org/name@v1") == ("org/name", "v1")


def test_cli_publish_and_query_hf_uri_through_hf_endpoint(hub: HubStandIn, output_dir: Path,
                                                          tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_ENDPOINT": hub.endpoint,
           "HF_TOKEN": hub.token, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0",
           "HF_HOME": str(tmp_path / "hf-home")}

    def cli(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "clip_index.cli", *args], env={
            **env, **extra}, capture_output=True, text=True, timeout=120, check=False)

    done = cli("publish", "--output-dir", str(output_dir), "--hub-repo-id", "org/cli",
               "--hub-private")
    assert done.returncode == 0, done.stderr
    assert f"{hub.endpoint}/datasets/org/cli" in done.stdout
    assert hub.repos["org/cli"].private and "README.md" in hub.files("org/cli")
    data = pq.read_table(output_dir / "data" / "part-00001.parquet")
    vector = tmp_path / "vector.json"
    vector.write_text(json.dumps(data.column("embedding")[9].as_py()))
    # an embedding query needs no model, so these runs don't pay torch's import
    query = cli("query", "hf://org/cli", "--embedding", str(vector), "-k", "3", "--json")
    assert query.returncode == 0, query.stderr
    results = json.loads(query.stdout)
    assert len(results) == 3 and results[0]["uid"] == data.column("uid")[9].as_py()
    hub.stop()  # from the HF cache now, offline
    offline = cli("query", "hf://org/cli", "--embedding", str(vector), "-k", "3", "--json",
                  HF_HUB_OFFLINE="1")
    assert offline.returncode == 0, offline.stderr
    assert json.loads(offline.stdout) == results


def test_offline_and_not_cached_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not in the Hugging Face cache"):
        ClipIndex.from_hub("org/other", cache_dir=str(tmp_path))  # the suite runs offline
