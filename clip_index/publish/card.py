"""The Hugging Face dataset card (README.md) of a published output folder: what was indexed,
the model, the index and its quality, the schema of every folder, and how to query it.

The card is a pure function of the folder (no dates, no machine names), so publishing the same
folder twice produces the same bytes and uploads nothing new.
"""

from __future__ import annotations

import posixpath
from typing import Any

import pyarrow.parquet as pq

from clip_index import io, schema
from clip_index.index.rerank import RERANK_FILE

FOLDERS = (
    (schema.DATA_DIR, "embeddings", "the embedded rows: one per image that made it into the index"),
    (schema.FAILED_DIR, "failed", "every row that did not, with its status and error"),
    (schema.ID_MAPPING_DIR, "id_mapping", "faiss id `i` → row (row i of these files, in order)"),
)
_SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
          (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"))


def size_category(rows: int) -> str:
    """The Hub's size_categories value for a row count."""
    return next((name for limit, name in _SIZES if rows < limit), "n>100M")


def folder_summary(output_dir: str, folder: str) -> tuple[int, int, list[tuple[str, str]]]:
    """(files, rows, [(column, type)]) of a folder's parquet shards, from their footers."""
    shards = io.list_shards(io.join(output_dir, folder))
    if not shards:
        return 0, 0, []
    rows = 0
    for path in shards:
        fs, fs_path = io.filesystem(path)
        with fs.open(fs_path, "rb") as f:
            rows += pq.ParquetFile(f).metadata.num_rows
    fs, fs_path = io.filesystem(shards[0])
    with fs.open(fs_path, "rb") as f:
        arrow_schema = pq.read_schema(f)
    return len(shards), rows, [(field.name, str(field.type)) for field in arrow_schema]


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _number(value: Any, unit: str = "") -> str:
    return "not measured" if value is None else f"{value}{unit}"


def dataset_card(output_dir: str, repo_id: str, source: str = "") -> str:
    """README.md text for `output_dir` published as `repo_id`."""
    manifest = io.read_json(io.join(output_dir, schema.MANIFEST))
    infos = io.read_json(io.join(output_dir, schema.INDEX_INFOS))
    totals = manifest.get("totals", {})
    source = source or str(manifest.get("source") or manifest.get("dataset") or "")
    summaries = {folder: folder_summary(output_dir, folder) for folder, _, _ in FOLDERS}
    configs = [(name, folder) for folder, name, _ in FOLDERS if summaries[folder][0]]
    front = ["---", "pretty_name: " + f"CLIP index of {source or repo_id}".replace(":", " -"),
             "tags:", "- clip", "- faiss", "- image-retrieval", "- embeddings", "- clip-index",
             "size_categories:", f"- {size_category(int(totals.get('rows', 0)))}", "configs:"]
    for i, (name, folder) in enumerate(configs):
        front += [f"- config_name: {name}", f"  data_files: {folder}/*.parquet"]
        front += ["  default: true"] if i == 0 else []
    front.append("---")

    statuses = {k: v for k, v in totals.get("statuses", {}).items() if k != "success"}
    lines = front + ["", f"# CLIP index: {repo_id}", "",
                     "A CLIP image-embedding index made with "
                     "[clip-index](https://github.com/clip-index/clip-index): the images of an "
                     "image-URL dataset were downloaded, embedded with an open_clip model and "
                     "indexed with faiss (autofaiss). Query it by text, by image or by embedding.",
                     "", "## What was indexed", ""]
    lines += _table(("", "value"), [
        ("source", f"`{source}`" if source else "not recorded"),
        ("rows", totals.get("rows", "?")),
        ("embedded (in the index)", totals.get("successes", "?")),
        ("failures", totals.get("failures", "?")),
        ("success rate", f"{totals['success_rate']:.1%}" if "success_rate" in totals else "?"),
    ])
    lines += ["", "Failures by reason (rows; every failed row is in `failed/` with its error):", ""]
    lines += _table(("status", "rows"), sorted(statuses.items(), key=lambda kv: (-kv[1], kv[0]))
                    or [("none", 0)])
    if totals.get("errors"):
        lines += ["", "Most frequent errors:", ""]
        lines += _table(("error", "rows"), list(totals["errors"].items())[:10])
    lines += ["", "## Model", ""]
    lines += _table(("", "value"), [
        ("model (open_clip)", f"`{manifest.get('model')}`"),
        ("pretrained", f"`{manifest.get('pretrained')}`"),
        ("embedding dimension", manifest.get("dim")), ("dtype", manifest.get("dtype")),
        ("L2-normalised", manifest.get("normalised", True)),
    ] + ([("seed (random weights)", manifest.get("seed"))]
         if manifest.get("pretrained") == "none" else []))
    lines += ["", "## Index", ""]
    lines += _table(("", "value"), [
        ("faiss index key", f"`{infos.get('index_key')}`"),
        ("metric", f"{infos.get('metric', 'inner_product')} (= cosine on normalised vectors)"),
        ("vectors", infos.get("vectors")),
        ("size", f"{infos.get('size_bytes', 0) / 1e6:.2f} MB"),
        ("recall@1 / recall@10 vs exact search",
         f"{_number(infos.get('recall_at_1'))} / {_number(infos.get('recall_at_10'))}"
         + (f" ({infos['recall_queries']} queries)" if infos.get("recall_queries") else "")),
        ("latency p50 / p99 (one query, build machine)",
         f"{_number(infos.get('latency_p50_ms'), ' ms')} / "
         f"{_number(infos.get('latency_p99_ms'), ' ms')}"),
        ("search parameters", f"`{infos['index_param']}`" if infos.get("index_param") else "-"),
    ])
    lines += ["", "## Files", ""]
    rows = []
    for folder, name, what in FOLDERS:
        files, n, columns = summaries[folder]
        if files:
            cols = ", ".join(f"`{c}` {t}" for c, t in columns)
            rows.append((f"`{folder}/`", f"{what}; {files} file(s), {n} rows; config `{name}`",
                         cols))
    rows += [(f"`{posixpath.join(schema.FAISS_DIR, schema.INDEX_FILE)}`",
              "the faiss index (read with `faiss.read_index`)", "-"),
             (f"`{schema.MANIFEST}`", "model, dimension, dtype, counts by status", "-"),
             (f"`{schema.INDEX_INFOS}`", "index key, recall, latency, autofaiss's figures", "-")]
    if io.exists(io.join(output_dir, schema.FAISS_DIR, RERANK_FILE)):
        rows.append((f"`{posixpath.join(schema.FAISS_DIR, RERANK_FILE)}`",
                     "the stored vectors a two-stage index re-ranks its candidates against "
                     "(a faiss fp16 scalar-quantizer index, memory-mapped by queries)", "-"))
    if io.exists(io.join(output_dir, schema.FAISS_DIR, schema.MAPPING_FILE)):
        rows.append((f"`{posixpath.join(schema.FAISS_DIR, schema.MAPPING_FILE)}`",
                     "the id mapping again as one Arrow file, memory-mapped by queries", "-"))
    if io.exists(io.join(output_dir, schema.REPORT)):
        rows.append((f"`{schema.REPORT}`", "the run report", "-"))
    lines += _table(("path", "what", "columns"), rows)
    lines += ["", "## Query it", "", "```bash", "pip install clip-index",
              f"clip-index query hf://{repo_id} --text 'a dog on a beach' -k 10",
              f"clip-index query hf://{repo_id} --image my_photo.jpg --json",
              f"clip-index serve hf://{repo_id}", "```", "", "```python",
              "from clip_index import ClipIndex", "",
              f'index = ClipIndex.from_hub("{repo_id}")  # downloaded once into the HF cache',
              'for r in index.search_text("a dog on a beach", k=10):',
              "    print(r.score, r.url, r.caption)", "```", "",
              "The query model is the one above, so query and index embeddings match. The "
              "embeddings themselves load with `datasets`:", "", "```python",
              "from datasets import load_dataset", "",
              f'rows = load_dataset("{repo_id}", "embeddings", split="train")', "```", ""]
    return "\n".join(lines)
