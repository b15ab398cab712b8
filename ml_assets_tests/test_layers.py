"""The package's layers import only downwards (docs/ARCHITECTURE.md), checked from the source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ml_assets"
# Bottom to top: a module may import from its own layer and the layers before it.
LAYERS = ["errors", "ml", "core", "storage", "state", "serve", "defs", "definitions", "cli"]
# The layers that must not import Dagster (core/names.py uses its `AssetKey` value type only).
DAGSTER_FREE = {"errors", "ml", "core", "storage"}


def _layer(module: str) -> str:
    """`ml_assets.state.records` → `state`."""
    return module.split(".")[1]


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every import in `path`, lazy ones inside functions too."""
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
    return found


def _violations(relative: Path, source: Path) -> list[str]:
    """The imports of `source` (at `relative` in the package) that reach above its layer."""
    own = relative.parts[0].removesuffix(".py")
    assert own in LAYERS, f"{relative}: add its package to LAYERS and docs/ARCHITECTURE.md"
    allowed_dagster = ["AssetKey"] if relative.as_posix() == "core/names.py" else []
    found = []
    for module, names in _imports(source):
        if module.startswith("ml_assets.") and LAYERS.index(_layer(module)) > LAYERS.index(own):
            found.append(module)
        dagster = module.split(".")[0] == "dagster"
        if own in DAGSTER_FREE and dagster and (not names or names != allowed_dagster):
            found.append(f"{module} ({', '.join(names)})")
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_the_layers(path: Path) -> None:
    relative = path.relative_to(PACKAGE)
    assert not _violations(relative, path), f"{relative} imports from above its layer"


def test_the_check_finds_lazy_upward_and_dagster_imports(tmp_path: Path) -> None:
    source = tmp_path / "sample.py"
    source.write_text(
        "from dagster import asset\n"
        "def f():\n"
        "    from ml_assets.defs.sensors import dataset_sensor\n"
        "    from ml_assets.ml.models import train_candidate\n"
    )
    assert _violations(Path("core/sample.py"), source) == [
        "dagster (asset)",
        "ml_assets.defs.sensors",
    ]
    # The server reads what landed (state/, storage/) but never the Dagster definitions.
    assert _violations(Path("serve/sample.py"), source) == ["ml_assets.defs.sensors"]
    assert _violations(Path("cli/sample.py"), source) == []
