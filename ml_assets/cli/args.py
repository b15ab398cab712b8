"""Argument types shared by the sub-commands: a number within bounds, or a one-line error."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Generic, TypeVar

Number = TypeVar("Number", int, float)


class Bounded(Generic[Number]):
    """An argparse type: `parse(text)` within [`low`, `high`] (`high` None: no upper bound);
    anything else is argparse's one-line error, "expected <expected>, got '<text>'"."""

    def __init__(
        self, parse: Callable[[str], Number], low: Number, high: Number | None, expected: str
    ) -> None:
        self.parse: Callable[[str], Number] = parse
        self.low: Number = low
        self.high: Number | None = high
        self.expected = expected

    def __call__(self, text: str) -> Number:
        try:
            value = self.parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(self._error(text)) from None
        if math.isnan(value) or value < self.low or (self.high is not None and value > self.high):
            raise argparse.ArgumentTypeError(self._error(text))
        return value

    def _error(self, text: str) -> str:
        return f"expected {self.expected}, got {text!r}"


def at_least(minimum: int) -> Bounded[int]:
    """A whole number >= `minimum`."""
    return Bounded(int, minimum, None, f"a whole number >= {minimum}")


# `--max-concurrent`, `--concurrency`: processes on one machine.
POSITIVE_INT = Bounded(int, 1, 64, "a whole number from 1 to 64")
PORT = Bounded(int, 0, 65535, "a port from 0 to 65535")
