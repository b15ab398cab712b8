"""Resources bound in `definitions.py`: the settings file and the artifact store."""

import time
from pathlib import Path

from dagster import ConfigurableResource, InitResourceContext

from ml_assets.core.config import (
    ConfigError,
    Settings,
    default_config_path,
    load_settings,
    store_location,
)
from ml_assets.core.names import PROCESS_TAG
from ml_assets.core.process import process_tag
from ml_assets.defs.executor import in_celery_worker
from ml_assets.defs.failures import user_failure
from ml_assets.storage.remote import open_store
from ml_assets.storage.store import ArtifactStore


class SettingsResource(ConfigurableResource):
    """`ml_assets.yaml`, read fresh at each use so edits apply to the next run."""

    config_path: str | None = None

    def path(self) -> Path:
        return Path(self.config_path) if self.config_path else default_config_path()

    def load(self) -> Settings:
        """The validated settings; an invalid file fails the step (no retry) with its message."""
        try:
            return load_settings(self.path())
        except ConfigError as error:
            raise user_failure(error) from error

    def base_dir(self) -> Path:
        """Relative `dataset.source` paths are resolved against the config file's folder."""
        return self.path().absolute().parent


class ArtifactStoreResource(ConfigurableResource):
    """The content-addressed store: `$ML_ASSETS_STORE`, else `<home>/store` (home:
    `$ML_ASSETS_HOME` or .ml_assets)."""

    root: str | None = None

    def setup_for_execution(self, context: InitResourceContext) -> None:
        """Record which process executes this run (every job's steps use the store), so a run
        whose process is killed is not waited on forever: see `ml_assets/state/runs.py`."""
        run, instance = context.run, context.instance
        if run is None or instance is None:  # a sensor evaluation, not a run
            return
        if in_celery_worker():  # the run's process is the orchestrator, which recorded itself
            return
        tag = process_tag()
        if run.tags.get(PROCESS_TAG) != tag:
            instance.add_run_tags(run.run_id, {PROCESS_TAG: tag})

    def get(self) -> ArtifactStore:
        return ArtifactStore(Path(self.root)) if self.root else open_store(store_location())


class ClockResource(ConfigurableResource):
    """Wall-clock time, or a fixed time for tests of the time-based memoization rules."""

    fixed_time: float | None = None

    def now(self) -> float:
        return self.fixed_time if self.fixed_time is not None else time.time()
