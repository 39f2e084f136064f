"""Multi-turn chat sessions: the items a user saw, the dialogue, and the constraints steering has set.

Each user message is parsed into ``Constraints`` (``think_rec.steering``) that accumulate over the session;
the prompt (``prompts/chat.yaml``) carries the history items, the user's words and the constraints,
and the banned set (items breaking a constraint, already seen or already recommended) goes to the
engine's trie.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from think_rec.data.schema import RecDataset
from think_rec.itemic.codebook import SIDCodebook
from think_rec.prompts import chat_templates, served_prompt
from think_rec.steering import Clause, Constraints, Vocabulary, parse_clauses

from .errors import RequestError


@dataclass
class Session:
    """One conversation: the user's item history, the dialogue and what was recommended."""

    id: str
    history: list[str] = field(default_factory=list)
    user_messages: list[str] = field(default_factory=list)
    constraints: Constraints = field(default_factory=Constraints)
    recommended: list[str] = field(default_factory=list)  # every item shown, in order
    last_items: list[str] = field(default_factory=list)


class Conversation:
    """Catalog-aware prompt building and constraint bookkeeping for sessions."""

    def __init__(self, dataset: RecDataset, codebook: SIDCodebook, tokenizer, max_history: int = 20):
        self.catalog = dataset.catalog
        self.codebook = codebook
        self.tokenizer = tokenizer
        self.max_history = max_history
        self.histories = dict(zip(dataset.interactions.users, dataset.interactions.sequences))
        self.items = [self.catalog[i] for i in self.catalog.ids]
        self.vocab = Vocabulary(self.items)

    def add_user_message(self, session: Session, text: str) -> list[Clause]:
        """Record a user message and fold the constraints it asks for into the session; what became of
        each of its clauses."""
        session.user_messages.append(text)
        last = [self.catalog[i] for i in session.last_items]
        constraints, clauses = parse_clauses(text, self.vocab, last)
        session.constraints.update(constraints)
        return clauses

    @staticmethod
    def remove_constraints(session: Session, labels: Sequence[str]) -> list[Clause]:
        """Drop the session's constraints called ``labels`` (as ``Constraints.describe`` names them); a 400
        ``RequestError`` naming the active ones when a label is not among them."""
        active = session.constraints.describe()
        unknown = [label for label in labels if label not in active]
        if unknown:
            raise RequestError(400, f"no active constraint {unknown[0]!r}; active: {active}", "remove_constraints")
        for label in labels:
            session.constraints.remove(label)
        return [Clause(label, "removed", reason="dropped at your request") for label in labels]

    def prompt(self, session: Session) -> str:
        """The chat prompt text, ending in the assistant's generation header."""
        return served_prompt(self.tokenizer, session.history, self.catalog, self.codebook, self.max_history,
                             session.user_messages, session.constraints.describe())

    def fit_prompt(self, session: Session, max_tokens: int) -> tuple[str, int]:
        """The prompt and its length in tokens, the oldest user messages dropped from ``session`` until it
        fits ``max_tokens``; a 400 ``RequestError`` when even the latest message alone does not fit."""
        while True:
            prompt = self.prompt(session)
            n = self.count(prompt)
            if n <= max_tokens:
                return prompt, n
            if len(session.user_messages) <= 1:
                raise RequestError(400, f"this model's context allows {max_tokens} prompt tokens, but the prompt "
                                        f"needs {n}; send a shorter message", "messages")
            excess, drop = n - max_tokens, 0
            while drop < len(session.user_messages) - 1 and excess > 0:
                excess -= self.count(session.user_messages[drop])
                drop += 1
            del session.user_messages[:drop]

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def banned(self, session: Session, exclude_history: bool = True, exclude_recommended: bool = True) -> set[str]:
        """Items the trie must not produce: breaking a constraint, in the history (``exclude_history``), or
        recommended earlier in the session (``exclude_recommended``)."""
        out = {it["item_id"] for it in self.items if not session.constraints.allows(it)}
        if exclude_history:
            out |= set(session.history)
        if exclude_recommended:
            out |= set(session.recommended)
        return out

    def answer(self, session: Session, rationale: str, item_ids: Sequence[str], clauses: Sequence[Clause] = ()) -> str:
        """The assistant's visible message: the rationale (if any), what became of the user's clauses, then
        the items as a numbered list."""
        chat = chat_templates()
        described = session.constraints.describe()
        explained = [explain(c) for c in clauses]
        if not item_ids:
            return "\n".join([*explained, chat["no_items"].format(constraints=", ".join(described) or "this request")])
        basis = f"the {len(session.history)} items you interacted with" if session.history else "what you told me"
        lines = [chat["answer_intro"].format(basis=basis, verb="is" if len(item_ids) == 1 else "are",
                                             n=len(item_ids), s="" if len(item_ids) == 1 else "s",
                                             constraints=f" ({', '.join(described)})" if described else "")]
        for n, i in enumerate(item_ids, 1):
            it = self.catalog[i]
            lines.append(chat["answer_item"].format(n=n, title=it["title"],
                                                    brand=f" by {it['brand']}" if it["brand"] else "",
                                                    price=f", ${it['price']:.2f}" if it["price"] is not None else ""))
        text = "\n".join([*explained, *lines])
        return f"{rationale}\n\n{text}" if rationale else text


def explain(clause: Clause) -> str:
    """What became of one clause, as a sentence of the answer text."""
    if clause.status == "applied":
        return f'Applied "{clause.clause}": {clause.constraint}.'
    if clause.status == "preference":
        return f'Taken as a preference, not a rule: "{clause.clause}".'
    return f'{clause.status.capitalize()} "{clause.clause}": {clause.reason}.'
