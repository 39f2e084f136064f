"""Input errors that name the file, line and field at fault."""
from __future__ import annotations

from dataclasses import dataclass, field


class DataError(ValueError):
    """Bad input: ``file:line: field: message``."""

    def __init__(self, path: str, line: int | None, field_name: str | None, message: str):
        self.path, self.line, self.field, self.message = str(path), line, field_name, message
        where = self.path + (f":{line}" if line is not None else "")
        super().__init__(f"{where}: {field_name + ': ' if field_name else ''}{message}")


@dataclass
class RowErrors:
    """Raises at the first bad row, or (``skip_bad_rows``) counts and keeps going."""

    skip_bad_rows: bool = False
    dropped: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    def report(self, error: DataError) -> None:
        if not self.skip_bad_rows:
            raise error
        self.dropped[error.message] = self.dropped.get(error.message, 0) + 1
        if len(self.examples) < 5:
            self.examples.append(str(error))

    @property
    def total(self) -> int:
        return sum(self.dropped.values())
