"""Report step: a summary of a published output folder — rows, failures by reason, index
quality, sample queries — as Markdown (`report.md`) and as a self-contained HTML page
(`report.html`) whose thumbnail grid embeds small data URIs: the thumbnails the download step
made and the write step kept in ``output_dir/thumbnails/`` (a result without one links its
URL). It reads the published folder only: no download step's folder is an input.

Why both: Vertex AI shows a Markdown artifact inline and opens an HTML artifact in a new tab.
Image URLs in the Markdown depend on the viewer reaching the image hosts (many block hot-linking
or are gone); the HTML's data URIs render anywhere, offline included.
"""

from __future__ import annotations

import base64
import html
import logging
from dataclasses import dataclass, field
from typing import Any

from clip_index import io, schema

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Thumb:
    """One image of the grid: the row and how it scored; `src` is a data URI or the row's URL."""

    uid: str
    url: str | None
    caption: str | None
    score: float | None
    src: str | None


@dataclass
class Report:
    """The report as Markdown and HTML, plus the figures it shows (for artifact metadata)."""

    markdown: str
    html: str
    summary: dict[str, Any]
    samples: list[tuple[Thumb, list[Thumb]]] = field(default_factory=list)


def _table(rows: list[tuple[Any, ...]], header: tuple[str, ...]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def summary_rows(manifest: dict[str, Any], infos: dict[str, Any]) -> list[tuple[str, Any]]:
    """The run table: what a reviewer checks first."""
    totals = manifest["totals"]
    return [
        ("rows", totals["rows"]), ("embedded", totals["successes"]),
        ("failures", totals["failures"]), ("success rate", f"{totals['success_rate']:.1%}"),
        ("model", f"{manifest['model']} ({manifest['pretrained']})"),
        ("dimension / dtype", f"{manifest['dim']} / {manifest['dtype']}"),
        ("index", infos.get("index_key")), ("vectors", infos.get("vectors")),
        ("index size", f"{infos.get('size_bytes', 0) / 1e6:.2f} MB"),
        ("recall@1 / @10",
         f"{infos.get('recall_at_1', 'n/a')} / {infos.get('recall_at_10', 'n/a')}"),
        ("latency p50 / p99", f"{infos.get('latency_p50_ms')} / {infos.get('latency_p99_ms')} ms"),
    ]


def build_report(output_dir: str, sample_queries: int = 3, k: int = 4) -> Report:
    """Build the report of `output_dir` (the write and index steps' published folder)."""
    manifest = io.read_json(io.join(output_dir, schema.MANIFEST))
    infos = io.read_json(io.join(output_dir, schema.INDEX_INFOS))
    totals = manifest["totals"]
    samples = sample_queries_of(output_dir, sample_queries, k)
    thumbs = thumbnails({t.uid for q, rs in samples for t in [q, *rs]}, output_dir)
    samples = [(_with_src(q, thumbs), [_with_src(r, thumbs) for r in rs]) for q, rs in samples]
    rows = summary_rows(manifest, infos)
    summary = {
        "output_dir": output_dir, **{k: totals[k] for k in ("rows", "successes", "failures",
                                                             "success_rate")},
        "statuses": totals["statuses"], "errors": totals.get("errors", {}),
        "model": manifest["model"], "pretrained": manifest["pretrained"], "dim": manifest["dim"],
        **{k: infos[k] for k in ("index_key", "vectors", "size_bytes", "recall_at_1",
                                 "recall_at_10", "latency_p50_ms") if k in infos},
        "sample_queries": len(samples), "thumbnails": len(thumbs),
    }
    return Report(_markdown(output_dir, rows, totals, samples),
                  _html(output_dir, rows, totals, samples), summary, samples)


def run_report(output_dir: str, sample_queries: int = 3, k: int = 4) -> Report:
    """Write ``output_dir/report.md`` and ``report.html``; return the report."""
    report = build_report(output_dir, sample_queries, k)
    io.write_bytes_atomic(io.join(output_dir, schema.REPORT), report.markdown.encode())
    io.write_bytes_atomic(io.join(output_dir, REPORT_HTML), report.html.encode())
    return report


REPORT_HTML = "report.html"


def sample_queries_of(output_dir: str, n: int, k: int) -> list[tuple[Thumb, list[Thumb]]]:
    """`n` indexed rows (seeded pick from the first data shard), each with its top-k results
    when its own embedding is the query."""
    import numpy as np

    from clip_index.index.staging import embeddings_array
    from clip_index.search.searcher import ClipIndex

    index = ClipIndex(output_dir)
    shards = io.list_shards(io.join(output_dir, schema.DATA_DIR))
    if not shards or len(index) == 0:
        return []
    table = io.read_parquet(shards[0])
    picks = np.random.default_rng(0).choice(table.num_rows, min(n, table.num_rows), False)
    samples = []
    for pick in sorted(int(p) for p in picks):
        row = table.slice(pick, 1).to_pylist()[0]
        query = Thumb(row[schema.UID], row[schema.URL], row[schema.CAPTION], None, None)
        results = index.search_embedding(embeddings_array(table.slice(pick, 1)), k)[0]
        samples.append((query, [Thumb(r.uid or str(r.id), r.url, r.caption, r.score, None)
                                for r in results]))
    return samples


def thumbnails(uids: set[str], output_dir: str) -> dict[str, str]:
    """uid → a data URI for the uids whose WebP is in ``output_dir/thumbnails/``; only the
    shards that hold them are read (the id mapping says which)."""
    from clip_index.index.thumbnails import MEDIA_TYPE, thumbnails_by_uid

    return {uid: f"data:{MEDIA_TYPE};base64," + base64.b64encode(body).decode()
            for uid, body in thumbnails_by_uid(output_dir, uids).items()}


def _with_src(t: Thumb, thumbs: dict[str, str]) -> Thumb:
    return Thumb(t.uid, t.url, t.caption, t.score, thumbs.get(t.uid))


def _markdown(output_dir: str, rows: list[tuple[str, Any]], totals: dict[str, Any],
              samples: list[tuple[Thumb, list[Thumb]]]) -> str:
    lines = [f"# clip-index report: `{output_dir}`", ""]
    lines += _table(rows, ("", "value"))
    lines += ["", "## Rows by status", ""]
    lines += _table(sorted(totals["statuses"].items(), key=lambda kv: -kv[1]), ("status", "rows"))
    if totals.get("errors"):
        lines += ["", "## Most frequent errors", ""]
        lines += _table(list(totals["errors"].items()), ("error", "rows"))
    lines += ["", "## Sample queries (an indexed image's own embedding)", ""]
    if not samples:
        lines.append("(no data)")
    for query, results in samples:
        lines += [f"**{query.caption}** (`{query.uid}`)", ""]
        lines += _table([(f"![]({r.url})", r.caption, f"{r.score:.3f}") for r in results],
                        ("image", "caption", "score"))
        lines.append("")
    return "\n".join(lines) + "\n"


_CSS = ("body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
        ".grid{display:flex;gap:8px;flex-wrap:wrap;margin-bottom:1.5em}"
        ".cell{width:120px;font-size:11px;word-wrap:break-word}"
        ".cell img{max-width:110px;max-height:110px;display:block}.q{background:#eef}")


def _html(output_dir: str, rows: list[tuple[str, Any]], totals: dict[str, Any],
          samples: list[tuple[Thumb, list[Thumb]]]) -> str:
    e = html.escape

    def table(items: list[tuple[Any, ...]], header: tuple[str, ...]) -> str:
        head = "".join(f"<th>{e(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>"
                       for r in items)
        return f"<table><tr>{head}</tr>{body}</table>"

    def cell(t: Thumb, css: str = "cell") -> str:
        img = (f'<img src="{t.src}" alt="{e(t.uid)}">' if t.src else
               f'<a href="{e(t.url or "")}">(no thumbnail kept)</a>')
        score = "query" if t.score is None else f"{t.score:.3f}"
        return (f'<div class="{css}">{img}<b>{e(score)}</b><br>{e(t.caption or "")}'
                f"<br><code>{e(t.uid)}</code></div>")

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>clip-index report"
             f"</title><style>{_CSS}</style></head><body>",
             f"<h1>clip-index report: <code>{e(output_dir)}</code></h1>",
             table(rows, ("", "value")),
             "<h2>Rows by status</h2>",
             table(sorted(totals["statuses"].items(), key=lambda kv: -kv[1]), ("status", "rows"))]
    if totals.get("errors"):
        parts += ["<h2>Most frequent errors</h2>",
                  table(list(totals["errors"].items()), ("error", "rows"))]
    parts.append("<h2>Sample queries (an indexed image's own embedding; first cell is the "
                 "query)</h2>")
    for query, results in samples:
        parts.append('<div class="grid">' + cell(query, "cell q")
                     + "".join(cell(r) for r in results) + "</div>")
    if not samples:
        parts.append("<p>(no data)</p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
