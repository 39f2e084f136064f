"""The FastAPI app: OpenAI-compatible ``POST /v1/chat/completions`` with a ``recommendation`` field,
``GET /v1/models``, ``GET /health``, item images and the chat page (``/``).

Every bad request is answered 4xx in OpenAI's error shape and leaves the engine and sessions as they were.
"""
from __future__ import annotations

import json
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from think_rec.data.schema import RecDataset
from think_rec.itemic.codebook import SIDCodebook
from think_rec.prompts import image_path

from .conversation import Conversation, Session, SessionStore
from .engine import EngineConfig, RecEngine, Recommendation, build_engine
from .protocol import (AssistantMessage, ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, Choice,
                       ChunkChoice, DeltaMessage, ErrorInfo, ErrorResponse, ModelCard, ModelList, RecommendedItem,
                       Usage)
from .protocol import Recommendation as RecommendationOut

STATIC = Path(__file__).resolve().parent / "static"


@dataclass
class ServeConfig:
    """What ``think-rec serve`` needs: the model, its data and SIDs, the backend and the address."""

    model: Path
    data: Path
    sids: Path
    backend: str = "vllm"
    model_name: str | None = None
    think: bool = False  # default for requests that do not say (stage-2 models think)
    host: str = "127.0.0.1"
    port: int = 8000
    max_history: int = 20
    think_ahead: Path | None = None  # the store of backend "think_ahead"
    think_ahead_base: str = "vllm"


class RequestError(Exception):
    """A client error: HTTP ``status`` with a message (and the offending field)."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def error_response(status: int, message: str, param: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = ErrorResponse(error=ErrorInfo(message=message, type=kind, param=param, code=status))
    return JSONResponse(body.model_dump(), status_code=status)


class RecService:
    """The catalog, sessions and engine behind the API."""

    def __init__(self, config: ServeConfig, engine: RecEngine | None = None):
        from transformers import AutoTokenizer

        self.config = config
        self.dataset = RecDataset.load(config.data)
        self.codebook = SIDCodebook.load(config.sids)
        self.tokenizer = AutoTokenizer.from_pretrained(str(config.model))
        self.conversation = Conversation(self.dataset, self.codebook, self.tokenizer, config.max_history)
        self.sessions = SessionStore()
        self.model_name = config.model_name or Path(config.model).name
        self.engine = engine or build_engine(config.backend, EngineConfig(
            Path(config.model), Path(config.sids), think_ahead=config.think_ahead,
            think_ahead_base=config.think_ahead_base))

    def _session(self, req: ChatCompletionRequest) -> Session:
        """Validate the request's ids, then open or continue its session and fold in the user's words."""
        if req.model is not None and req.model != self.model_name:
            raise RequestError(404, f"the model {req.model!r} does not exist; this server serves "
                                    f"{self.model_name!r}", "model")
        if req.user is not None and req.user not in self.conversation.histories:
            raise RequestError(400, f"unknown user id {req.user!r}", "user")
        unknown = [i for i in req.history or [] if i not in self.codebook.codes]
        if unknown:
            raise RequestError(400, f"unknown item ids in history: {unknown[:5]}", "history")
        session, new = self.sessions.get_or_create(req.session_id)
        if req.history is not None:
            session.history = list(req.history)
        elif req.user is not None and (new or not session.history):
            session.history = list(self.conversation.histories[req.user])
        users = [m.text for m in req.messages if m.role == "user"]
        for text in users if new else users[-1:]:
            self.conversation.add_user_message(session, text)
        return session

    def item_out(self, item_id: str, score: float) -> RecommendedItem:
        it = self.conversation.catalog[item_id]
        img = it["image"]
        url = img if img and "://" in img else (f"/v1/items/{item_id}/image" if image_path(it) else None)
        return RecommendedItem(id=item_id, sid=self.codebook.sid_string(item_id), title=it["title"], score=score,
                               brand=it["brand"] or None, price=it["price"], categories=list(it["categories"]),
                               image=url)

    async def chat(self, req: ChatCompletionRequest) -> tuple[Session, str, AsyncIterator[str | Recommendation]]:
        """Session, prompt and the engine's event stream (empty when no item satisfies the constraints)."""
        session = self._session(req)
        prompt = self.conversation.prompt(session)
        banned = self.conversation.banned(session, req.exclude_seen)
        k = min(req.k, len(self.codebook) - len(banned & set(self.codebook.codes)))
        think = self.config.think if req.think is None else req.think

        async def events() -> AsyncIterator[str | Recommendation]:
            if k <= 0:
                yield Recommendation("", [])
                return
            async for event in self.engine.stream(prompt, k=k, banned=banned, think=think,
                                                  max_think_tokens=req.max_think_tokens,
                                                  history=session.history[-self.config.max_history:]):
                yield event
        return session, prompt, events()

    def finish(self, session: Session, rec: Recommendation) -> tuple[str, RecommendationOut]:
        """Record what was shown; the answer text (without the rationale) and the structured result."""
        ids = [i for i, _ in rec.items]
        session.last_items = ids
        session.recommended += ids
        out = RecommendationOut(rationale=rec.rationale, items=[self.item_out(i, s) for i, s in rec.items],
                                constraints=session.constraints.as_dict())
        return self.conversation.answer(session, "", ids), out


def create_app(service: RecService) -> FastAPI:
    """The app; the engine starts with it (lifespan) and shuts down with it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.engine.start()
        yield
        service.engine.shutdown()

    app = FastAPI(title="think-rec", lifespan=lifespan)

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

    @app.exception_handler(Exception)
    async def _server_error(request: Request, e: Exception) -> JSONResponse:
        return error_response(500, f"{type(e).__name__}: {e}")

    @app.get("/health")
    async def health() -> JSONResponse:
        ok = service.engine.healthy()
        return JSONResponse({"status": "ok" if ok else "engine unavailable", "backend": service.engine.name,
                             "model": service.model_name, "items": len(service.codebook),
                             "sessions": len(service.sessions), **getattr(service.engine, "stats", {})},
                            status_code=200 if ok else 503)

    @app.get("/v1/models")
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=service.model_name)])

    @app.get("/v1/items/{item_id}/image")
    async def item_image(item_id: str) -> FileResponse:
        path = image_path(service.conversation.catalog[item_id]) if item_id in service.codebook.codes else None
        if path is None:
            raise RequestError(404, f"item {item_id!r} has no local image")
        return FileResponse(path)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest):
        session, prompt, events = await service.chat(req)
        if req.stream:
            return StreamingResponse(_sse(service, req, session, events), media_type="text/event-stream")
        rec = None
        async for event in events:
            if isinstance(event, Recommendation):
                rec = event
        answer, out = service.finish(session, rec)
        content = f"{rec.rationale}\n\n{answer}" if rec.rationale else answer
        usage = Usage(prompt_tokens=len(service.tokenizer.encode(prompt, add_special_tokens=False)),
                      completion_tokens=len(service.tokenizer.encode(content, add_special_tokens=False)))
        usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
        return ChatCompletionResponse(model=service.model_name, session_id=session.id, usage=usage,
                                      choices=[Choice(message=AssistantMessage(content=content))],
                                      recommendation=out)

    @app.get("/")
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    return app


async def _sse(service: RecService, req: ChatCompletionRequest, session: Session,
               events: AsyncIterator[str | Recommendation]) -> AsyncIterator[str]:
    """OpenAI chunk stream: the role, rationale deltas, then the item list with ``recommendation``."""
    base = {"id": f"chatcmpl-{session.id[:8]}-{time.time_ns()}", "created": int(time.time()),
            "model": service.model_name, "session_id": session.id}

    def chunk(delta: DeltaMessage, **extra) -> str:
        finish = "stop" if "recommendation" in extra else None
        c = ChatCompletionChunk(**base, choices=[ChunkChoice(delta=delta, finish_reason=finish)], **extra)
        return f"data: {c.model_dump_json(exclude_none=True)}\n\n"

    yield chunk(DeltaMessage(role="assistant", content=""))
    try:
        async for event in events:
            if isinstance(event, Recommendation):
                answer, out = service.finish(session, event)
                yield chunk(DeltaMessage(content=f"\n\n{answer}" if event.rationale else answer), recommendation=out)
            else:
                yield chunk(DeltaMessage(content=event))
    except Exception as e:  # the stream has started: report in-band, keep the server up
        body = ErrorResponse(error=ErrorInfo(message=f"{type(e).__name__}: {e}", type="server_error", code=500))
        yield f"data: {json.dumps(body.model_dump())}\n\n"
    yield "data: [DONE]\n\n"


def serve(config: ServeConfig) -> None:
    """Run the API with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(RecService(config)), host=config.host, port=config.port, log_level="warning")
