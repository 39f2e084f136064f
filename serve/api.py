"""The FastAPI app: OpenAI-compatible ``POST /v1/chat/completions`` with a ``recommendation`` field,
``GET /v1/models``, ``GET /health``, item images and the chat page (``/``).

Every bad request is answered 4xx in OpenAI's error shape and leaves the engine and sessions as they were:
a turn works on a copy of its session, saved only once the engine has answered. Session ids are issued
by the server; an unknown or expired ``session_id`` is refused (404), never adopted. Engine runs are
bounded (``max_running`` at once, ``max_waiting`` queued, 503 beyond; ``request_timeout_s``, 504), CPU
work (steering, prompt, banned set, SQLite) runs in worker threads, and 5xx bodies are generic (the
details are logged under the request id).
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from think_rec.data.schema import RecDataset
from think_rec.decoding.claims import ClaimChecker
from think_rec.decoding.prior import CollaborativePrior
from think_rec.decoding.think import CitationStream, render_citations
from think_rec.finetune.rationale_filters import citation_title, title_mentioned
from think_rec.model.artefacts import ServedConfig, model_codebook
from think_rec.steering import Clause

from .conversation import Conversation, Session
from .engine import EngineBusy, EngineConfig, RecEngine, Recommendation
from .engines import build_engine
from .errors import Busy, RequestError, error_body, error_response
from .images import served_image
from .middleware import REQUEST_ID, Guard, configure_logging
from .protocol import (AssistantMessage, ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, Choice,
                       ChunkChoice, ClauseReport, DeltaMessage, ItemCard, ModelCard, ModelList, RecommendedItem, Usage)
from .protocol import Recommendation as RecommendationOut
from .sessions import SessionStore, new_session_id

STATIC = Path(__file__).resolve().parent / "static"
log = logging.getLogger("think_rec.serve")


@dataclass
class ServeConfig:
    """What ``think-rec serve`` needs: the model, its data and SIDs, the backend, the address and the limits."""

    model: Path
    data: Path
    sids: Path
    backend: str = "vllm"
    model_name: str | None = None
    think: bool = False  # default for requests that do not say (stage-2 models think)
    host: str = "127.0.0.1"
    port: int = 8000
    think_ahead: Path | None = None  # the store of backend "think_ahead"
    think_ahead_base: str = "vllm"
    api_key: str | None = None  # Bearer key for /v1/* (required off loopback)
    image_root: Path | None = None  # item images are served only from under it (default: ``data``)
    session_db: Path | None = None  # SQLite file of the sessions (default: MODEL/sessions.sqlite)
    max_sessions: int = 10_000
    session_ttl_s: float = 7 * 86400
    max_model_len: int = 4096  # prompt + rationale + SID tokens
    tensor_parallel_size: int = 1  # vLLM: GPUs one model is split over
    data_parallel_size: int = 1  # vLLM: model replicas
    dtype: str | None = None  # vLLM: None = the model's served.json
    max_running: int = 4  # engine runs at once
    max_waiting: int = 64  # requests queued for a run (503 beyond)
    request_timeout_s: float = 120.0  # queueing + engine (504 beyond)
    max_body_bytes: int = 1 << 20


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Turn:
    """One prepared request: a draft of its session (saved after the engine answers) and the engine inputs."""

    session: Session
    prompt: str
    prompt_tokens: int
    banned: set[str]
    k: int
    think: bool
    max_think_tokens: int
    clauses: list[Clause]  # what became of this turn's words (and removed constraints)


class Limiter:
    """At most ``running`` engine runs at once and ``running + waiting`` requests holding or awaiting one."""

    def __init__(self, running: int, waiting: int):
        self.capacity, self.inflight = running + waiting, 0
        self.semaphore = asyncio.Semaphore(running)

    def check(self) -> None:
        if self.inflight >= self.capacity:
            raise Busy(f"{self.inflight} requests are in flight; retry later")

    async def acquire(self) -> None:
        self.check()
        self.inflight += 1
        try:
            await self.semaphore.acquire()
        except BaseException:
            self.inflight -= 1
            raise

    def release(self) -> None:
        self.semaphore.release()
        self.inflight -= 1


class RecService:
    """The catalog, sessions and engine behind the API."""

    def __init__(self, config: ServeConfig, engine: RecEngine | None = None):
        from transformers import AutoTokenizer

        self.config = config
        self.dataset = RecDataset.load(config.data)
        self.codebook = model_codebook(config.sids, config.model)
        self.tokenizer = AutoTokenizer.from_pretrained(str(config.model))
        self.served, prior = ServedConfig.load(config.model), CollaborativePrior.load(config.model)
        self.settings = {**asdict(self.served), "prior_weight": prior.weight if prior else 0.0,
                         "prior_selection": prior.selection if prior else None}
        self.max_history = self.served.max_history
        self.claims = ClaimChecker(self.dataset.catalog.by_id)
        self.conversation = Conversation(self.dataset, self.codebook, self.tokenizer, self.max_history)
        self.sessions = SessionStore(config.session_db or Path(config.model) / "sessions.sqlite",
                                     config.max_sessions, config.session_ttl_s)
        self.image_root = Path(config.image_root or config.data)
        self.limiter = Limiter(config.max_running, config.max_waiting)
        self.model_name = config.model_name or Path(config.model).name
        self.engine = engine or build_engine(config.backend, EngineConfig(
            Path(config.model), Path(config.sids), max_model_len=config.max_model_len,
            think_ahead=config.think_ahead, think_ahead_base=config.think_ahead_base,
            max_history=self.max_history, max_queue=config.max_waiting,
            tensor_parallel_size=config.tensor_parallel_size, data_parallel_size=config.data_parallel_size,
            dtype=config.dtype))

    async def begin(self, req: ChatCompletionRequest) -> Turn:
        """Validate the request's ids, load its session (or open one) and prepare the turn on a copy of it."""
        if req.model is not None and req.model != self.model_name:
            raise RequestError(404, f"the model {req.model!r} does not exist; this server serves "
                                    f"{self.model_name!r}", "model")
        if req.user is not None and req.user not in self.conversation.histories:
            raise RequestError(400, f"unknown user id {req.user!r}", "user")
        unknown = [i for i in req.history or [] if i not in self.codebook.codes]
        if unknown:
            raise RequestError(400, f"unknown item ids in history: {unknown[:5]}", "history")
        if req.session_id is None:
            return await asyncio.to_thread(self._prepare, req, Session(new_session_id()), True)
        session = await asyncio.to_thread(self.sessions.get, req.session_id)
        if session is None:
            raise RequestError(404, "unknown or expired session_id (session ids are issued by the server: omit "
                                    "it to start a new session)", "session_id")
        return await asyncio.to_thread(self._prepare, req, session, False)

    def _prepare(self, req: ChatCompletionRequest, session: Session, new: bool) -> Turn:
        """Fold the user's words into ``session`` (steering), fit the prompt to the model, compute the bans."""
        if req.history is not None:
            session.history = list(req.history)
        elif req.user is not None and (new or not session.history):
            session.history = list(self.conversation.histories[req.user])
        users = [m.text for m in req.messages if m.role == "user"]
        clauses = [c for text in (users if new else users[-1:]) if text.strip()
                   for c in self.conversation.add_user_message(session, text)]
        clauses += self.conversation.remove_constraints(session, req.remove_constraints)
        think = self.config.think if req.think is None else req.think
        reserve = self.codebook.levels + 2 + (req.max_think_tokens + 2 if think else 0)
        prompt, n = self.conversation.fit_prompt(session, self.config.max_model_len - reserve)
        seen = req.exclude_seen  # None: history as the model was measured, earlier answers never again
        banned = self.conversation.banned(session, self.served.exclude_history if seen is None else seen,
                                          seen is not False)
        k = min(req.k, len(self.codebook) - len(banned & set(self.codebook.codes)))
        return Turn(session, prompt, n, banned, k, think, req.max_think_tokens, clauses)

    async def run(self, turn: Turn) -> AsyncIterator[str | Recommendation]:
        """The engine's events (an empty ``Recommendation`` when no item satisfies the constraints), in a
        limiter slot and before the request's deadline; the session is saved once the items are known."""
        deadline = asyncio.get_running_loop().time() + self.config.request_timeout_s
        try:
            async with asyncio.timeout_at(deadline):  # waiting for a slot counts against the deadline
                await self.limiter.acquire()
        except TimeoutError:
            raise RequestError(504, f"no engine slot within {self.config.request_timeout_s:g} s") from None
        try:
            if turn.k <= 0:
                events = _one(Recommendation("", []))
            else:  # a thinking ranking follows its rationale over the served beam's items (ClaimChecker.answer)
                pool = max(turn.k, self.served.num_beams) if turn.think and self.served.follow_weight else turn.k
                events = self.engine.stream(turn.prompt, k=pool, banned=turn.banned, think=turn.think,
                                            max_think_tokens=turn.max_think_tokens,
                                            history=turn.session.history[-self.max_history:])
            catalog = self.conversation.catalog
            titles = {self.codebook.sid_string(i): (i, citation_title(catalog[i])) for i in turn.session.history}
            stream = CitationStream(titles)  # citations (SIDs) in the rationale are shown as titles
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        event = await anext(events)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise RequestError(504, f"the request took longer than {self.config.request_timeout_s:g} s")
                except EngineBusy as e:
                    raise Busy(str(e)) from None
                if isinstance(event, Recommendation):
                    rationales = [render_citations(r, titles)[0].strip() for r in [event.rationale, *event.samples]]
                    event = replace(event, rationale=rationales[0], samples=[])
                    if turn.think:
                        history = turn.session.history[-self.max_history:]
                        event = Recommendation(*self.claims.answer(rationales, history, event.items,
                                                                   self.served.follow_weight, turn.k))
                    self.finish(turn.session, event)
                    await asyncio.to_thread(self.sessions.put, turn.session)
                    yield event
                elif text := stream.feed(event):
                    yield text
        finally:
            self.limiter.release()

    def card(self, item_id: str) -> ItemCard:
        """The catalog item as the page shows it (its image as a URL, when it has one)."""
        it = self.conversation.catalog[item_id]
        img = it["image"]
        url = img if img and "://" in img else (f"/v1/items/{item_id}/image"
                                                if served_image(self.image_root, img) else None)
        return ItemCard(id=item_id, sid=self.codebook.sid_string(item_id), title=it["title"], brand=it["brand"] or None,
                        price=it["price"], categories=list(it["categories"]), image=url)

    def finish(self, session: Session, rec: Recommendation) -> None:
        """Record what was shown in the session."""
        ids = [i for i, _ in rec.items]
        session.last_items = ids
        session.recommended += ids

    def answer(self, turn: Turn, rec: Recommendation) -> tuple[str, RecommendationOut]:
        """The answer text (without the rationale) and the structured result: the items, the constraints and
        what became of this turn's clauses, the history used (most recent first) and the items the rationale
        cites."""
        session = turn.session
        used = list(dict.fromkeys(reversed(session.history[-self.max_history:])))
        catalog = self.conversation.catalog
        cited = [i for i in used if rec.rationale and title_mentioned(rec.rationale, catalog[i]["title"])]
        items = [RecommendedItem(**self.card(i).model_dump(), score=s) for i, s in rec.items]
        out = RecommendationOut(
            rationale=rec.rationale, items=items,
            constraints=session.constraints.as_dict(), active=session.constraints.describe(),
            clauses=[ClauseReport(**vars(c)) for c in turn.clauses], history=[self.card(i) for i in used], cited=cited)
        return self.conversation.answer(session, "", [i for i, _ in rec.items], turn.clauses), out


async def _one(event: Recommendation) -> AsyncIterator[Recommendation]:
    yield event


def create_app(service: RecService) -> FastAPI:
    """The app behind ``Guard`` (request ids, access log, API key, body cap); the engine starts with it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.engine.start()
        yield
        service.engine.shutdown()
        service.sessions.close()

    app = FastAPI(title="think-rec", lifespan=lifespan)
    app.add_middleware(Guard, api_key=service.config.api_key, max_body_bytes=service.config.max_body_bytes)

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, e: RequestError) -> JSONResponse:
        return error_response(e.status, e.message, e.param)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        errs = e.errors()
        if any(err["type"] == "json_invalid" for err in errs):
            return error_response(400, "the request body is not valid JSON")
        first = errs[0]
        loc = ".".join(str(x) for x in first["loc"] if x != "body")
        return error_response(400, f"{loc or 'body'}: {first['msg']}", loc or None)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, e: HTTPException) -> JSONResponse:
        return error_response(e.status_code, str(e.detail))

    @app.get("/health")
    async def health() -> JSONResponse:
        ok = service.engine.healthy()
        return JSONResponse({"status": "ok" if ok else "engine unavailable", "backend": service.engine.name,
                             "model": service.model_name, "items": len(service.codebook),
                             "sessions": await asyncio.to_thread(len, service.sessions),
                             "in_flight": service.limiter.inflight, **getattr(service.engine, "stats", {})},
                            status_code=200 if ok else 503)

    @app.get("/v1/models")
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=service.model_name, think_rec=service.settings)])

    @app.get("/v1/items/{item_id}/image")
    async def item_image(item_id: str) -> FileResponse:
        found = served_image(service.image_root, service.conversation.catalog[item_id]["image"]) \
            if item_id in service.codebook.codes else None
        if found is None:
            raise RequestError(404, f"item {item_id!r} has no local image")
        return FileResponse(found[0], media_type=found[1])

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest):
        turn = await service.begin(req)
        if req.stream:
            service.limiter.check()  # 503 before the stream starts
            return StreamingResponse(_sse(service, turn), media_type="text/event-stream")
        rec = None
        async for event in service.run(turn):
            if isinstance(event, Recommendation):
                rec = event
        answer, out = service.answer(turn, rec)
        content = f"{rec.rationale}\n\n{answer}" if rec.rationale else answer
        usage = Usage(prompt_tokens=turn.prompt_tokens, completion_tokens=service.conversation.count(content))
        usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
        return ChatCompletionResponse(model=service.model_name, session_id=turn.session.id, usage=usage,
                                      choices=[Choice(message=AssistantMessage(content=content))],
                                      recommendation=out)

    @app.get("/")
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    return app


async def _sse(service: RecService, turn: Turn) -> AsyncIterator[str]:
    """OpenAI chunk stream: the role, rationale deltas, then the item list with ``recommendation``; an error
    after the start is one in-band ``error`` event (generic for server errors, which are logged)."""
    base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": service.model_name,
            "session_id": turn.session.id}

    def chunk(delta: DeltaMessage, **extra) -> str:
        finish = "stop" if "recommendation" in extra else None
        c = ChatCompletionChunk(**base, choices=[ChunkChoice(delta=delta, finish_reason=finish)], **extra)
        return f"data: {c.model_dump_json(exclude_none=True)}\n\n"

    yield chunk(DeltaMessage(role="assistant", content=""))
    try:
        async for event in service.run(turn):
            if isinstance(event, Recommendation):
                answer, out = service.answer(turn, event)
                yield chunk(DeltaMessage(content=f"\n\n{answer}" if event.rationale else answer), recommendation=out)
            else:
                yield chunk(DeltaMessage(content=event))
    except RequestError as e:
        log.warning("stream ended early: %d %s", e.status, e.message)
        yield f"data: {json.dumps(error_body(e.status, e.message, e.param))}\n\n"
    except Exception:  # the stream has started: report in-band, keep the server up
        log.exception("stream failed")
        yield f"data: {json.dumps(error_body(500, f'internal server error (request id {REQUEST_ID.get()})'))}\n\n"
    yield "data: [DONE]\n\n"


def serve(config: ServeConfig) -> None:
    """Run the API with uvicorn until interrupted (a key is required off loopback)."""
    import uvicorn

    if not config.api_key and not is_loopback(config.host):
        raise ValueError(f"binding {config.host} needs an API key (--api-key or THINK_REC_API_KEY)")
    configure_logging()
    service = RecService(config)
    print(f"think-rec serve: {service.model_name} on {config.backend}, served with "
          + ", ".join(f"{k}={v}" for k, v in service.settings.items() if k not in ("notes", "prior_selection")),
          flush=True)
    uvicorn.run(create_app(service), host=config.host, port=config.port, log_level="warning")
