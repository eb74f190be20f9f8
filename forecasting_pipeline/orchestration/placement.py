"""Where a run's steps go on Kubernetes: which pods ask for a GPU, and on which nodes.

Off unless the deployment turns it on (``K8S_STEP_PODS``, read in ``settings.py``). Then every step
runs in a pod of its own (dagster-k8s's ``k8s_job_executor``), and the step that runs Chronos-2
carries a ``dagster-k8s/config`` tag: a ``nvidia.com/gpu`` limit, a node selector and tolerations.
Every other step (the rest of the chain, scoring, the Kronos trigger, which only waits on HTTP)
carries none, so its pod asks for CPU only. Off, runs stay one process each and carry no tags.

Why a pod per step, not the run launcher's one pod per run: a run-level tag reaches neither the runs
that UI and daemon backfills launch (they run the implicit asset job, whose tags are not the chain
job's) nor only the model step, so the GPU would be held while bars are read and rows written. An
op tag reaches the model step's pod in every run, and the ``gpu`` pool's slot is claimed before that
pod is created, so no GPU pod waits for a device. The steps then exchange frames through
``FRAMES_DIR``, which must be a volume every pod mounts (docs/kubernetes.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import dagster as dg

K8S_CONFIG_TAG = "dagster-k8s/config"
GPU_RESOURCE = "nvidia.com/gpu"
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


@dataclass(frozen=True)
class Toleration:
    """A Kubernetes toleration: ``key=value:Effect`` (operator Equal) or ``key:Effect`` (Exists)."""

    key: str
    value: str | None = None
    effect: str | None = None  # None tolerates every effect of the taint

    def to_k8s(self) -> dict[str, str]:
        out = {"key": self.key, "operator": "Equal" if self.value is not None else "Exists"}
        if self.value is not None:
            out["value"] = self.value
        if self.effect is not None:
            out["effect"] = self.effect
        return out


@dataclass(frozen=True)
class GpuPlacement:
    """What a model step's pod asks for: whole GPUs, the nodes that have them, the taints it tolerates."""

    gpus: int = 1
    node_selector: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[Toleration, ...] = ()

    def __post_init__(self) -> None:
        if self.gpus < 1:
            raise ValueError(f"K8S_GPUS_PER_STEP must be a whole number of GPUs >= 1, got {self.gpus}")

    def op_tags(self) -> dict[str, object]:
        pod_spec: dict[str, object] = {}
        if self.node_selector:
            pod_spec["node_selector"] = dict(self.node_selector)
        if self.tolerations:
            pod_spec["tolerations"] = [t.to_k8s() for t in self.tolerations]
        # Kubernetes schedules extended resources such as GPUs by their limit (a request, if given,
        # must equal it), and only in whole devices.
        config: dict[str, object] = {"container_config": {"resources": {"limits": {GPU_RESOURCE: self.gpus}}}}
        if pod_spec:
            config["pod_spec_config"] = pod_spec
        return {K8S_CONFIG_TAG: config}


def parse_node_selector(text: str | None) -> tuple[tuple[str, str], ...]:
    """``"key=value,key2=value2"`` (K8S_GPU_NODE_SELECTOR) as pairs; ValueError naming the bad entry."""
    pairs = []
    for entry in _entries(text):
        key, sep, value = entry.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"K8S_GPU_NODE_SELECTOR entry {entry!r} is not key=value")
        pairs.append((key.strip(), value.strip()))
    return tuple(pairs)


def parse_tolerations(text: str | None) -> tuple[Toleration, ...]:
    """``"key=value:Effect,key:Effect"`` (K8S_GPU_TOLERATIONS, kubectl taint's syntax) as tolerations."""
    tolerations = []
    for entry in _entries(text):
        taint, sep, effect = entry.partition(":")
        key, has_value, value = taint.partition("=")
        if not key.strip() or (has_value and not value.strip()) or (sep and effect.strip() not in TAINT_EFFECTS):
            raise ValueError(
                f"K8S_GPU_TOLERATIONS entry {entry!r} is not key[=value][:effect] with effect one of {', '.join(TAINT_EFFECTS)}"
            )
        tolerations.append(Toleration(key.strip(), value.strip() if has_value else None, effect.strip() if sep else None))
    return tuple(tolerations)


def _entries(text: str | None) -> list[str]:
    return [entry.strip() for entry in (text or "").split(",") if entry.strip()]


def model_step_tags(placement: GpuPlacement | None) -> Mapping[str, object]:
    """The op tags of an asset that runs a model: GPU placement on Kubernetes, nothing otherwise."""
    return {} if placement is None else placement.op_tags()


def run_executor(step_pods: bool) -> dg.ExecutorDefinition:
    """One pod per step on Kubernetes; otherwise one process per run (a step process costs seconds of imports)."""
    if not step_pods:
        return dg.in_process_executor
    from dagster_k8s import k8s_job_executor

    return k8s_job_executor
