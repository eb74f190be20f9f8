"""The forecasting-pipeline chart (deploy/helm/forecasting-pipeline), rendered by Helm's own template engine.

helm_python binds Helm's Go SDK, so these are the manifests `helm install` would send, rendered
offline. Beside them, the values for Dagster's chart (deploy/helm/values.yaml) must agree with
this chart on the image, the database Secret and the pinned checkpoint.
"""

from pathlib import Path

import helm_python
import pytest
import yaml
from helm_python.errors import HelmRenderError

REPO = Path(__file__).resolve().parents[1]
VALUES = REPO / "deploy" / "helm" / "values.yaml"
NAMESPACE = "forecasting"  # docs/kubernetes.md: both releases in one namespace
CHART = REPO / "deploy" / "helm" / "forecasting-pipeline"
REVISION = "5c3b9f0d2f5c1e7a9b8d6c4e2a0f1e3d5b7c9a1e"
GPU = "nvidia.com/gpu"


def render(values: dict | None = None, release: str = "forecasting") -> dict[tuple[str, str], dict]:
    """(kind, name) -> object of every manifest the chart renders with ``values`` over its defaults."""
    given = {"model": {"revision": REVISION}, **(values or {})}
    rendered = helm_python.Chart.load(CHART).render(given, name=release, namespace=NAMESPACE, is_install=True)
    objects = [doc for text in rendered.values() for doc in yaml.safe_load_all(text) if doc]
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def pod_spec(workload: dict) -> dict:
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container["env"]}


@pytest.fixture(scope="module")
def manifests() -> dict[tuple[str, str], dict]:
    return render()


def test_when_the_chart_is_rendered_then_it_holds_the_service_its_hooks_the_pin_and_the_retention_job(manifests):
    assert sorted(manifests) == [
        ("ConfigMap", "forecasting-model"), ("CronJob", "forecasting-frames-retention"),
        ("Deployment", "forecasting-service"), ("Job", "forecasting-migrate"), ("Job", "forecasting-model-fetch"),
        ("Service", "forecasting-service"),
    ]
    assert helm_python.lint(str(CHART), values={"model": {"revision": REVISION}})["errors"] == []


def test_when_the_forecast_service_runs_then_it_is_ready_on_readyz_with_its_token_from_a_secret(manifests):
    deployment, service = manifests["Deployment", "forecasting-service"], manifests["Service", "forecasting-service"]
    (container,) = pod_spec(deployment)["containers"]

    assert container["command"] == ["forecasting-pipeline", "serve", "--host", "0.0.0.0", "--port", "8201", "--no-socket"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert env_of(container)["PREDICT_API_TOKEN"]["valueFrom"] == {
        "secretKeyRef": {"name": "forecasting-service-token", "key": "PREDICT_API_TOKEN"}}
    assert env_of(container)["SERVE_PUBLIC_DASHBOARD"]["value"] == "false"
    assert container["resources"] == {"requests": {"cpu": "2", "memory": "3Gi"}, "limits": {"memory": "6Gi"}}
    assert "nodeSelector" not in pod_spec(deployment)
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"] == [{"name": "http", "port": 8201, "targetPort": "http"}]


def test_when_the_service_asks_for_a_gpu_then_its_pod_limits_one_and_lands_on_a_gpu_node():
    deployment = render({"service": {"gpus": 1}})["Deployment", "forecasting-service"]
    (container,) = pod_spec(deployment)["containers"]

    assert container["resources"]["limits"] == {GPU: 1, "memory": "6Gi"}
    assert pod_spec(deployment)["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod_spec(deployment)["tolerations"] == [{"key": GPU, "operator": "Exists", "effect": "NoSchedule"}]


def test_when_the_release_is_installed_or_upgraded_then_migrations_run_first_and_the_pinned_checkpoint_second(manifests):
    migrate, fetch = manifests["Job", "forecasting-migrate"], manifests["Job", "forecasting-model-fetch"]

    for job, weight in ((migrate, "0"), (fetch, "1")):
        assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
        assert job["metadata"]["annotations"]["helm.sh/hook-weight"] == weight
        assert pod_spec(job)["restartPolicy"] == "Never"
    assert pod_spec(migrate)["containers"][0]["command"] == ["forecasting-pipeline", "migrate"]
    assert pod_spec(fetch)["containers"][0]["command"][:5] == ["hf", "download", "amazon/chronos-2", "--revision", REVISION]


def test_when_frames_age_then_a_cronjob_prunes_them_one_run_at_a_time(manifests):
    cronjob = manifests["CronJob", "forecasting-frames-retention"]
    (container,) = pod_spec(cronjob)["containers"]

    assert container["command"] == ["forecasting-pipeline", "frames", "prune"]
    assert (cronjob["spec"]["schedule"], cronjob["spec"]["concurrencyPolicy"]) == ("30 4 * * *", "Forbid")
    assert env_of(container)["FRAMES_DIR"]["value"] == "/shared/frames"
    assert env_of(container)["FRAMES_RETENTION_DAYS"]["value"] == "7"
    (retention,) = (c for c in pod_spec(render({"framesRetention": {"days": 3}})[
        "CronJob", "forecasting-frames-retention"])["containers"])
    assert env_of(retention)["FRAMES_RETENTION_DAYS"]["value"] == "3"
    assert {"name": "shared", "mountPath": "/shared", "readOnly": False} in container["volumeMounts"]


def test_when_any_pod_runs_then_it_is_unprivileged_on_a_read_only_root_with_no_capabilities(manifests):
    workloads = [o for o in manifests.values() if o["kind"] in ("Deployment", "Job", "CronJob")]

    for workload in workloads:
        pod = pod_spec(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
        for container in pod["containers"]:
            assert container["securityContext"] == {
                "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "privileged": False,
                "capabilities": {"drop": ["ALL"]},
            }, workload["metadata"]["name"]
            assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert len(workloads) == 4


def test_when_a_pod_loads_the_model_then_the_revision_is_pinned_and_only_the_fetch_hook_reaches_the_hub(manifests):
    containers = {o["metadata"]["name"]: c for o in manifests.values() if o["kind"] in ("Deployment", "Job", "CronJob")
                  for c in pod_spec(o)["containers"]}

    offline = {name: env_of(c)["HF_HUB_OFFLINE"]["value"] for name, c in containers.items()}
    assert offline == {"forecasting-service": "1", "forecasting-migrate": "1", "forecasting-frames-retention": "1",
                       "forecasting-model-fetch": "0"}
    assert {env_of(c)["CHRONOS2_REVISION"]["value"] for n, c in containers.items() if n != "forecasting-model-fetch"} == {
        REVISION}
    assert manifests["ConfigMap", "forecasting-model"]["data"] == {
        "CHRONOS2_MODEL": "amazon/chronos-2", "CHRONOS2_REVISION": REVISION}
    for container in containers.values():
        literals = [e.get("value", "") for e in container["env"]]
        assert not [v for v in literals if "postgres" in v and "@" in v]
        if "DATABASE_URL" in env_of(container):
            assert env_of(container)["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
                "name": "forecasting-db", "key": "DATABASE_URL"}


def test_when_no_revision_is_given_then_the_chart_refuses_to_render():
    with pytest.raises(HelmRenderError, match="model.revision must pin the checkpoint"):
        helm_python.Chart.load(CHART).render({}, name="forecasting", namespace=NAMESPACE, is_install=True)


def test_when_dagster_s_values_are_read_then_they_share_this_chart_s_image_secret_and_pinned_checkpoint(manifests):
    ours = yaml.safe_load((CHART / "values.yaml").read_text())
    dagster = yaml.safe_load(VALUES.read_text())
    (location,) = dagster["dagster-user-deployments"]["deployments"]
    env = {e["name"]: e for e in location["env"]}

    assert {k: location["image"][k] for k in ("repository", "tag")} == {k: ours["image"][k] for k in ("repository", "tag")}
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == ours["database"]["secretName"]
    assert env["HF_HUB_OFFLINE"]["value"] == "1" and env["HF_HOME"]["value"] == ours["model"]["hfHome"]
    for key in ("CHRONOS2_MODEL", "CHRONOS2_REVISION"):
        assert env[key]["valueFrom"]["configMapKeyRef"] == {"name": "forecasting-model", "key": key}
    # The runs' own sweep and the CronJob keep frames equally long.
    assert env["FRAMES_RETENTION_DAYS"]["value"] == str(ours["framesRetention"]["days"])
    # The champion the service loads is a checkpoint Dagster's training pod wrote: one folder on the shared volume.
    (service,) = pod_spec(manifests["Deployment", "forecasting-service"])["containers"]
    assert env["MODEL_REGISTRY_DIR"]["value"] == env_of(service)["MODEL_REGISTRY_DIR"]["value"] == "/shared/models"
