"""``think-rec chat``: a terminal client for a running ``think-rec serve`` (through the openai client)."""
from __future__ import annotations

from typing import Callable


def chat_loop(base_url: str, user: str | None = None, k: int = 5, think: bool | None = None,
              api_key: str | None = None, read: Callable[[str], str] = input,
              write: Callable[[str], None] = print) -> None:
    """Read a line, stream the answer, repeat; the conversation is one server-side session. Ends on EOF/quit."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url.rstrip("/") + "/v1", api_key=api_key or "unused")
    model = client.models.list().data[0].id
    session_id = None
    while True:
        try:
            text = read("you> ").strip()
        except EOFError:
            return
        if text in ("quit", "exit"):
            return
        if not text:
            continue
        extra = {"k": k, "session_id": session_id, "user": user if session_id is None else None, "think": think}
        stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}],
                                                stream=True, extra_body={k_: v for k_, v in extra.items()
                                                                         if v is not None})
        parts = []
        for chunk in stream:
            if getattr(chunk, "recommendation", None) is not None:  # the session exists once a turn succeeded
                session_id = chunk.session_id
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
        write("rec> " + "".join(parts))
