"""HTTP API over ClipIndex that speaks clip-retrieval's back-end protocol (`POST /knn-service`,
`POST /metadata`, `GET /indices-list`), so clip-retrieval's own ClipClient works against it, plus
`GET /health`, `GET /thumbnail/{indice_name}/{id}` (the image kept in the published folder,
so results show after their URL dies; each result names it in a `thumbnail` field, a path
relative to the server) and a small search page at `/`. No search logic of its own.

Hardened where clip-retrieval's back end is not: every request is validated (4xx with a message,
never a 500 for bad input), num_images, ids and payloads are bounded, `image_url` is fetched by
the download step's client (address guard, redirects checked per hop, size cap), and CORS is
closed unless origins are named.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations at runtime,
# and the request models are local to create_app (their bounds come from the settings).
import argparse
import base64
import binascii
import functools
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from clip_index.config import DownloadConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeSettings:
    """Limits and policies of the server.

    max_num_images: the most results (num_images, num_result_ids) or ids one request may ask.
    max_request_bytes: the largest request body; max_image_bytes: the largest image (base64
        decoded, or fetched from image_url). fetch: how image_url is fetched (the download
        step's settings; allow_private_networks is off unless asked).
    cors_origins: origins allowed to call the API from a browser (none = same origin only).
    max_drain_bytes: an oversized body is read and discarded up to this many bytes before the
        413 is sent, so that the client, still sending, reads the 413 instead of a connection
        reset (closing a socket with unread data makes the kernel answer with RST); past this
        bound the connection is closed.
    strict_options: answer 400 to a clip-retrieval option this server cannot honour (safety
        model, violence detector, aesthetic score) instead of answering without it and naming
        it in the IGNORED_HEADER response header.
    heads: index name → `clip_index.search.heads.LaionHeads` (LAION's aesthetic embeddings and
        violence prompts), only for indexes built with an OpenAI CLIP model.
    """

    max_num_images: int = 1000
    max_request_bytes: int = 16 * 1024 * 1024
    max_image_bytes: int = 8 * 1024 * 1024
    fetch: DownloadConfig = field(default_factory=lambda: DownloadConfig(
        timeout_s=10.0, download_retries=0, max_image_bytes=8 * 1024 * 1024))
    cors_origins: tuple[str, ...] = ()
    max_drain_bytes: int = 64 * 1024 * 1024
    strict_options: bool = False
    heads: dict[str, Any] = field(default_factory=dict)


def _limit_body(app: Any, settings: ServeSettings) -> None:
    """Answer 413 to a body over `max_request_bytes` (drained first, up to `max_drain_bytes`,
    so that the client reads the answer) and 411 to a POST without a Content-Length."""
    from fastapi import Request
    from fastapi.responses import JSONResponse

    @app.middleware("http")
    async def bound_body(request: Request, call_next: Any) -> Any:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) >
                                   settings.max_request_bytes):
            drained = 0
            if length.isdigit() and int(length) <= settings.max_drain_bytes:
                async for chunk in request.stream():  # discarded, chunk by chunk
                    drained += len(chunk)
                    if drained > settings.max_drain_bytes:
                        break
            return JSONResponse(
                {"detail": f"request body of {length} bytes: expected at most "
                 f"{settings.max_request_bytes} bytes"}, status_code=413,
                headers={} if drained else {"Connection": "close"})
        if length is None and request.method == "POST":
            return JSONResponse({"detail": "a POST needs a Content-Length header"},
                                status_code=411)
        return await call_next(request)


def _log_unexpected(app: Any) -> None:
    """A 500 that names the error, logged with its traceback."""
    from fastapi import Request
    from fastapi.responses import JSONResponse

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Any:
        log.exception("serve: %s %s failed", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {exc}"[:500]},
                            status_code=500)


async def _parse(request: Any, model: Any) -> Any:
    """The body as JSON whatever its Content-Type (clip-retrieval's ClipClient sends none,
    and its Flask back end parsed with force=True), validated by `model`."""
    from fastapi import HTTPException
    from pydantic import ValidationError

    raw = await request.body()
    try:
        return model.model_validate(json.loads(raw or b"null"))
    except json.JSONDecodeError as exc:
        raise HTTPException(422, f"request body is not JSON ({exc}): expected a JSON "
                            "object") from exc
    except ValidationError as exc:
        raise HTTPException(422, json.loads(exc.json(include_url=False,
                                                     include_input=False))) from exc


def _decode_image(data: str, max_image_bytes: int) -> bytes:
    """Base64 image bytes (or a data: URL's), at most `max_image_bytes` of them."""
    from fastapi import HTTPException

    if len(data) > max_image_bytes * 4 // 3 + 4:
        raise HTTPException(413, f"image: expected at most {max_image_bytes} bytes")
    if data.startswith("data:") and "," in data:  # a data URL from a browser
        data = data.split(",", 1)[1]
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise HTTPException(400, f"image: expected base64-encoded image bytes ({exc})") \
            from exc


def _check_dim(values: list[float], index: Any) -> None:
    from fastapi import HTTPException

    if len(values) != index.dim:
        raise HTTPException(400, f"embedding_input has {len(values)} values: expected "
                            f"{index.dim}")


async def _image_body(q: Any, settings: ServeSettings) -> bytes:
    """The request's image: its base64 `image`, else the body fetched from `image_url`."""
    from clip_index.fetch import fetch_url_async

    if q.image:
        return _decode_image(q.image, settings.max_image_bytes)
    return await fetch_url_async(str(q.image_url), settings.fetch)


async def _query_embedding(q: Any, index: Any, settings: ServeSettings) -> Any:
    """The request's query as one normalised embedding (text, image or embedding_input)."""
    import numpy as np
    from fastapi.concurrency import run_in_threadpool

    if q.text:
        return await run_in_threadpool(index.model.encode_text, [q.text])
    if q.embedding_input:
        _check_dim(q.embedding_input, index)
        return np.asarray([q.embedding_input], dtype=np.float32)
    from clip_index.search.searcher import encode_image_bytes

    return await run_in_threadpool(encode_image_bytes, index, await _image_body(q, settings))


def create_app(indices: dict[str, Any], settings: ServeSettings | None = None) -> Any:
    """The FastAPI application serving `indices` (name → ClipIndex)."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import HTMLResponse, Response
    from pydantic import BaseModel, ConfigDict, Field

    from clip_index.index.thumbnails import MEDIA_TYPE, Thumbnails
    from clip_index.schema import RowError, Status
    from clip_index.search.filters import Filters
    from clip_index.search.heads import IGNORED_HEADER, apply_heads, requested_options
    from clip_index.search.page import PAGE_HTML

    if not indices:
        raise ValueError("serve: expected at least one index")
    settings = settings or ServeSettings()
    limit = settings.max_num_images
    thumbnails = {name: Thumbnails(ix.output_dir, len(ix)) for name, ix in indices.items()}
    app = FastAPI(title="clip-index", description=__doc__.split("\n")[0], docs_url="/docs")
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST"], allow_headers=["Content-Type"])
    _limit_body(app, settings)
    _log_unexpected(app)
    parse = _parse

    check_dim = _check_dim
    image_body = functools.partial(_image_body, settings=settings)
    query_embedding = functools.partial(_query_embedding, settings=settings)

    class KnnQuery(BaseModel):
        """clip-retrieval's /knn-service body, plus `filters` (clip_index.search.filters; a
        field clip-retrieval does not have). Its options that this index cannot honour are
        accepted and named in the IGNORED_HEADER response header (400 with strict_options);
        use_mclip is refused."""

        model_config = ConfigDict(extra="ignore")
        text: str | None = Field(None, max_length=10_000)
        image: str | None = None
        image_url: str | None = Field(None, max_length=4096)
        embedding_input: list[float] | None = Field(None, max_length=65_536)
        modality: Literal["image", "text"] = "image"
        num_images: int = Field(40, ge=1, le=limit)
        num_result_ids: int | None = Field(None, ge=1, le=limit)
        indice_name: str | None = None
        deduplicate: bool = False
        use_mclip: bool = False
        use_safety_model: bool = False
        use_violence_detector: bool = False
        aesthetic_score: Any = None
        aesthetic_weight: Any = None
        filters: dict[str, Any] | None = None

    class MetadataQuery(BaseModel):
        model_config = ConfigDict(extra="ignore")
        ids: list[int] = Field(..., max_length=limit)
        indice_name: str | None = None

    def pick(name: str | None) -> tuple[str, Any]:
        if name is None or name == "":
            name = next(iter(indices))
        if name not in indices:
            raise HTTPException(404, f"indice_name={name!r}: expected one of {sorted(indices)}")
        return name, indices[name]

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE_HTML

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "strict_options": settings.strict_options,
                "indices": {name: {"vectors": len(ix), "dim": ix.dim,
                                   "model": ix.manifest.get("model"),
                                   "filter_columns": ix.columns.names,
                                   "heads": sorted(k for k, v in vars(settings.heads[name])
                                                   .items() if k != "source" and v is not None)
                                   if name in settings.heads else []}
                            for name, ix in indices.items()}}

    @app.get("/thumbnail/{indice_name}/{i}")
    def thumbnail(indice_name: str, i: int) -> Any:
        name, index = pick(indice_name)
        body = thumbnails[name].get(i) if 0 <= i < len(index) else None
        if body is None:
            raise HTTPException(404, f"no thumbnail for id {i} in {name!r}")
        return Response(body, media_type=MEDIA_TYPE,
                        headers={"Cache-Control": "public, max-age=86400"})

    def thumbnail_path(name: str, i: int) -> dict[str, str]:
        return {"thumbnail": f"thumbnail/{name}/{i}"} if thumbnails[name].available else {}

    @app.get("/indices-list")
    def indices_list() -> list[str]:
        return list(indices)

    @app.post("/knn-service")
    async def knn_service(request: Request, response: Response) -> list[dict[str, Any]]:
        q = await parse(request, KnnQuery)
        given = [n for n in ("text", "image", "image_url", "embedding_input")
                 if getattr(q, n) not in (None, "", [])]
        if len(given) != 1:
            raise HTTPException(400, "expected exactly one of text, image (base64), image_url "
                                f"or embedding_input; got {given or 'none'}")
        if q.modality != "image":
            raise HTTPException(400, "modality='text': this index holds image embeddings only; "
                                "expected modality='image'")
        if q.use_mclip:
            raise HTTPException(400, "use_mclip=true: multilingual CLIP is not served here")
        name, index = pick(q.indice_name)
        wanted = max(q.num_images, q.num_result_ids or q.num_images)
        heads = settings.heads.get(name)
        try:
            options = requested_options(q.model_dump(), heads, "{model}/{pretrained}".format(
                **{"model": "?", "pretrained": "?", **index.manifest}))
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from exc
        if options.ignored:
            if settings.strict_options:
                raise HTTPException(400, options.refusal())
            response.headers[IGNORED_HEADER] = ", ".join(options.ignored)
        if q.filters and "uids" in q.filters:
            raise HTTPException(400, "filters.uids names a file on the server: not accepted "
                                "over HTTP (use `clip-index query --uids` or ClipIndex)")
        try:
            filters = Filters.parse(q.filters)
            await run_in_threadpool(index.selection, filters)  # bad filters: 400 before work
            if options.applied:  # a query embedding the heads change (clip-retrieval's order)
                query = await query_embedding(q, index)
                results = await run_in_threadpool(apply_heads, index, heads, options, query,
                                                  wanted, q.deduplicate, filters)
            elif q.text:
                results = await run_in_threadpool(index.search_text, q.text, wanted,
                                                  q.deduplicate, filters)
            elif q.embedding_input:
                check_dim(q.embedding_input, index)
                results = (await run_in_threadpool(index.search_embedding, q.embedding_input,
                                                   wanted, q.deduplicate, filters))[0]
            else:
                body = await image_body(q)
                results = await run_in_threadpool(index.search_image, body, wanted,
                                                  q.deduplicate, filters)
        except RowError as exc:  # the image_url fetch, as the download step words it
            code = 400 if exc.status is Status.BLOCKED else (
                413 if str(exc).startswith("too_large") else 422)
            raise HTTPException(code, f"image_url: {exc}") from exc
        except ValueError as exc:  # undecodable image, NaN embedding, empty text, ...
            raise HTTPException(400, str(exc)) from exc
        out = []
        for rank, r in enumerate(results):
            row: dict[str, Any] = {"id": r.id, "similarity": r.score}
            if rank < q.num_images:
                row.update(uid=r.uid, url=r.url, caption=r.caption,
                           **thumbnail_path(name, r.id))
            out.append(row)
        return out

    @app.post("/metadata")
    async def metadata(request: Request) -> list[dict[str, Any]]:
        q = await parse(request, MetadataQuery)
        name, index = pick(q.indice_name)
        bad = [i for i in q.ids if not 0 <= i < len(index)]
        if bad:
            raise HTTPException(400, f"ids {bad[:10]}: expected ids in 0..{len(index) - 1}")
        return [{"id": i, "metadata": {**index.metadata(i), **thumbnail_path(name, i)}}
                for i in q.ids]

    return app


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output_dir", nargs="+",
                        help="published clip-index folder(s); NAME=DIR names an index "
                             "(default name: the folder's name)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=1234, help="TCP port (default: 1234)")
    parser.add_argument("--mmap", action="store_true", help="memory-map the index")
    parser.add_argument("--max-num-images", type=int, default=ServeSettings.max_num_images,
                        help="the most results or ids one request may ask (default: "
                        f"{ServeSettings.max_num_images})")
    parser.add_argument("--max-request-bytes", type=int,
                        default=ServeSettings.max_request_bytes,
                        help="the largest request body, bytes (default: "
                        f"{ServeSettings.max_request_bytes})")
    parser.add_argument("--cors-origin", action="append", default=[],
                        help="allow browser calls from this origin (repeat; default: none)")
    parser.add_argument("--allow-private-networks", action="store_true",
                        help="let image_url reach private/loopback addresses (tests, LANs)")
    parser.add_argument("--faiss-threads", type=int, default=1,
                        help="threads per search (requests already run side by side)")
    parser.add_argument("--strict-options", action="store_true",
                        help="answer 400 to clip-retrieval options this index cannot honour "
                        "(use_safety_model, use_violence_detector, aesthetic_score) instead "
                        "of answering without them and naming them in the "
                        "X-Clip-Index-Ignored-Options header")
    parser.add_argument("--aesthetic-embeddings", default=None, metavar="DIR_OR_URL",
                        help="LAION's aesthetic rating embeddings (rating0.npy .. rating9.npy, "
                        "e.g. LAION-AI/aesthetic-predictor's vit_b_32_embeddings/), for "
                        "indexes built with an OpenAI CLIP model only")
    parser.add_argument("--violence-prompts", default=None, metavar="FILE_OR_URL",
                        help="LAION's violence prompt embeddings (e.g. CLIP-based-NSFW-"
                        "Detector's violence_detection_vit_b_32.npy), OpenAI CLIP indexes only")


def command(args: argparse.Namespace) -> int:
    import os

    import uvicorn

    from clip_index.search.searcher import ClipIndex

    indices = {}
    for spec in args.output_dir:
        name, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        name = name or os.path.basename(os.path.normpath(path)) or "index"
        indices[name] = ClipIndex(path, mmap=args.mmap, threads=args.faiss_threads)
        _ = indices[name].model  # load the query model now: fail at start, not per request
    if args.max_num_images < 1:
        raise ValueError(f"--max-num-images={args.max_num_images}: expected an integer >= 1")
    fetch = DownloadConfig(timeout_s=10.0, download_retries=0,
                           max_image_bytes=ServeSettings.max_image_bytes,
                           allow_private_networks=args.allow_private_networks)
    from clip_index.search.heads import load_heads

    heads = {name: load_heads(ix, args.aesthetic_embeddings, args.violence_prompts)
             for name, ix in indices.items()
             if args.aesthetic_embeddings or args.violence_prompts}
    settings = ServeSettings(max_num_images=args.max_num_images,
                             max_request_bytes=args.max_request_bytes, fetch=fetch,
                             cors_origins=tuple(args.cors_origin),
                             strict_options=args.strict_options, heads=heads)
    app = create_app(indices, settings)
    log.info("serving %s on http://%s:%d", sorted(indices), args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
