"""deploy/ (Kubernetes, not run here) agrees with the code: the module the code server loads,
the variables the pods get, and the instance limits the project's dagster.yaml sets."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import yaml

from ml_assets.core import config, workers
from ml_assets.core.names import STAGE_TAG

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def test_the_code_server_loads_the_project_s_definitions() -> None:
    module = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["dagster"]["module_name"]
    (deployment,) = _yaml(DEPLOY / "values.yaml")["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", module]


def test_the_pods_get_only_variables_the_project_reads_and_share_the_store_volume() -> None:
    known = {
        config.CONFIG_ENV,
        config.HOME_ENV,
        config.STORE_ENV,
        workers.BROKER_ENV,
        workers.BACKEND_ENV,
        workers.NAMESPACE_ENV,
    }
    env = _yaml(DEPLOY / "configmap.yaml")
    assert set(env["data"]) <= known, set(env["data"]) - known
    values = _yaml(DEPLOY / "values.yaml")
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    claim = _yaml(DEPLOY / "store-pvc.yaml")["metadata"]["name"]
    for pod in (deployment, launcher):
        assert pod["envConfigMaps"] == [{"name": env["metadata"]["name"]}]
        (mount,) = pod["volumeMounts"]
        assert mount["mountPath"] == env["data"][config.STORE_ENV]
        (volume,) = pod["volumes"]
        assert volume["persistentVolumeClaim"]["claimName"] == claim


def test_the_run_queue_keeps_the_project_s_serving_limit_and_run_monitoring() -> None:
    instance = _yaml(REPO / "dagster.yaml")
    daemon = _yaml(DEPLOY / "values.yaml")["dagsterDaemon"]
    limits = daemon["runCoordinator"]["config"]["queuedRunCoordinator"]["tagConcurrencyLimits"]
    assert limits == instance["concurrency"]["runs"]["tag_concurrency_limits"]
    assert limits[0]["key"] == STAGE_TAG
    monitoring = daemon["runMonitoring"]
    assert monitoring["enabled"] and monitoring["maxResumeRunAttempts"] == 0
    assert (
        monitoring["freeSlotsAfterRunEndSeconds"]
        == instance["run_monitoring"]["free_slots_after_run_end_seconds"]
    )
