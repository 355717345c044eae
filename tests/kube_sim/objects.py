"""What the API server does to objects on the way in: defaulting, validation, the
status/spec split and generation bookkeeping."""

from __future__ import annotations

import re
from typing import Any

from .errors import ApiError, Cause
from .resources import DAEMONSETS, DEPLOYMENTS, NAMESPACES, PODS, REPLICASETS, STATEFULSETS, ResourceType
from .selectors import LabelSelector

Obj = dict[str, Any]

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def image_pull_policy(image: str) -> str:
    """The API server's default: Always for :latest or untagged images, else IfNotPresent."""
    if "@" in image:
        return "IfNotPresent"
    last = image.rsplit("/", 1)[-1]
    if ":" not in last or last.endswith(":latest"):
        return "Always"
    return "IfNotPresent"


def default_pod_spec(spec: Obj) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    for container in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        container.setdefault("resources", {})
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        if container.get("image"):
            container.setdefault("imagePullPolicy", image_pull_policy(container["image"]))
        for port in container.get("ports") or []:
            port.setdefault("protocol", "TCP")


def default_template(template: Obj) -> None:
    template.setdefault("metadata", {})
    template["metadata"].setdefault("creationTimestamp", None)
    default_pod_spec(template.setdefault("spec", {}))


def default_deployment(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    strategy = spec.setdefault("strategy", {})
    strategy.setdefault("type", "RollingUpdate")
    if strategy["type"] == "RollingUpdate":
        rolling = strategy.setdefault("rollingUpdate", {})
        rolling.setdefault("maxUnavailable", "25%")
        rolling.setdefault("maxSurge", "25%")
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    default_template(spec.setdefault("template", {}))


def default_replicaset(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    default_template(spec.setdefault("template", {}))


def default_statefulset(obj: Obj) -> None:
    """SetDefaults_StatefulSet (pkg/apis/apps/v1/defaults.go): OrderedReady, RollingUpdate with
    partition 0 (maxUnavailable only under the MaxUnavailableStatefulSet gate, off in 1.31)."""
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    spec.setdefault("podManagementPolicy", "OrderedReady")
    strategy = spec.setdefault("updateStrategy", {})
    strategy.setdefault("type", "RollingUpdate")
    if strategy["type"] == "RollingUpdate":
        strategy.setdefault("rollingUpdate", {}).setdefault("partition", 0)
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("persistentVolumeClaimRetentionPolicy", {"whenDeleted": "Retain", "whenScaled": "Retain"})
    default_template(spec.setdefault("template", {}))


def default_daemonset(obj: Obj) -> None:
    """SetDefaults_DaemonSet (pkg/apis/apps/v1/defaults.go): RollingUpdate, maxUnavailable 1, maxSurge 0."""
    spec = obj.setdefault("spec", {})
    strategy = spec.setdefault("updateStrategy", {})
    strategy.setdefault("type", "RollingUpdate")
    if strategy["type"] == "RollingUpdate":
        rolling = strategy.setdefault("rollingUpdate", {})
        rolling.setdefault("maxUnavailable", 1)
        rolling.setdefault("maxSurge", 0)
    spec.setdefault("revisionHistoryLimit", 10)
    default_template(spec.setdefault("template", {}))


def default_pod(obj: Obj) -> None:
    default_pod_spec(obj.setdefault("spec", {}))
    status = obj.setdefault("status", {})
    status.setdefault("phase", "Pending")
    status.setdefault("qosClass", "BestEffort")


def new_node(name: str) -> Obj:
    """A Ready Node as a kubelet registers it (labels kubernetes.io/hostname and kubernetes.io/os)."""
    return {"kind": "Node", "apiVersion": "v1",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                                  "kubernetes.io/arch": "amd64"}},
            "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                       "message": "kubelet is posting ready status"}],
                       "nodeInfo": {"kubeletVersion": "v1.31.0", "operatingSystem": "linux", "architecture": "amd64"}}}


def default_namespace(obj: Obj) -> None:
    obj.setdefault("spec", {"finalizers": ["kubernetes"]})
    obj["status"] = {"phase": "Active"}
    obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"]["name"]


DEFAULTERS = {
    DEPLOYMENTS.key: default_deployment,
    REPLICASETS.key: default_replicaset,
    STATEFULSETS.key: default_statefulset,
    DAEMONSETS.key: default_daemonset,
    PODS.key: default_pod,
    NAMESPACES.key: default_namespace,
}


# --- validation ---------------------------------------------------------------------


def _validate_name(rt: ResourceType, name: str) -> list[Cause]:
    pattern = _DNS_LABEL if rt in (NAMESPACES,) else _DNS_SUBDOMAIN
    if not name:
        return [Cause("FieldValueRequired", "Required value: name or generateName is required", "metadata.name")]
    if len(name) > 253 or not pattern.match(name):
        message = (
            f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric '
            "characters, '-' or '.', and must start and end with an alphanumeric character"
        )
        return [Cause("FieldValueInvalid", message, "metadata.name")]
    return []


# apimachinery pkg/api/validation/objectmeta.go: TotalAnnotationSizeLimitB, keys plus values.
TOTAL_ANNOTATION_SIZE_LIMIT = 256 * (1 << 10)


def _validate_annotations(meta: Obj) -> list[Cause]:
    """ValidateAnnotations' size rule: a client adding to annotations near the limit gets 422 Invalid."""
    annotations = meta.get("annotations") or {}
    size = sum(len(key) + len(str(value)) for key, value in annotations.items())
    if size > TOTAL_ANNOTATION_SIZE_LIMIT:
        return [Cause("FieldValueTooLong", f"Too long: must have at most {TOTAL_ANNOTATION_SIZE_LIMIT} bytes",
                      "metadata.annotations")]
    return []


def _validate_pod_spec(spec: Obj, path: str, only_always: bool) -> list[Cause]:
    causes: list[Cause] = []
    containers = spec.get("containers") or []
    if not containers:
        causes.append(Cause("FieldValueRequired", "Required value", f"{path}.containers"))
    seen: set[str] = set()
    for index, container in enumerate(containers):
        where = f"{path}.containers[{index}]"
        name = container.get("name") or ""
        if not name:
            causes.append(Cause("FieldValueRequired", "Required value", f"{where}.name"))
        elif not _DNS_LABEL.match(name):
            causes.append(Cause("FieldValueInvalid", f'Invalid value: "{name}": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or \'-\', and must start and end with an alphanumeric character', f"{where}.name"))
        elif name in seen:
            causes.append(Cause("FieldValueDuplicate", f'Duplicate value: "{name}"', f"{where}.name"))
        seen.add(name)
        if not container.get("image"):
            causes.append(Cause("FieldValueRequired", "Required value", f"{where}.image"))
    restart = spec.get("restartPolicy")
    if only_always and restart != "Always":
        causes.append(Cause("FieldValueNotSupported", f'Unsupported value: "{restart}": supported values: "Always"', f"{path}.restartPolicy"))
    return causes


def _go_map(labels: dict[str, str]) -> str:
    inner = ", ".join(f'"{k}":"{v}"' for k, v in sorted(labels.items()))
    return f"map[string]string{{{inner}}}"


def _validate_controller(obj: Obj) -> list[Cause]:
    spec = obj.get("spec") or {}
    causes: list[Cause] = []
    if (spec.get("replicas") or 0) < 0:
        causes.append(Cause("FieldValueInvalid", f"Invalid value: {spec['replicas']}: must be greater than or equal to 0", "spec.replicas"))
    selector = spec.get("selector")
    template_labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    if not selector or not (selector.get("matchLabels") or selector.get("matchExpressions")):
        causes.append(Cause("FieldValueRequired", "Required value", "spec.selector"))
        causes.append(Cause("FieldValueInvalid", "Invalid value: map[string]string(nil): empty selector is invalid for deployment", "spec.selector"))
    elif not LabelSelector.from_api(selector).matches_labels(template_labels):
        causes.append(Cause("FieldValueInvalid", f"Invalid value: {_go_map(template_labels)}: `selector` does not match template `labels`", "spec.template.metadata.labels"))
    causes += _validate_pod_spec((spec.get("template") or {}).get("spec") or {}, "spec.template.spec", only_always=True)
    return causes


def _validate_deployment(obj: Obj) -> list[Cause]:
    causes = _validate_controller(obj)
    spec = obj.get("spec") or {}
    strategy = spec.get("strategy") or {}
    if strategy.get("type") not in ("RollingUpdate", "Recreate"):
        causes.append(Cause("FieldValueNotSupported", f'Unsupported value: "{strategy.get("type")}": supported values: "Recreate", "RollingUpdate"', "spec.strategy.type"))
    if strategy.get("type") == "Recreate" and strategy.get("rollingUpdate") is not None:
        causes.append(Cause("FieldValueForbidden", "Forbidden: may not be specified when strategy `type` is 'Recreate'", "spec.strategy.rollingUpdate"))
    rolling = strategy.get("rollingUpdate") or {}
    if strategy.get("type") == "RollingUpdate" and str(rolling.get("maxSurge")) in ("0", "0%") and str(rolling.get("maxUnavailable")) in ("0", "0%"):
        causes.append(Cause("FieldValueInvalid", "Invalid value: intstr.IntOrString{Type:0, IntVal:0, StrVal:\"\"}: may not be 0 when `maxSurge` is 0", "spec.strategy.rollingUpdate.maxUnavailable"))
    deadline = spec.get("progressDeadlineSeconds")
    if deadline is not None and deadline <= (spec.get("minReadySeconds") or 0):
        causes.append(Cause("FieldValueInvalid", f"Invalid value: {deadline}: must be greater than minReadySeconds", "spec.progressDeadlineSeconds"))
    return causes


def _validate_update_strategy(obj: Obj, rt: ResourceType) -> list[Cause]:
    """pkg/apis/apps/validation/validation.go (ValidateStatefulSetSpec, ValidateDaemonSetUpdateStrategy):
    RollingUpdate or OnDelete; a partition is >= 0; OnDelete takes no rollingUpdate."""
    strategy = (obj.get("spec") or {}).get("updateStrategy") or {}
    kind = strategy.get("type")
    if kind not in ("RollingUpdate", "OnDelete"):
        return [Cause("FieldValueNotSupported", f'Unsupported value: "{kind}": supported values: "OnDelete", "RollingUpdate"',
                      "spec.updateStrategy.type")]
    if kind == "OnDelete" and strategy.get("rollingUpdate") is not None:
        return [Cause("FieldValueInvalid", "Invalid value: apps.RollingUpdateStatefulSetStrategy{...}: only allowed for"
                      " updateStrategy 'RollingUpdate'", "spec.updateStrategy.rollingUpdate")]
    partition = (strategy.get("rollingUpdate") or {}).get("partition", 0)
    if rt == STATEFULSETS and isinstance(partition, int) and partition < 0:
        return [Cause("FieldValueInvalid", f"Invalid value: {partition}: must be greater than or equal to 0",
                      "spec.updateStrategy.rollingUpdate.partition")]
    return []


# pkg/apis/apps/validation/validation.go (ValidateStatefulSetUpdate): the spec fields an update may change.
STATEFULSET_MUTABLE = ("replicas", "ordinals", "template", "updateStrategy", "persistentVolumeClaimRetentionPolicy",
                       "minReadySeconds")


def _validate_statefulset_update(obj: Obj, old: Obj) -> list[Cause]:
    new_rest = {k: v for k, v in (obj.get("spec") or {}).items() if k not in STATEFULSET_MUTABLE}
    old_rest = {k: v for k, v in (old.get("spec") or {}).items() if k not in STATEFULSET_MUTABLE}
    if new_rest == old_rest:
        return []
    return [Cause("FieldValueForbidden", "Forbidden: updates to statefulset spec for fields other than 'replicas',"
                  " 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and"
                  " 'minReadySeconds' are forbidden", "spec")]


def validate(rt: ResourceType, obj: Obj, old: Obj | None = None) -> None:
    meta = obj.get("metadata") or {}
    causes = _validate_name(rt, meta.get("name", "")) + _validate_annotations(meta)
    if rt == DEPLOYMENTS:
        causes += _validate_deployment(obj)
    elif rt == REPLICASETS:
        causes += _validate_controller(obj)
    elif rt in (STATEFULSETS, DAEMONSETS):
        causes += _validate_controller(obj) + _validate_update_strategy(obj, rt)
        if old is not None and rt == STATEFULSETS:
            causes += _validate_statefulset_update(obj, old)
    elif rt == PODS:
        causes += _validate_pod_spec(obj.get("spec") or {}, "spec", only_always=False)
    if old is not None and rt in (DEPLOYMENTS, REPLICASETS, DAEMONSETS):
        new_selector = (obj.get("spec") or {}).get("selector")
        old_selector = (old.get("spec") or {}).get("selector")
        if new_selector != old_selector:
            causes.append(Cause("FieldValueInvalid", "Invalid value: v1.LabelSelector{...}: field is immutable", "spec.selector"))
    if old is not None and rt == PODS and (obj.get("spec") or {}).get("containers") is not None:
        old_images = [c.get("image") for c in (old.get("spec") or {}).get("containers") or []]
        new_spec = {k: v for k, v in (obj.get("spec") or {}).items()}
        old_spec = {k: v for k, v in (old.get("spec") or {}).items()}
        for spec in (new_spec, old_spec):
            spec["containers"] = [{k: v for k, v in c.items() if k != "image"} for c in spec.get("containers") or []]
            spec.pop("activeDeadlineSeconds", None)
            spec.pop("tolerations", None)
        if new_spec != old_spec or len(old_images) != len((obj.get("spec") or {}).get("containers") or []):
            causes.append(Cause("FieldValueForbidden", "Forbidden: pod updates may not change fields other than `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to existing tolerations) or `spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)", "spec"))
    if causes:
        raise ApiError.invalid(rt, meta.get("name", ""), causes)


# --- spec/status split and generation ------------------------------------------------

HAS_GENERATION = (DEPLOYMENTS.key, REPLICASETS.key, STATEFULSETS.key, DAEMONSETS.key)


def prepare_create(rt: ResourceType, obj: Obj) -> None:
    """The server owns status and generation of new objects."""
    if rt.key in HAS_GENERATION:
        obj["metadata"]["generation"] = 1
        obj["status"] = {}
    if rt.key == PODS.key:
        obj["status"] = {}
    DEFAULTERS.get(rt.key, lambda _: None)(obj)


def prepare_update(rt: ResourceType, new: Obj, old: Obj) -> None:
    """A write to the main resource cannot change status; spec changes bump generation."""
    if "status" in old or rt.key in HAS_GENERATION or rt.key == PODS.key:
        new["status"] = old.get("status", {})
    DEFAULTERS.get(rt.key, lambda _: None)(new)
    if rt.key == NAMESPACES.key:
        new["status"] = old.get("status", {})
    if rt.key in HAS_GENERATION:
        generation = old["metadata"].get("generation", 1)
        new["metadata"]["generation"] = generation + 1 if new.get("spec") != old.get("spec") else generation


def keep_deletion_fields(rt: ResourceType, new: Obj, old: Obj) -> None:
    """Clients cannot delete by update. rest/update.go (BeforeUpdate): "an update can never
    remove/change a deletion timestamp", nor the grace period once set; and
    apimachinery pkg/api/validation/objectmeta.go (ValidateObjectMetaUpdate): setting them on
    an object not being deleted is invalid (immutable), and an object being deleted takes no
    new finalizers. Raises 422 Invalid."""
    meta, old_meta = new.setdefault("metadata", {}), old["metadata"]
    causes: list[Cause] = []
    if old_meta.get("deletionTimestamp"):
        meta["deletionTimestamp"] = old_meta["deletionTimestamp"]
        if meta.get("deletionGracePeriodSeconds") is None and old_meta.get("deletionGracePeriodSeconds") is not None:
            meta["deletionGracePeriodSeconds"] = old_meta["deletionGracePeriodSeconds"]
        added = [f for f in meta.get("finalizers") or [] if f not in (old_meta.get("finalizers") or [])]
        if added:
            listed = ", ".join(f'"{f}"' for f in added)
            causes.append(Cause("FieldValueForbidden", "Forbidden: no new finalizers can be added if the object is being"
                                f" deleted, found new finalizers []string{{{listed}}}", "metadata.finalizers"))
    else:
        for field_name in ("deletionTimestamp", "deletionGracePeriodSeconds"):
            if meta.get(field_name) is not None:
                causes.append(Cause("FieldValueInvalid", f'Invalid value: "{meta[field_name]}": field is immutable',
                                    f"metadata.{field_name}"))
    if causes:
        raise ApiError.invalid(rt, meta.get("name", ""), causes)


def prepare_status_update(new: Obj, old: Obj) -> Obj:
    """A write to the status subresource changes only status."""
    result = dict(old)
    result["status"] = new.get("status", {})
    result["metadata"] = dict(old["metadata"])
    return result


# --- scale subresource --------------------------------------------------------------


def to_scale(rt: ResourceType, obj: Obj) -> Obj:
    meta = obj["metadata"]
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"],
            "namespace": meta.get("namespace", ""),
            "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"],
            "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": spec.get("replicas", 0)},
        "status": {
            "replicas": status.get("replicas", 0),
            "selector": str(LabelSelector.from_api(spec.get("selector"))),
        },
    }
