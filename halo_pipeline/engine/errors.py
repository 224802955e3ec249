"""One error type for everything wrong with a recipe, holding every problem found at once."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Issue:
    """One problem in a recipe: where it is, what is wrong, and how to fix it."""

    message: str
    key: str = ""  # dotted key path, e.g. steps.train.with.learning_rate
    file: str | None = None
    line: int | None = None  # 1-based
    col: int | None = None  # 1-based
    hint: str | None = None

    def location(self) -> str:
        if not self.file:
            return "<command line>"
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.col is not None:
                where += f":{self.col}"
        return where

    def format(self) -> str:
        text = f"{self.location()}: {self.key + ': ' if self.key else ''}{self.message}"
        if self.hint:
            text += f"\n    hint: {self.hint}"
        return text


@dataclass(frozen=True)
class Warn:
    """What a step kind's `check` returns for use that is valid but will not do what it seems to (e.g. a probe
    too small for the regression its gate names): reported with file:line, nothing stops."""

    key: str  # under the step's `with`
    message: str
    hint: str | None = None


class RecipeError(Exception):
    """Raised with every problem found in a recipe; exit code 2, nothing runs."""

    exit_code = 2

    def __init__(self, issues: Iterable[Issue]):
        self.issues = list(issues)
        super().__init__(self.format())

    def format(self) -> str:
        n = len(self.issues)
        head = f"{n} problem{'s' if n != 1 else ''} found:"
        return "\n".join([head, *("  " + i.format().replace("\n", "\n  ") for i in self.issues)])


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """A 'did you mean' hint for a misspelt name, or None when nothing is close."""
    close = difflib.get_close_matches(str(word), sorted(set(choices)), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None
