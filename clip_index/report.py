"""Report step: a Markdown summary of a published output folder: rows, failures by reason,
throughput per step, index quality, and sample queries with thumbnails."""

from __future__ import annotations

from typing import Any

from clip_index import io, schema


def _table(rows: list[tuple[Any, ...]], header: tuple[str, ...]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def run_report(output_dir: str, sample_queries: int = 3, k: int = 4) -> str:
    """The report text; also written to ``output_dir/report.md``."""
    manifest = io.read_json(io.join(output_dir, schema.MANIFEST))
    infos = io.read_json(io.join(output_dir, schema.INDEX_INFOS))
    totals = manifest["totals"]
    lines = [f"# clip-index report: `{output_dir}`", ""]
    lines += _table([
        ("rows", totals["rows"]), ("embedded", totals["successes"]),
        ("failures", totals["failures"]), ("success rate", f"{totals['success_rate']:.1%}"),
        ("model", f"{manifest['model']} ({manifest['pretrained']})"),
        ("dimension / dtype", f"{manifest['dim']} / {manifest['dtype']}"),
        ("index", infos.get("index_key")), ("vectors", infos.get("vectors")),
        ("index size", f"{infos.get('size_bytes', 0) / 1e6:.2f} MB"),
        ("recall@1 / @10", f"{infos.get('recall_at_1', 'n/a')} / {infos.get('recall_at_10', 'n/a')}"),
        ("latency p50 / p99", f"{infos.get('latency_p50_ms')} / {infos.get('latency_p99_ms')} ms"),
    ], ("", "value"))
    lines += ["", "## Rows by status", ""]
    lines += _table(sorted(totals["statuses"].items(), key=lambda kv: -kv[1]), ("status", "rows"))
    if totals.get("errors"):
        lines += ["", "## Most frequent errors", ""]
        lines += _table(list(totals["errors"].items()), ("error", "rows"))
    lines += ["", "## Sample queries (an indexed image's own embedding)", ""]
    lines += _sample_queries(output_dir, sample_queries, k)
    text = "\n".join(lines) + "\n"
    io.write_bytes_atomic(io.join(output_dir, schema.REPORT), text.encode())
    return text


def _sample_queries(output_dir: str, n: int, k: int) -> list[str]:
    import numpy as np

    from clip_index.index import embeddings_array
    from clip_index.search import ClipIndex

    index = ClipIndex(output_dir)
    shards = io.list_shards(io.join(output_dir, schema.DATA_DIR))
    if not shards or len(index) == 0:
        return ["(no data)"]
    table = io.read_parquet(shards[0])
    picks = np.random.default_rng(0).choice(table.num_rows, min(n, table.num_rows), False)
    lines = []
    for pick in picks:
        row = table.slice(int(pick), 1)
        results = index.search_embedding(embeddings_array(row), k)[0]
        lines.append(f"**{row.column(schema.CAPTION)[0]}** (`{row.column(schema.UID)[0]}`)")
        lines.append("")
        lines += _table([(f"![]({r.url})", r.caption, f"{r.score:.3f}") for r in results],
                        ("image", "caption", "score"))
        lines.append("")
    return lines
