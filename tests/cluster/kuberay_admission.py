"""The checks the KubeRay operator runs on a RayJob or RayService before it creates anything, re-implemented for
manifests as parsed YAML. They follow ValidateRayJobMetadata/ValidateRayJobSpec, ValidateRayServiceMetadata/
ValidateRayServiceSpec and ValidateRayClusterSpec in ray-operator/controllers/ray/utils/validation.go of KubeRay
v1.5.0, plus what v1.7.0 added there for the fields vlray's manifests use (minReplicas and maxReplicas both set
without autoscaling, neither negative, min <= max). A manifest the operator rejects ends in ValidationFailed and
no cluster; each error here carries the operator's wording so a failure reads like the operator's event.

Feature-gated paths are taken with the gates off (the operator's defaults): a deletionStrategy or a suspended
worker group is an error, and the incremental upgrade is not checked further.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

MAX_RAY_CLUSTER_NAME = 53
MAX_RAY_JOB_NAME = MAX_RAY_CLUSTER_NAME - 6  # the operator appends a suffix to name the cluster
MAX_RAY_SERVICE_NAME = MAX_RAY_CLUSTER_NAME - 6
RAY_START_RESOURCE_PARAMS = ("num-cpus", "num-gpus", "memory", "resources")

_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUALIFIED_NAME_PART = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_GO_DURATION = re.compile(r"[-+]?((\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))+")


def is_dns1035_label(value: str) -> bool:
    return len(value) <= 63 and _DNS1035_LABEL.fullmatch(value) is not None


def is_qualified_name(key: str) -> bool:
    """A Kubernetes label key: an optional DNS-subdomain prefix and '/', then a name of at most 63 characters."""
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(prefix)):
        return False
    return 0 < len(name) <= 63 and _QUALIFIED_NAME_PART.fullmatch(name) is not None


def is_label_value(value: str) -> bool:
    return value == "" or (len(value) <= 63 and _QUALIFIED_NAME_PART.fullmatch(value) is not None)


def _env_names(container: dict[str, Any]) -> set[str]:
    return {env["name"] for env in container.get("env", [])}


def _group_errors(group_name: str, group: dict[str, Any]) -> list[str]:
    """validateRayGroupResources and validateRayGroupLabels, and the container count, for one group."""
    errors = []
    if not group["template"].get("spec", {}).get("containers"):
        errors.append(f"{'headGroupSpec' if group_name == 'Head' else 'workerGroupSpec'} should have at least one "
                      "container")
    params = group.get("rayStartParams", {})
    if any(params.get(key) for key in RAY_START_RESOURCE_PARAMS) and group.get("resources"):
        errors.append(f"resource fields should not be set in both rayStartParams and Resources for {group_name} "
                      "group; please use only one")
    if "labels" in params:
        errors.append(f"rayStartParams['labels'] is not supported for {group_name} group; please use the top-level "
                      "Labels field instead")
    for key, value in group.get("labels", {}).items():
        if not is_qualified_name(key):
            errors.append(f"invalid label key for {group_name} group: '{key}'")
        if not is_label_value(value):
            errors.append(f"invalid label value for key '{key}' in {group_name} group: '{value}'")
    return errors


def ray_cluster_spec_errors(spec: dict[str, Any], annotations: dict[str, str]) -> list[str]:
    """ValidateRayClusterSpec (v1.5.0, with v1.7.0's replica checks)."""
    head = spec["headGroupSpec"]
    errors = _group_errors("Head", head)
    autoscaling = spec.get("enableInTreeAutoscaling") is True
    for group in spec.get("workerGroupSpecs", []):
        name = group["groupName"]
        errors += _group_errors(name, group)
        low, high = group.get("minReplicas"), group.get("maxReplicas")
        if not autoscaling and (low is None or high is None):
            errors.append(f"worker group {name} must set both minReplicas and maxReplicas when autoscaling is "
                          "disabled")
        if low is not None and low < 0 or high is not None and high < 0:
            errors.append(f"worker group {name} has negative minReplicas or maxReplicas")
        if low is not None and high is not None and low > high:
            errors.append(f"worker group {name} has minReplicas {low} greater than maxReplicas {high}")
        if group.get("suspend"):
            errors.append(f"worker group {name} can be suspended only when the RayJobDeletionPolicy feature gate is "
                          "enabled")
    containers = head["template"].get("spec", {}).get("containers") or [{}]
    head_env = _env_names(containers[0])
    fault_tolerance = spec.get("gcsFaultToleranceOptions")
    if annotations.get("ray.io/ft-enabled") and fault_tolerance is not None:
        errors.append("ray.io/ft-enabled annotation and GcsFaultToleranceOptions are both set")
    if annotations.get("ray.io/ft-enabled", "").lower() != "true" and fault_tolerance is None \
            and "RAY_REDIS_ADDRESS" in head_env:
        errors.append("RAY_REDIS_ADDRESS is set which implicitly enables GCS fault tolerance, but "
                      "GcsFaultToleranceOptions is not set")
    if fault_tolerance is not None and (head.get("rayStartParams", {}).get("redis-password")
                                        or {"REDIS_PASSWORD", "RAY_REDIS_ADDRESS"} & head_env
                                        or annotations.get("ray.io/external-storage-namespace")):
        errors.append("redis settings outside GcsFaultToleranceOptions while it is set")
    if head.get("rayStartParams", {}).get("redis-username") or "REDIS_USERNAME" in head_env:
        errors.append("cannot set redis username in rayStartParams or environment variables")
    autoscaler_v2_env = next((e.get("value") for e in containers[0].get("env", [])
                              if e["name"] == "RAY_enable_autoscaler_v2"), None)
    if not autoscaling and autoscaler_v2_env in ("1", "true"):
        errors.append("environment variable RAY_enable_autoscaler_v2 cannot be set when enableInTreeAutoscaling is "
                      "false")
    if autoscaling:
        options = spec.get("autoscalerOptions") or {}
        if "version" in options and autoscaler_v2_env is not None:
            errors.append("both .spec.autoscalerOptions.version and head Pod env var RAY_enable_autoscaler_v2 are "
                          "set, please only use the former")
        if options.get("version") == "v2":
            pods = [head["template"]] + [g["template"] for g in spec.get("workerGroupSpecs", [])]
            if any(pod.get("spec", {}).get("restartPolicy", "Never") != "Never" for pod in pods):
                errors.append("restartPolicy should be Never or unset when using autoscaler V2")
    return errors


def _metadata_errors(kind: str, metadata: dict[str, Any], max_length: int) -> list[str]:
    name = metadata.get("name", "")
    errors = []
    if len(name) > max_length:
        errors.append(f"{kind} name should be no more than {max_length} characters")
    if not is_dns1035_label(name):
        errors.append(f"{kind} name should be a valid DNS1035 label: {name!r}")
    return errors


def ray_job_errors(job: dict[str, Any]) -> list[str]:
    """ValidateRayJobMetadata and ValidateRayJobSpec (v1.5.0)."""
    metadata, spec = job.get("metadata", {}), job["spec"]
    errors = _metadata_errors("RayJob", metadata, MAX_RAY_JOB_NAME)
    shutdown = spec.get("shutdownAfterJobFinishes", False)
    mode = spec.get("submissionMode", "K8sJobMode")
    selector = spec.get("clusterSelector", {})
    if spec.get("suspend") and not shutdown:
        errors.append("a RayJob with shutdownAfterJobFinishes set to false is not allowed to be suspended")
    if spec.get("ttlSecondsAfterFinished", 0) < 0:
        errors.append("TTLSecondsAfterFinished must be a non-negative integer")
    if not shutdown and spec.get("ttlSecondsAfterFinished", 0) > 0:
        errors.append("a RayJob with shutdownAfterJobFinishes set to false cannot have TTLSecondsAfterFinished")
    if "deletionStrategy" in spec:
        errors.append("RayJobDeletionPolicy feature gate must be enabled to use DeletionStrategy")
    if spec.get("suspend") and selector:
        errors.append("the ClusterSelector mode doesn't support the suspend operation")
    if "rayClusterSpec" not in spec and not selector:
        errors.append("one of RayClusterSpec or ClusterSelector must be set")
    if selector and not selector.get("ray.io/cluster"):
        errors.append("cluster name in ClusterSelector should not be empty")
    if selector and mode == "SidecarMode":
        errors.append("ClusterSelector is not supported in SidecarMode")
    if mode == "InteractiveMode" and spec.get("backoffLimit", 0) > 0:
        errors.append("BackoffLimit is incompatible with InteractiveMode")
    if mode == "SidecarMode" and ("submitterPodTemplate" in spec or "submitterConfig" in spec):
        errors.append("Currently, SidecarMode doesn't support SubmitterPodTemplate or SubmitterConfig")
    if "rayClusterSpec" in spec:
        errors += ray_cluster_spec_errors(spec["rayClusterSpec"], metadata.get("annotations", {}))
    try:
        runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML", ""))
        if runtime_env is not None and not isinstance(runtime_env, dict):
            errors.append("failed to unmarshal RuntimeEnvYAML: not a mapping")
    except yaml.YAMLError as exc:
        errors.append(f"failed to unmarshal RuntimeEnvYAML: {exc}")
    if spec.get("activeDeadlineSeconds", 1) <= 0:
        errors.append("activeDeadlineSeconds must be a positive integer")
    if spec.get("backoffLimit", 0) < 0:
        errors.append("backoffLimit must be a positive integer")
    return errors


def ray_service_errors(service: dict[str, Any]) -> list[str]:
    """ValidateRayServiceMetadata and ValidateRayServiceSpec (v1.5.0)."""
    metadata, spec = service.get("metadata", {}), service["spec"]
    errors = _metadata_errors("RayService", metadata, MAX_RAY_SERVICE_NAME)
    timeout = metadata.get("annotations", {}).get("ray.io/initializing-timeout")
    if timeout and not (_GO_DURATION.fullmatch(timeout) or timeout.isdigit() and int(timeout) > 0):
        errors.append(f"annotation ray.io/initializing-timeout has invalid format: {timeout}")
    cluster = spec["rayClusterConfig"]
    errors += ray_cluster_spec_errors(cluster, metadata.get("annotations", {}))
    if cluster["headGroupSpec"].get("headService", {}).get("metadata", {}).get("name"):
        errors.append("spec.rayClusterConfig.headGroupSpec.headService.metadata.name should not be set")
    upgrade = (spec.get("upgradeStrategy") or {}).get("type")
    if upgrade is not None and upgrade not in ("NewClusterWithIncrementalUpgrade", "NewCluster", "None"):
        errors.append(f"Spec.UpgradeStrategy.Type value {upgrade} is invalid")
    if spec.get("rayClusterDeletionDelaySeconds", 0) < 0:
        errors.append("Spec.RayClusterDeletionDelaySeconds should be a non-negative integer")
    return errors
