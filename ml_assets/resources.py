"""Resources bound in `definitions.py`: the settings file and the artifact store."""


from pathlib import Path

from dagster import ConfigurableResource

from ml_assets.config import Settings, default_config_path, default_home, load_settings
from ml_assets.store import ArtifactStore


class SettingsResource(ConfigurableResource):  # type: ignore[misc]
    """`ml_assets.yaml`, read fresh at each use so edits apply to the next run."""

    config_path: str | None = None

    def path(self) -> Path:
        return Path(self.config_path) if self.config_path else default_config_path()

    def load(self) -> Settings:
        return load_settings(self.path())

    def base_dir(self) -> Path:
        """Relative `dataset.source` paths are resolved against the config file's folder."""
        return self.path().absolute().parent


class ArtifactStoreResource(ConfigurableResource):  # type: ignore[misc]
    """The content-addressed store under `<home>/store` (home: `$ML_ASSETS_HOME` or .ml_assets)."""

    root: str | None = None

    def get(self) -> ArtifactStore:
        return ArtifactStore(Path(self.root) if self.root else default_home() / "store")
