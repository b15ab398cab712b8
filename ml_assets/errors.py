"""The one base class of the mistakes a user makes (config, data, candidates), and how to find
one behind the Dagster `Failure` a step wraps it in."""

from __future__ import annotations

from typing import Final
from urllib.parse import urlsplit, urlunsplit

# Metadata key on a step's `Failure` that marks a user error (see `user_failure`).
USER_ERROR_METADATA: Final = "user_error"


class UserError(ValueError):
    """Bad input from the user; its message names the file, key, column or candidate.

    `ml-assets` prints it as one line and exits with status 2 (`--debug` for the traceback).
    """


def find_user_error(error: BaseException | None) -> UserError | None:
    """The `UserError` that `error` is, or was raised from (its cause chain), or None."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, UserError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def redacted(url: str) -> str:
    """`url` without its password, fit for a message (a broker, database or store URL)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
