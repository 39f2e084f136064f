"""Request/response models of the OpenAI-compatible chat API (plus the ``recommendation`` extension)."""
from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_K = 50
MAX_MESSAGE_CHARS = 4000
MAX_MESSAGES = 64
MAX_HISTORY = 200
MAX_THINK_TOKENS = 512
MAX_ID_CHARS = 128

ItemId = Annotated[str, Field(max_length=MAX_ID_CHARS)]


class ContentPart(BaseModel):
    """A text part of a message (image parts are not accepted as input)."""

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[ContentPart] | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat request; the recommender's own fields ride along (``extra_body`` in the openai client).

    ``user`` is a dataset user id whose interactions become the history; ``history`` gives item ids
    directly; ``session_id`` (as the server issued it) continues a conversation (only the new user message
    need be sent). ``k`` items come from the served ranking (the model's ``served.json``: beam width, prior).
    An empty user message asks for recommendations from the history alone. ``remove_constraints`` drops active
    constraints by label (``recommendation.active``); such a turn may have an empty user message. Other
    OpenAI fields (``temperature``, ``max_tokens``...) are ignored: items come from beam search.
    """

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    stream: bool = False
    n: int = Field(1, ge=1, le=1, description="one choice per request; ask for more items with k")
    k: int = Field(10, ge=1, le=MAX_K, description="number of items to recommend")
    user: str | None = Field(None, max_length=MAX_ID_CHARS)
    history: list[ItemId] | None = Field(None, max_length=MAX_HISTORY)
    session_id: str | None = Field(None, max_length=MAX_ID_CHARS)
    think: bool | None = None
    max_think_tokens: int = Field(64, ge=0, le=MAX_THINK_TOKENS)
    exclude_seen: bool | None = Field(
        None, description="never recommend history or already recommended items (default: history as the model's "
                          "served.json says, recommended items never again)")
    remove_constraints: list[Annotated[str, Field(max_length=MAX_MESSAGE_CHARS)]] = Field(
        default_factory=list, max_length=MAX_MESSAGES,
        description="labels of active constraints to drop (as in recommendation.active)")

    @field_validator("messages")
    @classmethod
    def _check_messages(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        for i, m in enumerate(messages):
            if len(m.text) > MAX_MESSAGE_CHARS:
                raise ValueError(f"message {i} has {len(m.text)} characters; the limit is {MAX_MESSAGE_CHARS}")
        if messages[-1].role != "user":
            raise ValueError("the last message must be a non-empty user message")
        return messages

    @model_validator(mode="after")
    def _check_words(self) -> "ChatCompletionRequest":
        """A turn says something, only removes constraints, or asks for items from a given history or user (then
        its user message may be empty)."""
        if not (self.messages[-1].text.strip() or self.remove_constraints or self.history or self.user):
            raise ValueError("the last message must be a non-empty user message (or send remove_constraints, a "
                             "history or a user to recommend from)")
        return self


class ItemCard(BaseModel):
    """A catalog item as the page shows it."""

    id: str
    sid: str
    title: str
    brand: str | None = None
    price: float | None = None
    categories: list[str] = Field(default_factory=list)
    image: str | None = Field(None, description="URL of the item image, when the catalog has one")


class RecommendedItem(ItemCard):
    score: float


class ClauseReport(BaseModel):
    """What became of one clause of the user's words (``think_rec.steering.Clause``)."""

    clause: str
    status: Literal["applied", "ignored", "preference", "removed"]
    reason: str | None = None
    constraint: str | None = Field(None, description="the label of the applied constraint")


class Recommendation(BaseModel):
    rationale: str
    items: list[RecommendedItem]
    constraints: dict[str, Any] = Field(default_factory=dict, description="the session's active constraints")
    active: list[str] = Field(default_factory=list, description="labels of the active constraints "
                                                                "(what remove_constraints takes)")
    clauses: list[ClauseReport] = Field(default_factory=list, description="this turn's clauses, explained")
    history: list[ItemCard] = Field(default_factory=list, description="the history items used, most recent first")
    cited: list[str] = Field(default_factory=list, description="ids of the history items the rationale names")


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop"] = "stop"


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


def _id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


class ChatCompletionResponse(BaseModel):
    id: str = Field(default_factory=_id)
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage = Field(default_factory=Usage)
    recommendation: Recommendation
    session_id: str


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: DeltaMessage
    finish_reason: Literal["stop"] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    recommendation: Recommendation | None = None
    session_id: str


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "think-rec"
    think_rec: dict[str, Any] | None = Field(None, description="how the model is served (its served.json and prior)")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(BaseModel):
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: int


class ErrorResponse(BaseModel):
    error: ErrorInfo
