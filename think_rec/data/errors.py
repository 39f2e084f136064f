"""Input errors that name the file, line and field at fault."""
from __future__ import annotations

import re
from dataclasses import dataclass, field


class DataError(ValueError):
    """Bad input: ``file:line: field: message``."""

    def __init__(self, path: str, line: int | None, field_name: str | None, message: str):
        self.path, self.line, self.field, self.message = str(path), line, field_name, message
        where = self.path + (f":{line}" if line is not None else "")
        super().__init__(f"{where}: {field_name + ': ' if field_name else ''}{message}")

    @property
    def reason(self) -> str:
        """``field: message`` without its quoted values and numbers (how dropped rows are counted)."""
        generic = re.sub(r"\d+", "N", re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", self.message))
        return f"{self.field}: {generic}" if self.field else generic


class FieldError(ValueError):
    """A bad value in one field; the loader reading the row turns it into a ``DataError``."""

    def __init__(self, field_name: str | None, message: str):
        self.field, self.message = field_name, message
        super().__init__(f"{field_name}: {message}" if field_name else message)


@dataclass
class RowErrors:
    """Raises at the first bad row, or (``skip_bad_rows``) counts and keeps going."""

    skip_bad_rows: bool = False
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> rows
    examples: list[str] = field(default_factory=list)

    def report(self, error: DataError) -> None:
        if not self.skip_bad_rows:
            raise error
        self.dropped[error.reason] = self.dropped.get(error.reason, 0) + 1
        if len(self.examples) < 5:
            self.examples.append(str(error))

    @property
    def total(self) -> int:
        return sum(self.dropped.values())
