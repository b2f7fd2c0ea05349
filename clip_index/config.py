"""Frozen configuration per step; `validate()` checks every value before any I/O starts.

The same parameter names are used from pipeline to component to config to CLI flag.
The library never reads environment variables: everything comes in through these classes.
"""

from __future__ import annotations

import re
import typing
from dataclasses import asdict, dataclass
from typing import Any

RESIZE_MODES = ("keep_ratio", "center_crop", "border", "no")
ENCODE_FORMATS = ("jpeg", "png", "webp")
IMAGE_DECODERS = ("auto", "pillow", "vips")
EMBED_DTYPES = ("float32", "float16")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DECODERS = ("auto", "device", "cpu")
_MEMORY = re.compile(r"^\d+(\.\d+)?[KMGT]B?$", re.IGNORECASE)


class ConfigError(ValueError):
    """A configuration value is out of range; the message names the value and what was expected."""


def _check(ok: bool, name: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{name}={value!r}: expected {expected}")


class _Config:
    """Shared helpers: dict round trip (for KFP metadata and the CLI) and validation hook."""

    def __post_init__(self) -> None:
        # A whole number can arrive as a float from a pipeline backend's JSON (kfp.local does
        # this; a backend's encoder is not ours to know): an `int` field takes it as an int, so
        # `range(retries + 1)` and friends never see 2.0. A fractional value stays as given and
        # fails `validate()` where a check applies.
        for name, kind in typing.get_type_hints(type(self)).items():
            value = getattr(self, name, None)
            if kind is int and isinstance(value, float) and value.is_integer():
                object.__setattr__(self, name, int(value))

    def validate(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]


@dataclass(frozen=True)
class LoadConfig(_Config):
    """Load step: read an image-URL dataset and write it as URL shards.

    dataset: a Hugging Face dataset id (``org/name``) or a parquet/csv/jsonl file or folder,
        local, ``gs://`` or any fsspec URL.
    limit: keep the first N rows (0 = all); hub datasets are streamed, so a limit reads only N rows.
    shard_size: rows per URL shard (the unit of parallelism and of resume).

    Fields that are also parameters of a component are documented in its docstring
    (``components/``, shown by Vertex AI); the CLI's flag help comes from there, and from the
    Attributes below for the others.

    Attributes:
        split: The split of a Hugging Face dataset to read (files have none).
        extra_columns: Source columns kept beside uid/url/caption, comma-separated ("auto" =
            DataComp's metadata columns that the source has: original_width, original_height,
            clip_b32_similarity_score, clip_l14_similarity_score, face_bboxes, sha256; "" =
            none). face_bboxes is kept as face_count (boxes per row); a name a later step
            writes itself (original_width, sha256, ...) takes the prefix source_.
    """

    dataset: str
    id_column: str = "uid"
    url_column: str = "url"
    caption_column: str = "text"
    limit: int = 0
    shard_size: int = 10_000
    split: str = "train"
    extra_columns: str = "auto"

    def validate(self) -> None:
        _check(bool(self.dataset.strip()), "dataset", self.dataset, "a hub id, file or folder")
        named = [c.strip() for c in self.extra_columns.split(",")]
        _check(self.extra_columns.strip() in ("", "auto") or all(named), "extra_columns",
               self.extra_columns, "'auto', '' or comma-separated column names")
        clash = [c for c in named if c and c in (self.id_column, self.url_column,
                                                  self.caption_column)]
        _check(not clash, "extra_columns", self.extra_columns,
               "columns other than the id, url and caption columns (kept already)")
        _check(bool(self.url_column), "url_column", self.url_column, "a column name")
        _check(self.limit >= 0, "limit", self.limit, "an integer >= 0 (0 = all rows)")
        _check(self.shard_size >= 1, "shard_size", self.shard_size, "an integer >= 1")


@dataclass(frozen=True)
class DownloadConfig(_Config):
    """Download step: fetch, verify, resize and re-encode every URL of a shard.

    timeout_s: total deadline per request attempt (connect + headers + body), seconds (the
        first attempt has first_timeout_s, and a live slow body may go past it: see
        Attributes).
    download_retries: extra attempts after a retryable failure (timeouts, 429, 5xx, resets); a
        retry waits its backoff holding no slot, and queues behind the fresh rows of its host.
    concurrency: requests in flight per process (the web is latency-bound: an event loop
        holds hundreds cheaply); per_host_concurrency caps one host, and rows waiting for a
        busy host hold no global slot.
    image_size: target size in pixels (the shorter side for keep_ratio, the square side for
        center_crop and border); images are never upscaled.
    min_image_size: rows whose original shorter side is below this are `filtered`.
    max_aspect_ratio: rows whose long/short side ratio passes this are `filtered` (0 = off).
    max_image_bytes: bodies larger than this are refused.
    allow_private_networks: allow loopback/private/link-local addresses (tests, the demo).
    respect_opt_out: honour ``X-Robots-Tag: noai / noimageai`` (status `opted_out`).
    max_failure_rate: the step fails when the share of non-successes passes this.
    thumbnail_px: the long side of the WebP thumbnail kept per image (0 = none), cut here from
        the image already decoded and resized, and published beside the index.

    Attributes:
        max_image_pixels: Images whose original width × height passes this are refused
            (a guard against decompression bombs), pixels.
        encode_format: How the resized image is stored: jpeg, png or webp.
        encode_quality: Quality of the jpeg/webp re-encoding, 1..100.
        max_redirects: Redirects followed per URL (each hop checked by the address guard).
        decode_workers: Processes that decode and resize (0 = one per core).
        checkpoint_rows: Finished rows are saved in chunks of this many; a run killed
            mid-shard redoes at most the unsaved chunk (and the rows in flight).
        user_agent: The User-Agent header of every request (names the project, as hosts ask).
        first_timeout_s: The first attempt's deadline, seconds (shorter than timeout_s: a dead
            request is retried sooner; 0 = timeout_s).
        drip_bytes_per_s: A body still arriving at this average rate (bytes/s) at its deadline
            is alive, not dead, and may go on up to max_drip_s.
        max_drip_s: How long a slow but live body may go on past its deadline, seconds.
        shards_in_flight: Shards of a work unit open at once, a cap above a pipeline unit's
            ~40 shards by default: the next shard starts as soon as every row of the previous
            one has started, so their tails overlap; an open tail costs its rows in flight and
            its buffered records, both bounded unit-wide, so the count of tails need not be.
        max_buffered_bytes: Finished records (image bytes included) waiting for their
            checkpoint chunk, over all open shards of a unit, bytes: past this the largest
            buffer is written as a short chunk, and new rows wait while chunk writes hold more.
        image_decoder: auto (PNGs of 4 MP or more through libvips, where it measured faster;
            the rest through Pillow), pillow (never libvips) or vips (every PNG through libvips).
    """

    timeout_s: float = 20.0
    first_timeout_s: float = 5.0
    drip_bytes_per_s: int = 4096
    max_drip_s: float = 120.0
    download_retries: int = 2
    concurrency: int = 512
    per_host_concurrency: int = 16
    shards_in_flight: int = 64
    max_buffered_bytes: int = 256 << 20
    image_size: int = 256
    resize_mode: str = "keep_ratio"
    min_image_size: int = 0
    max_aspect_ratio: float = 0.0
    max_image_bytes: int = 32 * 1024 * 1024
    max_image_pixels: int = 100_000_000
    encode_format: str = "jpeg"
    encode_quality: int = 95
    allow_private_networks: bool = False
    respect_opt_out: bool = True
    max_redirects: int = 5
    decode_workers: int = 0
    image_decoder: str = "auto"
    checkpoint_rows: int = 500
    user_agent: str = "clip-index/0.1 (+https://github.com/clip-index/clip-index)"
    max_failure_rate: float = 1.0
    thumbnail_px: int = 128

    def validate(self) -> None:
        _check(self.timeout_s > 0, "timeout_s", self.timeout_s, "seconds > 0")
        _check(self.first_timeout_s >= 0, "first_timeout_s", self.first_timeout_s,
               "seconds >= 0 (0 = timeout_s)")
        _check(self.drip_bytes_per_s >= 1, "drip_bytes_per_s", self.drip_bytes_per_s,
               "bytes per second >= 1")
        _check(self.max_drip_s >= 0, "max_drip_s", self.max_drip_s, "seconds >= 0")
        _check(self.shards_in_flight >= 1, "shards_in_flight", self.shards_in_flight,
               "an integer >= 1")
        _check(self.max_buffered_bytes >= 1, "max_buffered_bytes", self.max_buffered_bytes,
               "bytes >= 1")
        _check(self.download_retries >= 0, "download_retries", self.download_retries,
               "an integer >= 0")
        _check(self.concurrency >= 1, "concurrency", self.concurrency, "an integer >= 1")
        _check(
            self.per_host_concurrency >= 1,
            "per_host_concurrency",
            self.per_host_concurrency,
            "an integer >= 1",
        )
        _check(self.image_size >= 8, "image_size", self.image_size, "pixels >= 8")
        _check(self.resize_mode in RESIZE_MODES, "resize_mode", self.resize_mode,
               f"one of {RESIZE_MODES}")
        _check(self.min_image_size >= 0, "min_image_size", self.min_image_size, "pixels >= 0")
        _check(self.max_aspect_ratio == 0 or self.max_aspect_ratio >= 1, "max_aspect_ratio",
               self.max_aspect_ratio, "0 (off) or a ratio >= 1")
        _check(self.max_image_bytes > 0, "max_image_bytes", self.max_image_bytes, "bytes > 0")
        _check(self.max_image_pixels > 0, "max_image_pixels", self.max_image_pixels, "> 0")
        _check(self.encode_format in ENCODE_FORMATS, "encode_format", self.encode_format,
               f"one of {ENCODE_FORMATS}")
        _check(1 <= self.encode_quality <= 100, "encode_quality", self.encode_quality, "1..100")
        _check(self.max_redirects >= 0, "max_redirects", self.max_redirects, ">= 0")
        _check(self.decode_workers >= 0, "decode_workers", self.decode_workers,
               "0 (one per core) or a process count")
        _check(self.image_decoder in IMAGE_DECODERS, "image_decoder", self.image_decoder,
               f"one of {IMAGE_DECODERS}")
        _check(self.checkpoint_rows >= 1, "checkpoint_rows", self.checkpoint_rows,
               "rows per checkpoint chunk >= 1")
        _check(self.user_agent.strip() != "", "user_agent", self.user_agent,
               "a non-empty User-Agent naming the project")
        _check(0 <= self.max_failure_rate <= 1, "max_failure_rate", self.max_failure_rate,
               "a fraction in [0, 1]")
        _check(self.thumbnail_px == 0 or 16 <= self.thumbnail_px <= 1024, "thumbnail_px",
               self.thumbnail_px, "0 (none) or 16..1024 pixels")


@dataclass(frozen=True)
class EmbedConfig(_Config):
    """Embed step: CLIP image embeddings of every successfully downloaded image.

    model: an open_clip model name (``open_clip.list_models()``) or a custom config name.
    pretrained: an open_clip pretrained tag, a local checkpoint path, ``bundled`` (the tiny CLIP
        shipped with clip-index, for the `tiny-clip` model) or ``none`` (random weights, seeded).
    batch_size: images per forward pass, per GPU (0 = pick for the device: 256 on a GPU, 64
        on CPU); halved on CUDA out-of-memory.
    num_workers: DataLoader processes reading (and on the CPU path decoding) images, per GPU
        process (-1 = pick: on CUDA the process's share of the container's CPU limit less one,
        at most 4; 0 on CPU: decode in the main process, as the forward pass needs the cores).
    device: auto (CUDA when usable, else the CPU with a warning), cpu, or cuda: CUDA required,
        the step fails at once saying why when it is not usable (what a pipeline compiled for
        a GPU passes). Every visible GPU gets its own process.
    precision: auto (exact fp32 on CPU; on a GPU bf16 where native, sm_80+, fp16 on T4/V100/
        P100, fp32 on P4), fp32, bf16 or fp16 (autocast); the same on every GPU.
    decode: auto (JPEGs decoded and resized on the GPU with nvJPEG on CUDA, Pillow in the
        workers on CPU), device (force the device decoder, also on the CPU), cpu (Pillow).
    dtype: the stored embedding type; float16 halves the disk (see BENCHMARKS.md for recall).

    Attributes:
        device: auto (CUDA when usable, else the CPU with a warning), cpu, or cuda (required:
            the step fails at once saying why when it is not usable).
        decode: auto (JPEGs on the GPU with nvJPEG on CUDA, Pillow on CPU), device or cpu.
        max_failure_rate: Fail the step when the unit's share of non-successes (failed
            downloads included) passes this fraction.
    """

    model: str = "ViT-B-32"
    pretrained: str = "laion2b_s34b_b79k"
    batch_size: int = 0
    num_workers: int = -1
    device: str = "auto"
    precision: str = "auto"
    decode: str = "auto"
    dtype: str = "float32"
    seed: int = 0
    max_failure_rate: float = 1.0

    def validate(self) -> None:
        _check(bool(self.model.strip()), "model", self.model, "an open_clip model name")
        _check(bool(self.pretrained.strip()), "pretrained", self.pretrained,
               "a pretrained tag, a checkpoint path, 'bundled' or 'none'")
        _check(self.batch_size >= 0, "batch_size", self.batch_size, "0 (auto) or an integer >= 1")
        _check(self.num_workers >= -1, "num_workers", self.num_workers, "-1 (auto) or >= 0")
        _check(self.device in DEVICES, "device", self.device, f"one of {DEVICES}")
        _check(self.precision in PRECISIONS, "precision", self.precision, f"one of {PRECISIONS}")
        _check(self.decode in DECODERS, "decode", self.decode, f"one of {DECODERS}")
        _check(self.dtype in EMBED_DTYPES, "dtype", self.dtype, f"one of {EMBED_DTYPES}")
        _check(0 <= self.max_failure_rate <= 1, "max_failure_rate", self.max_failure_rate,
               "a fraction in [0, 1]")


@dataclass(frozen=True)
class IndexConfig(_Config):
    """Index step: a faiss index over the normalised embeddings (inner product = cosine), chosen
    by autofaiss below `two_stage_min_vectors` vectors, two stages from there on.

    max_index_memory_usage / current_memory_available: autofaiss's budgets ("4G", "512M"); a
        two-stage index ignores them (its memory is set by first_stage_key and rerank_dtype).
    max_index_query_time_ms: the target per query, for autofaiss and for the tuning of either
        kind of index.
    index_key: a faiss factory string that overrides the choice ("" = autofaiss chooses below
        two_stage_min_vectors, two stages from there on); it always builds one stage.
    target_recall: the search parameter (nprobe / efSearch) is set to the cheapest value whose
        recall@10 against exact search reaches this, instead of autofaiss's time-budget choice.
    recall_queries: held-out (leave-one-out) queries for tuning and for recall@1/@10 (0 = skip
        tuning and measuring).
    should_be_memory_mappable: only index types that can be memory-mapped (`--mmap` queries);
        autofaiss's choice only (a two-stage index's re-rank vectors are always mapped).
    two_stage_min_vectors: from this many vectors on (and with no index_key), the index is two
        stages: a compressed faiss first stage (IVF + fast-scan PQ) proposes candidates and an
        exact re-rank from memory-mapped stored vectors orders them; smaller sets keep
        autofaiss's exact or HNSW index. 0 = never two stages.
    first_stage_key: the first stage's faiss factory string ("" = chosen from the size, e.g.
        ``IVF2048,PQ128x4fs`` for 1M × 512).
    rerank_dtype: how the re-rank vectors are stored, "float16" (half the disk) or "float32".
    """

    max_index_memory_usage: str = "4G"
    current_memory_available: str = "16G"
    max_index_query_time_ms: float = 10.0
    index_key: str = ""
    target_recall: float = 0.95
    recall_queries: int = 1000
    should_be_memory_mappable: bool = False
    two_stage_min_vectors: int = 250_000
    first_stage_key: str = ""
    rerank_dtype: str = "float16"

    def validate(self) -> None:
        for name in ("max_index_memory_usage", "current_memory_available"):
            value = getattr(self, name)
            _check(bool(_MEMORY.match(value)), name, value, 'a size like "4G" or "512M"')
        _check(self.max_index_query_time_ms > 0, "max_index_query_time_ms",
               self.max_index_query_time_ms, "milliseconds > 0")
        _check(self.recall_queries >= 0, "recall_queries", self.recall_queries, ">= 0")
        _check(0 < self.target_recall <= 1, "target_recall", self.target_recall,
               "a fraction in (0, 1]")
        if self.index_key:
            _check_index_key(self.index_key)
        _check(self.two_stage_min_vectors >= 0, "two_stage_min_vectors",
               self.two_stage_min_vectors, "a count >= 0 (0 = never two stages)")
        _check(self.rerank_dtype in ("float16", "float32"), "rerank_dtype", self.rerank_dtype,
               '"float16" or "float32"')
        if self.first_stage_key:
            _check_index_key(self.first_stage_key, "first_stage_key")


def _check_index_key(key: str, name: str = "index_key") -> None:
    """Refuse a faiss factory string faiss cannot parse, before any work (cheap: dim 8)."""
    import faiss

    dim = 8 if "PQ" not in key and "OPQ" not in key else 768  # PQ needs dim % M == 0
    try:
        faiss.index_factory(dim, key, faiss.METRIC_INNER_PRODUCT)
    except Exception as exc:
        raise ConfigError(f"{name}={key!r}: expected a faiss index_factory string such as "
                          "'HNSW32', 'IVF1024,Flat' or 'Flat' (faiss cannot parse it)") from exc


@dataclass(frozen=True)
class RetrieveConfig(_Config):
    """Retrieve step: the top matches of every query of a Dataset of prompts or embeddings.

    num_images: matches per query. deduplicate: drop near-identical matches (cosine >= 0.94).
    query_column: the prompt column of csv/jsonl/parquet query files (txt: one prompt a line).
    embedding_column: the column holding query embeddings (lists of floats), when present.
    batch_size: queries per model call and per index search. mmap: memory-map the index.
    shard_size: rows per URL shard of the matched images (for the download step).

    Attributes:
        filters: Only matches that pass these filters, as JSON or name=value,... (min_width,
            min_height, max_aspect_ratio, min_clip_b32_score, min_clip_l14_score, max_faces,
            exclude_changed, uids; see clip_index.search.filters); "" = none. Applied inside
            the index scan, so num_images matches come back whenever that many rows pass.
    """

    num_images: int = 10
    deduplicate: bool = False
    query_column: str = "text"
    embedding_column: str = "embedding"
    batch_size: int = 256
    mmap: bool = False
    shard_size: int = 10_000
    filters: str = ""

    def validate(self) -> None:
        _check(1 <= self.num_images <= 10_000, "num_images", self.num_images, "1..10000")
        _check(bool(self.query_column), "query_column", self.query_column, "a column name")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        _check(self.shard_size >= 1, "shard_size", self.shard_size, "an integer >= 1")


@dataclass(frozen=True)
class PublishConfig(_Config):
    """Publish step: upload an output folder to the Hugging Face Hub as a dataset, with a card.

    hub_repo_id: the dataset, ``ORG/NAME`` (created when missing).
    hub_private: create the dataset private (an existing dataset keeps its visibility).
    hub_revision: the branch to commit to ("" = main; created from main when missing).
    source: what was indexed, for the card ("" = what manifest.json records, if anything).

    Attributes:
        commit_message: The commit's title ("" = one that names the model and row count).
    """

    hub_repo_id: str
    hub_private: bool = False
    hub_revision: str = ""
    source: str = ""
    commit_message: str = ""

    def validate(self) -> None:
        from clip_index.hub import check_repo_id

        check_repo_id(self.hub_repo_id, "hub_repo_id")
        _check(self.hub_revision == self.hub_revision.strip() and " " not in self.hub_revision,
               "hub_revision", self.hub_revision, "a branch name without spaces, or '' for main")
