"""Deploying on Kubernetes, shown by rendering: the pods dagster-k8s creates from deploy/helm/values.yaml.

No cluster is reachable here. The one stand-in is ``KubernetesApi``: an HTTP server on loopback that
answers the Kubernetes API call dagster-k8s makes to start a pod (POST a Job) and keeps the Job.
Everything that turns the values, the code location and a run into that Job is the libraries' own
code: the instance builds ``K8sRunLauncher`` from its config and ``launch_run`` starts the run pod;
the code location's ``k8s_job_executor`` builds the step handler whose ``launch_step`` starts a step
pod, and the kubernetes client serialises and sends the Job.

What the Helm chart's templates make of the values (the instance's ``run_launcher`` config and the
code location's container context) is transcribed below from the chart (``chart_*``), since the
chart itself cannot be rendered here.
"""

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._config import process_config
from dagster._core.definitions.job_base import InMemoryJob
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.execution.api import create_execution_plan
from dagster._core.execution.context.system import PlanData, PlanOrchestrationContext
from dagster._core.execution.context_creation_job import create_context_free_log_manager
from dagster._core.execution.retries import RetryMode
from dagster._core.executor.init import InitExecutorContext
from dagster._core.executor.step_delegating.step_handler.base import StepHandlerContext
from dagster._core.launcher import LaunchRunContext
from dagster._grpc.types import ExecuteStepArgs
from dagster_k8s import k8s_job_executor

from forecasting_pipeline.orchestration.assembly import build_definitions
from forecasting_pipeline.orchestration.placement import K8S_CONFIG_TAG
from forecasting_pipeline.settings import Settings

REPO = Path(__file__).resolve().parents[1]
VALUES = REPO / "deploy" / "helm" / "values.yaml"
RELEASE, NAMESPACE = "dagster", "forecasting"  # README: helm upgrade --install dagster ... --namespace forecasting
HOURLY_WINDOW = "2026-03-02-15:00"
GPU = "nvidia.com/gpu"


class KubernetesApi:
    """The Kubernetes API server, as far as starting a pod goes: it keeps every Job POSTed to it."""

    def __init__(self) -> None:
        self.jobs: list[dict] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if not self.path.startswith(f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"):
                    self.send_response(404)
                    self.end_headers()
                    return
                api.jobs.append(json.loads(body))
                self.send_response(201)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def kubeconfig(self, path: Path) -> str:
        host, port = self.server.server_address
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": f"http://{host}:{port}"}}],
            "users": [{"name": "test", "user": {"token": "not-a-secret"}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": NAMESPACE}}],
        }))
        return str(path)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def chart_run_launcher_config(values: dict) -> dict:
    """The instance's run_launcher config as the chart renders it (templates/helpers/instance/_run-launcher.tpl)."""
    k8s = values["runLauncher"]["config"]["k8sRunLauncher"]
    run_k8s = k8s.get("runK8sConfig") or {}
    snake = {"containerConfig": "container_config", "podSpecConfig": "pod_spec_config",
             "podTemplateSpecMetadata": "pod_template_spec_metadata", "jobSpecConfig": "job_spec_config",
             "jobMetadata": "job_metadata"}
    config = {
        "load_incluster_config": k8s["loadInclusterConfig"],
        "job_namespace": k8s.get("jobNamespace") or NAMESPACE,
        "image_pull_policy": k8s["imagePullPolicy"],
        "service_account_name": chart_fullname("dagster"),
        "dagster_home": "/opt/dagster/dagster_home",
        "instance_config_map": f"{chart_fullname('dagster')}-instance",
        "postgres_password_secret": values["global"]["postgresqlSecretName"],
        "env_config_maps": [m["name"] for m in k8s["envConfigMaps"]],
        "env_secrets": [s["name"] for s in k8s["envSecrets"]],
        "env_vars": k8s["envVars"],
        "volume_mounts": k8s["volumeMounts"],
        "volumes": k8s["volumes"],
        "labels": k8s.get("labels") or {},
        "fail_pod_on_run_failure": bool(k8s.get("failPodOnRunFailure")),
        "run_k8s_config": {snake[key]: value for key, value in run_k8s.items()},
    }
    return {key: value for key, value in config.items() if value not in ([], {}, None)}


def chart_fullname(chart: str) -> str:
    """The chart's ``dagster.fullname`` for this release."""
    return RELEASE if chart in RELEASE else f"{RELEASE}-{chart}"


def chart_container_context(values: dict, deployment: dict) -> dict:
    """What the code server passes runs (dagster-user-deployments' _helpers.tpl, k8sContainerContext)."""
    fullname = chart_fullname("dagster-user-deployments")
    return {"k8s": {key: value for key, value in {
        "image_pull_policy": deployment["image"]["pullPolicy"],
        "env_config_maps": [f"{fullname}-{deployment['name']}-user-env"],
        "volume_mounts": deployment["volumeMounts"],
        "volumes": deployment["volumes"],
        "resources": deployment.get("resources"),
        "namespace": NAMESPACE,
        "service_account_name": f"{fullname}-user-deployments",
        "env": deployment["env"],
    }.items() if value is not None}}


def chart_instance_concurrency(values: dict) -> dict:
    """The instance's concurrency section (templates/helpers/instance/_concurrency.tpl)."""
    pools, runs = values["concurrency"]["pools"], values["concurrency"]["runs"]
    return {
        "pools": {"default_limit": pools["defaultLimit"], "granularity": pools["granularity"]},
        "runs": {"max_concurrent_runs": runs["maxConcurrentRuns"]},
    }


def plain_env(deployment: dict) -> dict[str, str]:
    """The code location's environment variables that have literal values (the settings it loads with)."""
    return {e["name"]: e["value"] for e in deployment["env"] if "value" in e}


@dataclass
class Deployment:
    values: dict
    deployment: dict
    defs: dg.Definitions
    repository: ReconstructableRepository
    instance: dg.DagsterInstance
    api: KubernetesApi

    def image(self) -> str:
        image = self.deployment["image"]
        return f"{image['repository']}:{image['tag']}"

    def run_for(self, job_name: str) -> tuple[dg.JobDefinition, dg.DagsterRun]:
        job = self.defs.resolve_job_def(job_name)
        origin = self.repository.get_reconstructable_job(job_name).get_python_origin()
        tags = {"dagster/partition": HOURLY_WINDOW} if job.partitions_def is not None else {}
        return job, self.instance.create_run_for_job(job, job_code_origin=origin, tags=tags)

    def run_pod(self, job_name: str) -> dict:
        """The Job that K8sRunLauncher creates for a run of ``job_name``."""
        _job, run = self.run_for(job_name)
        self.instance.run_launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
        return self.api.jobs[-1]

    def step_pod(self, job_name: str, step_key: str) -> dict:
        """The Job that the run's k8s_job_executor creates for one step."""
        job, run = self.run_for(job_name)
        assert "execution" not in run.run_config  # so the executor below has the config every run gives it
        executor = job.executor_def.executor_creation_fn(InitExecutorContext(
            job=InMemoryJob(job), executor_def=job.executor_def, instance=self.instance,
            executor_config=process_config(job.executor_def.config_schema.config_type, {}).value,
        ))
        plan = create_execution_plan(job, run_config=run.run_config, tags=run.tags)
        plan_context = PlanOrchestrationContext(
            plan_data=PlanData(job=InMemoryJob(job), dagster_run=run, instance=self.instance, execution_plan=plan,
                               raise_on_error=True, retry_mode=RetryMode.DISABLED),
            log_manager=create_context_free_log_manager(self.instance, run), executor=executor, output_capture=None,
        )
        context = StepHandlerContext(
            instance=self.instance, plan_context=plan_context, steps=[plan.get_step_by_key(step_key)],
            execute_step_args=ExecuteStepArgs(run.job_code_origin, run.run_id, [step_key]), dagster_run=run,
        )
        # The executor's own step handler, as dagster-k8s's tests reach it.
        list(executor._step_handler.launch_step(context))  # noqa: SLF001
        return self.api.jobs[-1]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    values = yaml.safe_load(VALUES.read_text())
    (code_location,) = values["dagster-user-deployments"]["deployments"]
    # DATABASE_URL and KRONOS_BATCH_URL come from Secrets in the pod: set, with values that reach nothing.
    env = {**plain_env(code_location), "DATABASE_URL": "postgresql://db.invalid/x",
           "KRONOS_BATCH_URL": "http://kronos.invalid/batch"}
    api = KubernetesApi()
    kubeconfig = api.kubeconfig(tmp_path_factory.mktemp("kube") / "config")
    overrides = {
        "run_launcher": {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": {
            **chart_run_launcher_config(values), "load_incluster_config": False, "kubeconfig_file": kubeconfig,
        }},
        "concurrency": chart_instance_concurrency(values),
    }
    repository = ReconstructableRepository.for_module(
        "forecasting_pipeline.definitions", "defs", working_directory="/opt/forecasting_pipeline",
        container_image=f"{code_location['image']['repository']}:{code_location['image']['tag']}",
        container_context=chart_container_context(values, code_location),
    )
    with dg.instance_for_test(overrides=overrides) as instance:
        yield Deployment(values, code_location, build_definitions(Settings.from_env(env)), repository, instance, api)
    api.close()


def container(job: dict) -> dict:
    (main,) = job["spec"]["template"]["spec"]["containers"]
    return main


def env_of(job: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container(job).get("env", [])}


def gpu_requests(job: dict) -> list:
    resources = container(job).get("resources", {})
    return [part[GPU] for part in (resources.get("limits", {}), resources.get("requests", {})) if GPU in part]


def assert_database_url_comes_from_the_secret(job: dict) -> None:
    env = env_of(job)
    assert env["DATABASE_URL"] == {
        "name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "forecasting-db", "key": "DATABASE_URL"}},
    }
    assert env["DAGSTER_PG_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "forecasting-db", "key": "postgresql-password"}
    literals = [e.get("value", "") for e in env.values()]
    assert not [v for v in literals if "postgres" in v and "@" in v], "a database URL is in the pod spec as a literal"


def test_when_a_chronos2_forecasts_1h_run_starts_then_its_model_step_pod_asks_for_a_gpu_on_a_gpu_node(deployment):
    job = deployment.step_pod("chronos2_1h_job", "chronos2_forecasts_1h")

    pod = job["spec"]["template"]["spec"]
    assert container(job)["image"] == deployment.image()
    assert container(job)["resources"]["limits"] == {GPU: "1", "memory": "6Gi"}
    assert container(job)["resources"]["requests"] == {"cpu": "1", "memory": "2Gi"}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["securityContext"]["fsGroup"] == 10001
    assert {"name": "shared", "mountPath": "/shared"} in container(job)["volumeMounts"]
    assert_database_url_comes_from_the_secret(job)
    assert env_of(job)["CHRONOS2_GPU_LOCK"]["value"] == "per-gpu"
    assert env_of(job)["FRAMES_DIR"]["value"] == "/shared/frames"


def test_when_any_run_or_step_pod_starts_then_it_is_unprivileged_on_a_read_only_root_with_the_hub_offline(deployment):
    jobs = [deployment.run_pod("chronos2_1h_job"), deployment.step_pod("chronos2_1h_job", "chronos2_forecasts_1h")]

    for job in jobs:
        pod = job["spec"]["template"]["spec"]
        assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                          "fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}}
        assert container(job)["securityContext"] == {
            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "privileged": False,
            "capabilities": {"drop": ["ALL"]},
        }
        assert {"name": "tmp", "mountPath": "/tmp"} in container(job)["volumeMounts"]
        assert env_of(job)["HF_HUB_OFFLINE"]["value"] == "1"
        assert env_of(job)["CHRONOS2_REVISION"]["valueFrom"] == {
            "configMapKeyRef": {"name": "forecasting-model", "key": "CHRONOS2_REVISION"}}


def test_when_the_code_server_runs_then_it_has_resources_and_the_same_unprivileged_pod(deployment):
    code_server = deployment.deployment

    assert code_server["resources"] == {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "6Gi"}}
    assert code_server["podSecurityContext"]["runAsNonRoot"] is True
    assert code_server["securityContext"]["readOnlyRootFilesystem"] is True
    for component in ("dagsterWebserver", "dagsterDaemon"):
        assert deployment.values[component]["securityContext"] == code_server["securityContext"]
        assert deployment.values[component]["podSecurityContext"]["runAsNonRoot"] is True


def test_when_a_chain_run_is_launched_then_its_run_pod_asks_for_cpu_only(deployment):
    job = deployment.run_pod("chronos2_1h_job")

    assert job["metadata"]["labels"]["dagster/job"] == "chronos2_1h_job"
    assert gpu_requests(job) == []
    assert "nodeSelector" not in job["spec"]["template"]["spec"]
    assert_database_url_comes_from_the_secret(job)


@pytest.mark.parametrize(("job_name", "step_key"), [
    ("chronos2_1h_job", "ohlcv_1h"),
    ("chronos2_1h_job", "covariates_1h"),
    ("chronos2_1h_job", "ml_predictions_1h"),
    ("forecast_scores_1h_job", "forecast_scores_1h"),
    ("kronos_1h_job", "kronos_predictions_1h"),
])
def test_when_any_other_step_runs_then_its_pod_asks_for_cpu_only(deployment, job_name, step_key, monkeypatch):
    # The execution plan resolves the resources' variables, as the pod would from its environment.
    monkeypatch.setenv("KRONOS_BATCH_URL", "http://kronos.invalid/batch")

    job = deployment.step_pod(job_name, step_key)

    pod = job["spec"]["template"]["spec"]
    assert gpu_requests(job) == []
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert container(job)["resources"]["requests"] == {"cpu": "1", "memory": "2Gi"}
    assert_database_url_comes_from_the_secret(job)


def test_when_a_scoring_run_is_launched_then_neither_its_run_pod_nor_its_step_pod_requests_a_gpu(deployment):
    jobs = [deployment.run_pod("forecast_scores_1h_job"), deployment.step_pod("forecast_scores_1h_job", "forecast_scores_1h")]

    assert [gpu_requests(job) for job in jobs] == [[], []]
    assert [sorted({"nodeSelector", "tolerations"} & set(job["spec"]["template"]["spec"])) for job in jobs] == [[], []]


def test_when_a_backfill_or_ui_run_selects_the_assets_then_the_model_step_still_gets_its_gpu_pod(deployment):
    implicit = deployment.defs.resolve_implicit_global_asset_job_def()
    (model_step,) = [node for node in implicit.nodes if node.name == "chronos2_forecasts_1h"]

    assert implicit.executor_def is k8s_job_executor
    assert json.loads(model_step.tags[K8S_CONFIG_TAG])["container_config"]["resources"]["limits"] == {GPU: 1}


def test_when_the_chart_builds_the_instance_then_the_gpu_pool_limit_is_the_number_of_gpus(deployment):
    pools = deployment.instance.get_concurrency_config().pool_config
    gpu_nodes, gpus_per_step = 2, int(plain_env(deployment.deployment)["K8S_GPUS_PER_STEP"])

    assert pools.default_pool_limit == gpu_nodes * gpus_per_step
    assert pools.pool_granularity.value == "op"
    assert deployment.values["concurrency"]["enabled"] is True


def test_when_no_kubernetes_setting_is_given_then_runs_stay_in_one_process_without_pod_tags():
    defs = build_definitions(Settings.from_env({}))

    for name in ("chronos2_1h_job", "chronos2_1d_job", "forecast_scores_1h_job"):
        job = defs.resolve_job_def(name)
        assert job.executor_def is dg.in_process_executor
        assert not [node.name for node in job.nodes if K8S_CONFIG_TAG in node.tags]


@pytest.mark.parametrize(("env", "message"), [
    ({"K8S_GPU_NODE_SELECTOR": "gpu=true"}, "K8S_GPU_NODE_SELECTOR take effect only with K8S_STEP_PODS=true"),
    ({"K8S_STEP_PODS": "yes please"}, "K8S_STEP_PODS must be true or false, got 'yes please'"),
    ({"K8S_STEP_PODS": "true", "K8S_GPUS_PER_STEP": "0.5"}, "K8S_GPUS_PER_STEP must be a positive whole number, got '0.5'"),
    ({"K8S_STEP_PODS": "true", "K8S_GPU_NODE_SELECTOR": "gpu"}, "K8S_GPU_NODE_SELECTOR entry 'gpu' is not key=value"),
    ({"K8S_STEP_PODS": "true", "K8S_GPU_TOLERATIONS": "nvidia.com/gpu:NoSchdule"}, "entry 'nvidia.com/gpu:NoSchdule'"),
])
def test_when_a_placement_setting_is_malformed_then_the_definitions_refuse_to_load_naming_it(env, message):
    with pytest.raises(ValueError, match=message):
        Settings.from_env(env)
