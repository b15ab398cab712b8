"""Step failures the project raises on purpose: user errors fail at once, marked as such."""

from __future__ import annotations

from dagster import Failure

from ml_assets.errors import USER_ERROR_METADATA, UserError


def user_failure(error: UserError) -> Failure:
    """A step failure for bad config, data or candidate: never retried (retrying cannot fix
    it), and marked so `ml-assets` reports it as a user error (exit status 2)."""
    return Failure(str(error), allow_retries=False, metadata={USER_ERROR_METADATA: True})
