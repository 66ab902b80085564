"""Strict JSON schemas of KubeRay's ray.io/v1 RayJob, RayService and RayCluster, as `kubectl --validate=strict`
applies the operator's CRDs: an unknown field anywhere is an error, and so is a wrong type or a missing required
field.

No package on the registries vlray's CI reaches ships KubeRay's CRDs, so the ray.io part is declared here: the
fields of KubeRay v1.5.0's API types (ray-operator/apis/ray/v1/*_types.go at tag v1.5.0, the Go types its CRDs
are generated from; re-read for v1.7.0, which only adds fields), written out by hand, with their json names,
types, enums and `required` markers. Every Kubernetes type the CRDs embed (PodTemplateSpec, Service, EnvVar,
ResourceRequirements, ObjectMeta) is the Kubernetes 1.34 OpenAPI schema, strict variant, that the
kubernetes-validate package ships (KubeRay v1.5.0 builds against k8s.io/api v0.34). Status is left open: a
manifest does not set it.
"""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from typing import Any

from referencing import Registry, Resource

KUBERAY_VERSION = "v1.5.0"
K8S_VERSION = "1.34.0"
K8S_DEFINITIONS = "https://kubernetes.io/api/_definitions.json"

STRING = {"type": "string"}
BOOL = {"type": "boolean"}
INT32 = {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}
FLOAT = {"type": "number"}
STRING_MAP = {"type": "object", "additionalProperties": STRING}


def k8s(name: str) -> dict[str, Any]:
    """A Kubernetes API type from the shipped strict schema, e.g. `core.v1.PodTemplateSpec`."""
    prefix = "io.k8s.apimachinery.pkg.apis." if name.startswith("meta.") else "io.k8s.api."
    return {"$ref": f"{K8S_DEFINITIONS}#/$defs/{prefix}{name}"}


def struct(required: tuple[str, ...] = (), **fields: dict[str, Any]) -> dict[str, Any]:
    """A Go struct as a structural schema: these fields and no others."""
    schema: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": fields}
    if required:
        schema["required"] = list(required)
    return schema


def enum(*values: str) -> dict[str, Any]:
    return {"type": "string", "enum": list(values)}


def array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


AUTOSCALER_OPTIONS = struct(
    resources=k8s("core.v1.ResourceRequirements"), image=STRING, imagePullPolicy=STRING,
    securityContext=k8s("core.v1.SecurityContext"), idleTimeoutSeconds=INT32,
    upscalingMode=enum("Default", "Aggressive", "Conservative"), version=enum("v1", "v2"),
    env=array(k8s("core.v1.EnvVar")), envFrom=array(k8s("core.v1.EnvFromSource")),
    volumeMounts=array(k8s("core.v1.VolumeMount")))
REDIS_CREDENTIAL = struct(valueFrom=k8s("core.v1.EnvVarSource"), value=STRING)
GCS_FAULT_TOLERANCE = struct(("redisAddress",), redisUsername=REDIS_CREDENTIAL, redisPassword=REDIS_CREDENTIAL,
                             externalStorageNamespace=STRING, redisAddress=STRING)
HEAD_GROUP = struct(
    ("template",), template=k8s("core.v1.PodTemplateSpec"), headService=k8s("core.v1.Service"),
    enableIngress=BOOL, resources=STRING_MAP, labels=STRING_MAP, rayStartParams=STRING_MAP,
    serviceType=STRING)
WORKER_GROUP = struct(
    ("groupName", "template"), suspend=BOOL, groupName=STRING, replicas=INT32, minReplicas=INT32,
    maxReplicas=INT32, idleTimeoutSeconds=INT32, resources=STRING_MAP, labels=STRING_MAP,
    rayStartParams=STRING_MAP, template=k8s("core.v1.PodTemplateSpec"),
    scaleStrategy=struct(workersToDelete=array(STRING)), numOfHosts=INT32)
RAY_CLUSTER_SPEC = struct(
    ("headGroupSpec",), suspend=BOOL,
    managedBy=enum("ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue"),
    autoscalerOptions=AUTOSCALER_OPTIONS, headServiceAnnotations=STRING_MAP, enableInTreeAutoscaling=BOOL,
    gcsFaultToleranceOptions=GCS_FAULT_TOLERANCE, headGroupSpec=HEAD_GROUP, rayVersion=STRING,
    workerGroupSpecs=array(WORKER_GROUP))

DELETION_POLICY_TYPE = enum("DeleteCluster", "DeleteWorkers", "DeleteSelf", "DeleteNone")
DELETION_STRATEGY = struct(
    onSuccess=struct(policy=DELETION_POLICY_TYPE), onFailure=struct(policy=DELETION_POLICY_TYPE),
    deletionRules={**array(struct(("policy", "condition"), policy=DELETION_POLICY_TYPE, condition=struct(
        ("jobStatus",), jobStatus=enum("SUCCEEDED", "FAILED"), ttlSeconds={**INT32, "minimum": 0}))),
        "minItems": 1})
RAY_JOB_SPEC = struct(
    activeDeadlineSeconds=INT32, backoffLimit=INT32, rayClusterSpec=RAY_CLUSTER_SPEC,
    submitterPodTemplate=k8s("core.v1.PodTemplateSpec"), metadata=STRING_MAP, clusterSelector=STRING_MAP,
    submitterConfig=struct(backoffLimit=INT32),
    managedBy=enum("ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue"), deletionStrategy=DELETION_STRATEGY,
    entrypoint=STRING, runtimeEnvYAML=STRING, jobId=STRING,
    submissionMode=enum("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"), entrypointResources=STRING,
    entrypointNumCpus=FLOAT, entrypointNumGpus=FLOAT, ttlSecondsAfterFinished=INT32,
    shutdownAfterJobFinishes=BOOL, suspend=BOOL)

UPGRADE_STRATEGY = struct(
    type=enum("NewClusterWithIncrementalUpgrade", "NewCluster", "None"),
    clusterUpgradeOptions=struct(("stepSizePercent", "intervalSeconds", "gatewayClassName"),
                                 maxSurgePercent=INT32, stepSizePercent=INT32, intervalSeconds=INT32,
                                 gatewayClassName=STRING))
RAY_SERVICE_SPEC = struct(
    ("rayClusterConfig",), rayClusterDeletionDelaySeconds={**INT32, "minimum": 0},
    serviceUnhealthySecondThreshold=INT32, deploymentUnhealthySecondThreshold=INT32,
    serveService=k8s("core.v1.Service"), upgradeStrategy=UPGRADE_STRATEGY, serveConfigV2=STRING,
    rayClusterConfig=RAY_CLUSTER_SPEC, excludeHeadPodFromServeSvc=BOOL)

SPECS = {"RayJob": RAY_JOB_SPEC, "RayService": RAY_SERVICE_SPEC, "RayCluster": RAY_CLUSTER_SPEC}


def resource_schema(kind: str) -> dict[str, Any]:
    """The whole object as the API server takes it: type meta, strict ObjectMeta, the spec, an open status."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **struct(("apiVersion", "kind", "metadata", "spec"), apiVersion={"const": "ray.io/v1"},
                 kind={"const": kind}, metadata=k8s("meta.v1.ObjectMeta"), spec=SPECS[kind],
                 status={"type": "object"}),
    }


@cache
def k8s_registry() -> Registry:
    """The shipped Kubernetes definitions, registered under the URI their own references use."""
    folder = files("kubernetes_validate") / "kubernetes-json-schema" / f"v{K8S_VERSION}-local-strict"
    path = folder / "_definitions.json"
    definitions = json.loads(path.read_text())
    assert definitions["$id"] == K8S_DEFINITIONS, definitions["$id"]
    return Resource.from_contents(definitions) @ Registry()
