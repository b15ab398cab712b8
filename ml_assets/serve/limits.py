"""The server's documented limits and defaults (imported by `ml-assets serve --help` too, so
nothing heavy here)."""

from typing import Final

MAX_INSTANCES: Final = 10_000  # records per :predict request; more is 413
MAX_BODY_BYTES: Final = 16 * 2**20  # 16 MiB per request body; more is 413
DEFAULT_POLL_SECONDS: Final = 1.0  # how often the watcher looks for a newer selection
# A selection that failed to load is tried again only after this long (or when another lands):
# a damaged artifact stays damaged, and hashing it on every tick would only burn CPU.
RETRY_FAILED_SECONDS: Final = 30.0
