"""Kubernetes target: one container of one Deployment, StatefulSet or DaemonSet (the `workload`
setting; what differs between them is rollout.targets.kube_workloads), moved to an exact digest.

Apply is a strategic-merge patch of that container's image (nothing else in the
pod template changes) plus a change-cause annotation, so `kubectl rollout history`
shows ledger entries. Verification checks what `kubectl rollout status` checks,
woken by watches, and fails fast on the pod states that never heal by waiting
(CrashLoopBackOff, a pull that failed again after the kubelet's back-off, ...) instead of
sitting out the progress deadline.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
from pathlib import Path
from typing import Any, Callable

from rollout.config import AppConfig, TargetConfig
from rollout.errors import (EXIT_UNREACHABLE, EXIT_USAGE, NotApplied, RolloutError, TargetUnreachable, UserError,
                            one_line)
from rollout.plan import Preview
from rollout.reference import checked_digest, checked_image, parse
from rollout.targets.kube_workloads import DEFAULT_WORKLOAD, StatefulSetKind, owner_uids, workload
from rollout.targets import Observation, Release, Running

log = logging.getLogger(__name__)

# Waiting reasons that waiting does not heal (the kubelet's own names, pkg/kubelet/images/types.go
# and pkg/kubelet/container/sync_result.go). ErrImageNeverPull: imagePullPolicy Never and the image
# is not on the node; no pull will ever be tried.
FAST_FAIL_REASONS = {"CrashLoopBackOff", "CreateContainerConfigError", "InvalidImageName", "CreateContainerError",
                     "RunContainerError", "ErrImageNeverPull"}
# Pull failures the kubelet retries after a back-off (10 s, doubling; pkg/kubelet/images/image_manager.go),
# so a registry hiccup heals by itself. Rule: a pull error fails the release once the same pod
# shows ErrImagePull again after ImagePullBackOff, i.e. the kubelet's retry after its back-off
# failed too. ImagePullBackOff alone is not enough: a pod that syncs during the back-off (another
# container started, say) shows it after a single failed pull.
PULL_ERROR = "ErrImagePull"
PULL_BACK_OFF = "ImagePullBackOff"
# A 4xx other than 404 and 409 (each handled on its own) is the API server's decision, not a
# failure: nothing was written (RBAC 401/403, an admission webhook's denial, 400/422 validation,
# 429 from API Priority and Fairness).
REFUSED_STATUSES = range(400, 500)
CHANGE_CAUSE = "kubernetes.io/change-cause"
LEDGER_ID = "rollout/ledger-id"
STRATEGIC = "application/strategic-merge-patch+json"
WATCH_SECONDS = 30
CONFLICT_RETRIES = 5
# A container's name: an RFC 1123 label (k8s.io/apimachinery pkg/util/validation/validation.go,
# IsDNS1123Label), which the API server requires of every container name it stores.
DNS_1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


class KubernetesTarget:
    """One container of a Kubernetes Deployment, StatefulSet or DaemonSet (settings:
    rollout.targets.kinds.KUBERNETES), implementing rollout.targets.Target; only the container's
    image and rollout's change-cause annotations are changed (and, on a revert of a StatefulSet,
    not-Ready pods of the bad release are deleted: _force_rollback). Built without asking the API server."""

    def __init__(self, config: TargetConfig, app: AppConfig) -> None:
        self.name = config.name
        self.app = app
        self.settings = config.settings
        self.namespace: str = config.settings.get("namespace") or "default"
        kind = config.settings.get("workload") or DEFAULT_WORKLOAD
        self.workload = workload(kind, config.settings[kind])
        self.deployment: str = self.workload.name  # the workload's name, whatever its kind
        self.max_restarts = config.health.max_restarts
        self._apis: tuple[Any, Any] | None = None
        self._container: str | None = None
        self._image_before: str | None = None
        self._generation: int | None = None
        self._warned = False  # the init-container warning is given once per command
        self.keeps_log_tail = True  # Target.keeps_log_tail; logs() says whether it could mask everything
        # restartCount of the moved container per pod uid, read by apply just before its PATCH:
        # restarts count from the rollout's start (issue 11 item 9), not from when verification begins.
        self._restarts_before: dict[str, int] | None = None

    # -- connection ----------------------------------------------------------

    @property
    def apis(self) -> tuple[Any, Any]:
        """(AppsV1Api, CoreV1Api), built on first use by new_api_client (kubeconfig or in-cluster)."""
        if self._apis is None:
            from kubernetes import client

            try:
                api_client = new_api_client(self.settings.get("kubeconfig"), self.settings.get("context"))
            except UserError as exc:
                raise UserError(f"target {self.name}: {exc}") from None
            self._apis = (client.AppsV1Api(api_client), client.CoreV1Api(api_client))
        return self._apis

    def _call(self, what: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """One API call returning the decoded JSON object; failures become rollout errors."""
        from kubernetes.client.exceptions import ApiException

        try:
            response = method(*args, _request_timeout=30, _preload_content=False, **kwargs)
            return json.loads(response.data)
        except ApiException as exc:
            if exc.status == 404:
                raise UserError(
                    f"target {self.name}: {what}: not found in namespace {self.namespace}:"
                    f" check `{self.workload.kind}`/`namespace`"
                ) from None
            if exc.status == 409:
                raise _Conflict() from None
            explanation = _status_message(exc)
            text = f"target {self.name}: {what}: API answered {exc.status} {exc.reason}" + (
                f": {explanation}" if explanation else "")
            if exc.status in REFUSED_STATUSES:
                raise ApiRefusal(text, exc.status, explanation or f"{exc.status} {exc.reason}") from None
            raise TargetUnreachable(text) from None
        except Exception as exc:  # noqa: BLE001 - urllib3 connection errors and friends
            unreachable = RequestNotSent if _never_sent(exc) else TargetUnreachable
            raise unreachable(f"target {self.name}: Kubernetes API unreachable ({one_line(exc)})") from None

    def _read(self) -> dict[str, Any]:
        apps, _ = self.apis
        return self._call(str(self.workload), self.workload.method(apps, "read"), self.workload.name, self.namespace)

    # -- Target protocol -----------------------------------------------------

    def running(self) -> Running:
        """The pod template's image and the digest pods run: a digest differing from the template's
        (drift) wins, else the template's, else the pods'. Only pods of current ReplicaSets that
        are not terminating count; `warning` names an init container running the app's repository.
        Raises TargetUnreachable (exit 5), UserError (exit 2) when the container cannot be chosen."""
        deployment = self._read()
        container = self._pick_container(deployment)
        image = _checked_image(self.name, _container(deployment, container)["image"], "the pod template's image")
        template_digest = _digest_in(self.name, image, "the pod template's image")
        pod_digests = sorted({d for d in self._pod_digests(deployment, container) if d})
        drifting = [d for d in pod_digests if d != template_digest]
        digest = drifting[0] if drifting else template_digest or (pod_digests[0] if pod_digests else None)
        detail = f"pods run {', '.join(pod_digests)}" if pod_digests else "no pods"
        return Running(image, digest, detail, warning=self._init_container_warning(deployment, container))

    def preview(self, release: Release) -> Preview:
        """What apply(release) would change, read-only (rollout.plan): the workload's container
        whose image moves, e.g. "StatefulSet default/db container app"; pull None (each node's
        kubelet decides). Raises TargetUnreachable (5), UserError (2) for what prepare refuses
        (Workload.refusal: paused, scaled to 0, OnDelete, ...) or when the container cannot be chosen."""
        obj = self._read()
        refusal = self.workload.refusal(obj)
        if refusal:  # the same refusal as prepare's: a plan must not promise a deploy that exits 2
            raise UserError(f"target {self.name}: {refusal}")
        container = self._pick_container(obj)
        return Preview(f"{self.workload.title} {self.namespace}/{self.deployment} container {container}", None)

    def prepare(self, release: Release) -> None:
        """Read the workload and choose the container; changes nothing. Raises UserError (exit 2)
        for what Workload.refusal refuses (a paused Deployment, one scaled to 0, updateStrategy
        OnDelete, ...) or no container to choose; TargetUnreachable (5)."""
        deployment = self._read()
        refusal = self.workload.refusal(deployment)
        if refusal:
            raise UserError(f"target {self.name}: {refusal}")
        self._container = self._pick_container(deployment)
        warning = self._init_container_warning(deployment, self._container)
        if warning and not self._warned:
            self._warned = True
            log.warning("%s", warning)

    def apply(self, release: Release) -> str | None:
        """Patch the container's image to release.image (plus the change-cause annotations) and
        return the image the pod template ran before. On a revert (release.revert) of a
        StatefulSet, not-Ready pods of the release being reverted are then deleted (_force_rollback);
        a forward deploy deletes nothing: its controller replaces pods at its own pace.

        Raises NotApplied whenever the Deployment is certainly as it was, so the orchestrator
        reverts nothing: a failure before the PATCH is sent (the read, the container choice, the
        restart baseline), a PATCH the API server answers with a refusal (RBAC, admission, 422:
        exit 2 for 422, else 5) or 404 (exit 2), one that never left (no connection: exit 5),
        and CONFLICT_RETRIES 409 Conflicts in a row (another writer keeps updating it: exit 5).
        A 4xx is the API server rejecting the request before storage (apiserver handlers:
        admission and validation run before the registry's GuaranteedUpdate). Only a PATCH
        whose fate is unknown raises TargetUnreachable (the Deployment may have changed, so it
        is reverted): a connection lost after sending, a timeout, a 5xx (an etcd timeout's 504
        may still commit).
        """
        apps, _ = self.apis
        for _attempt in range(CONFLICT_RETRIES):
            resource_version, container, before = self._read_before_patch()
            patch = {
                "metadata": {
                    "resourceVersion": resource_version,
                    "annotations": {CHANGE_CAUSE: release.change_cause, LEDGER_ID: str(release.entry_id)},
                },
                "spec": {"template": {"spec": {"containers": [{"name": container, "image": release.image}]}}},
            }
            # Known before the PATCH leaves, so stop() can put it back if its fate is unknown.
            self._image_before = self._image_before or before
            try:
                patched = self._call(f"patch {self.workload}", self.workload.method(apps, "patch"),
                                     self.workload.name, self.namespace, patch, _content_type=STRATEGIC)
            except _Conflict:
                continue  # someone else changed it between our read and patch: read again
            except ApiRefusal as refusal:
                # 422 Invalid is this Deployment's or config's to fix (2); RBAC and admission are the cluster's (5).
                raise NotApplied(
                    f"target {self.name}: the API server refused to patch {self.workload}"
                    f" ({refusal.status}): {refusal.explanation}; nothing was changed",
                    exit_code=EXIT_USAGE if refusal.status == 422 else EXIT_UNREACHABLE,
                ) from None
            except (UserError, RequestNotSent) as unchanged:  # 404: deleted since the read; no connection
                raise NotApplied(f"{unchanged}; nothing was changed", exit_code=unchanged.exit_code) from None
            self._generation = patched["metadata"].get("generation")
            if release.revert:
                self._force_rollback(patched, container, release.image)
            return before
        raise NotApplied(f"target {self.name}: {self.workload} changed between each read and patch"
                         f" ({CONFLICT_RETRIES} times 409 Conflict): another writer keeps updating it; nothing was"
                         " changed: deploy again once it settles")

    def _read_before_patch(self) -> tuple[str, str, str]:
        """(resourceVersion, container, its image now) of the Deployment, and the restart baseline
        taken from its pods; nothing has been sent that changes anything yet, so every failure
        is NotApplied with the cause's exit code (2 for config, 5 for the cluster)."""
        try:
            deployment = self._read()
            container = self._container or self._pick_container(deployment)
            before = _checked_image(self.name, _container(deployment, container)["image"], "the pod template's image")
            self._restarts_before = self._restart_counts(deployment, container)
            return deployment["metadata"]["resourceVersion"], container, before
        except RolloutError as exc:
            raise NotApplied(f"{one_line(exc)}; nothing was changed", exit_code=exc.exit_code) from None
        except (KeyError, TypeError, StopIteration) as exc:  # an answer without the fields every Deployment has
            raise NotApplied(f"target {self.name}: {self.workload} was answered without"
                             f" {one_line(repr(exc))}; nothing was changed") from None

    def watch(self, release: Release) -> "WorkloadWatch":
        """A WorkloadWatch of the rollout the last apply() started (watch streams on the
        workload and its pods wake it; polling is the fallback)."""
        return WorkloadWatch(self, release)

    def logs(self, lines: int = 20) -> str:
        """The last `lines` lines the moved container of a new pod wrote: of the container that
        died for a pod that restarted (pods/log `previous`), else of the current one. "" when
        no pod has any (logs are a courtesy; the verdict already stands).

        The container's literal env values are masked (mask_env, as the docker kind does). Values
        from Secrets or ConfigMaps (env[].valueFrom, envFrom) cannot be without reading them, so a
        container with any sets keeps_log_tail False: the tail is shown on stderr, never stored in
        the ledger (rollout.orchestrator)."""
        from rollout.targets.docker.target import mask_env

        _, core = self.apis
        try:
            deployment = self._read()
            container = self._container or self._pick_container(deployment)
            pods = self._new_pods(deployment)
            spec = _container(deployment, container)
        except Exception:  # noqa: BLE001 - see above
            return ""
        env = spec.get("env") or []
        literal = [f"{item['name']}={item['value']}" for item in env if isinstance(item.get("value"), str)]
        self.keeps_log_tail = not spec.get("envFrom") and not any("valueFrom" in item for item in env)
        for pod in pods:
            statuses = [s for s in pod.get("status", {}).get("containerStatuses") or [] if s.get("name") == container]
            restarted = bool(statuses and statuses[0].get("restartCount"))
            try:
                text = core.read_namespaced_pod_log(
                    pod["metadata"]["name"], self.namespace, container=container, tail_lines=lines, previous=restarted,
                    _request_timeout=10, _preload_content=False).data.decode("utf-8", "replace")
            except Exception:  # noqa: BLE001 - 400 while a container waits to start: try the next pod
                continue
            if text.strip():
                return mask_env(text, literal, [])
        return ""

    def stop(self) -> None:
        """A first release failed: put the workload back on the image it ran before rollout touched it
        (a revert: a StatefulSet's not-Ready pods of the failed release are deleted, _force_rollback)."""
        if self._image_before and self._container:
            apps, _ = self.apis
            patch = {"spec": {"template": {"spec": {"containers": [{"name": self._container, "image": self._image_before}]}}}}
            patched = self._call(f"patch {self.workload}", self.workload.method(apps, "patch"),
                                 self.workload.name, self.namespace, patch, _content_type=STRATEGIC)
            self._force_rollback(patched, self._container, self._image_before)

    def _force_rollback(self, patched: dict[str, Any], container: str, image: str) -> None:
        """After a revert changed a StatefulSet's template to `image`: delete its pods (ordinals at or
        above the partition) that run another image and are not Ready, as the StatefulSet
        documentation's "Forced rollback" says to. Only on a revert (Release.revert, stop()): the
        release being reverted failed verification, so its not-Ready pods are known bad; on a forward
        deploy a not-Ready pod may be healing (a replica replaying its log, a flapping readiness
        probe) and deleting it would skip OrderedReady's one-pod-at-a-time guarantee. Each deletion
        is a warning. With podManagementPolicy OrderedReady the controller waits for
        such a pod to become Ready before it replaces anything (stateful_set_control.go
        processReplica), so a crash-looping pod of a bad release would block the revert for ever;
        the controller recreates each from the new template. Other kinds: nothing to do (a
        ReplicaSet or DaemonSet rollout replaces unavailable pods by itself). A failed delete is
        a warning: verification then reports what the pod does."""
        if not isinstance(self.workload, StatefulSetKind):
            return
        _, core = self.apis
        try:
            pods = self._pods(self._selector(patched))
        except RolloutError as exc:
            log.warning("%s", one_line(exc))
            return
        for pod in pods:
            if not (self.workload.owns(patched, pod) and _counts(pod) and self.workload.counts_for_status(patched, pod)):
                continue
            images = [c.get("image") for c in pod.get("spec", {}).get("containers") or [] if c.get("name") == container]
            ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in pod.get("status", {}).get("conditions") or [])
            if images == [image] or ready:
                continue
            name = pod["metadata"]["name"]
            try:
                self._call(f"delete pod {name}", core.delete_namespaced_pod, name, self.namespace)
                log.warning("target %s: deleted pod %s (not Ready, running the release being reverted) so that %s"
                            " can replace it", self.name, name, self.workload)
            except RolloutError as exc:
                log.warning("%s", one_line(exc))

    # -- helpers -------------------------------------------------------------

    def _pick_container(self, deployment: dict[str, Any]) -> str:
        """The container rollout moves: `container` when set, else the only one, else the one whose
        image is in the app's repository, names compared normalised (`nginx:1.25` runs
        docker.io/library/nginx). UserError (exit 2) when that names none or several."""
        containers = deployment["spec"]["template"]["spec"]["containers"]
        names = [c["name"] for c in containers]
        wanted = self.settings.get("container")
        if wanted:
            if wanted not in names:
                raise UserError(f"target {self.name}: {self.workload} has no container {wanted!r}"
                                f" (it has {', '.join(names)}): fix `container`")
            return wanted
        if len(containers) == 1:
            return names[0]
        ours = [c["name"] for c in containers if self._runs_app(c)]
        if len(ours) == 1:
            return ours[0]
        which = (f"{' and '.join(ours)} all run" if ours else "none of them runs")
        raise UserError(f"target {self.name}: {self.workload} has several containers"
                        f" ({', '.join(names)}) and {which} {self.app.image}: set `container` to one of them")

    def _runs_app(self, container: dict[str, Any]) -> bool:
        """Whether a container's image is in the app's repository (normalised like references)."""
        try:
            return parse(container.get("image") or "").name == self.app.image
        except ValueError:
            return False  # not a reference rollout could have written: not ours

    def _init_container_warning(self, deployment: dict[str, Any], container: str) -> str | None:
        """A warning when init containers run the app's repository: rollout moves only `container`."""
        init = [c for c in deployment["spec"]["template"]["spec"].get("initContainers") or [] if self._runs_app(c)]
        if not init:
            return None
        images = ", ".join(f"{_shown_name(c.get('name'))} ({c['image']})" for c in init)  # _runs_app parsed the image
        return (f"target {self.name}: init container {images} of {self.workload} also runs"
                f" {self.app.image}; rollout moves only container {container}, so the init container keeps its image")

    def _selector(self, deployment: dict[str, Any]) -> str:
        labels = deployment["spec"]["selector"].get("matchLabels", {})
        return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))

    def _pods(self, selector: str) -> list[dict[str, Any]]:
        _, core = self.apis
        return self._call("list pods", core.list_namespaced_pod, self.namespace,
                          label_selector=selector).get("items", [])

    def _pod_digests(self, deployment: dict[str, Any], container: str) -> list[str | None]:
        """The digest each current pod's `container` runs (from its imageID), None where unknown."""
        digests = []
        for pod in self._current_pods(deployment):
            for status in pod.get("status", {}).get("containerStatuses") or []:
                if status["name"] == container:
                    digests.append(_digest_in(self.name, status.get("imageID") or "", f"pod {pod['metadata']['name']}'s imageID"))
        return digests

    def _replica_sets(self, deployment: dict[str, Any]) -> list[dict[str, Any]]:
        """The ReplicaSets this Deployment controls (ownerReferences by uid, as the controller sets them)."""
        apps, _ = self.apis
        sets = self._call("list replicasets", apps.list_namespaced_replica_set, self.namespace,
                          label_selector=self._selector(deployment)).get("items", [])
        return [rs for rs in sets if deployment["metadata"].get("uid") in _owner_uids(rs)]

    def _current_pods(self, deployment: dict[str, Any]) -> list[dict[str, Any]]:
        """The pods that make up the workload now: owned by one of its ReplicaSets that is meant
        to run pods (spec.replicas > 0; StatefulSets and DaemonSets: by the workload itself, at or
        above a StatefulSet's partition), and neither terminating nor finished. Terminating pods
        linger for their grace period and evicted or failed pods stay listed (status.phase Failed)
        on a real cluster; counting them would report drift right after a healthy deploy."""
        if self.workload.kind != "deployment":
            return [pod for pod in self._pods(self._selector(deployment)) if self.workload.owns(deployment, pod)
                    and _counts(pod) and self.workload.counts_for_status(deployment, pod)]
        live = {rs["metadata"]["uid"] for rs in self._replica_sets(deployment) if rs["spec"].get("replicas", 0) > 0}
        return [pod for pod in self._pods(self._selector(deployment)) if _owner_uids(pod) & live and _counts(pod)]

    def _restart_counts(self, deployment: dict[str, Any], container: str) -> dict[str, int]:
        """restartCount of `container` per pod uid, as it is now (the restart baseline)."""
        counts = {}
        for pod in self._pods(self._selector(deployment)):
            for status in pod.get("status", {}).get("containerStatuses") or []:
                if status.get("name") == container:
                    counts[pod["metadata"].get("uid")] = status.get("restartCount", 0)
        return counts

    def _new_replica_set(self, deployment: dict[str, Any]) -> dict[str, Any] | None:
        """The ReplicaSet whose pod template is the Deployment's current one (the newest revision)."""
        image = _container(deployment, self._container or self._pick_container(deployment))["image"]
        matching = [rs for rs in self._replica_sets(deployment)
                    if image in [c["image"] for c in rs["spec"]["template"]["spec"]["containers"]]]
        revision = lambda rs: int(rs["metadata"].get("annotations", {}).get("deployment.kubernetes.io/revision", 0))
        return max(matching, key=revision) if matching else None

    def _new_pods(self, deployment: dict[str, Any]) -> list[dict[str, Any]]:
        """The new ReplicaSet's pods that count (see _current_pods); StatefulSets and DaemonSets:
        their pods that count and whose container runs the template's image."""
        if self.workload.kind != "deployment":
            image = _container(deployment, self._container or self._pick_container(deployment))["image"]
            return [pod for pod in self._current_pods(deployment)
                    if image in [c.get("image") for c in pod.get("spec", {}).get("containers") or []]]
        new = self._new_replica_set(deployment)
        if new is None:
            return []
        template_hash = new["metadata"].get("labels", {}).get("pod-template-hash")
        selector = self._selector(deployment) + (f",pod-template-hash={template_hash}" if template_hash else "")
        uid = new["metadata"]["uid"]
        return [pod for pod in self._pods(selector) if uid in _owner_uids(pod) and _counts(pod)]


class _Conflict(Exception):
    pass


class RequestNotSent(TargetUnreachable):
    """The API server could not be reached at all (no connection made): whatever the request was,
    it did not reach the server, so it changed nothing."""


class ApiRefusal(TargetUnreachable):
    """The API server answered with a refusal (a 4xx but 404 and 409): nothing was written.

    `explanation` is the server's own message from the Status body (e.g. `deployments.apps "web"
    is forbidden: User "ci" cannot patch resource "deployments" ...`); as an error on a read it
    is exit 5 like any target we cannot use.
    """

    def __init__(self, message: str, status: int, explanation: str) -> None:
        super().__init__(message)
        self.status = status
        self.explanation = explanation


class WorkloadWatch:
    """What `kubectl rollout status` checks for the workload's kind, plus fast failure on pods that will not heal."""

    def __init__(self, target: KubernetesTarget, release: Release) -> None:
        self.target = target
        self.release = release
        self._changed = threading.Event()
        self._stop = threading.Event()
        self._pull_backed_off: set[tuple[str, str]] = set()  # (pod uid, container) seen in ImagePullBackOff
        self._responses: dict[str, Any] = {}  # open watch streams, closed by close()
        # close() and a thread opening a new stream take turns: a stream opened after close()
        # shut the others down would otherwise keep its thread blocked for a whole watch period.
        self._streams_lock = threading.Lock()
        deployment = target._read()
        # Restarts count from the rollout's start (apply read them just before its PATCH): pods
        # that keep running across this rollout (an idempotent re-run, a revert to a ReplicaSet
        # whose pods survived) bring weeks of restarts with them, and a restart between the PATCH
        # and this watch is this release's. Without an apply (nothing else builds a watch today),
        # counting starts now.
        baseline = target._restarts_before
        if baseline is None:
            baseline = target._restart_counts(deployment, target._container or target._pick_container(deployment))
        self._restarts_at_start = dict(baseline)
        self._threads = [
            threading.Thread(target=self._follow, args=(kind, selector), daemon=True, name=f"watch-{kind}")
            for kind, selector in ((target.workload.plural, {"field_selector": f"metadata.name={target.workload.name}"}),
                                   ("pods", {"label_selector": target._selector(deployment)}))
        ]
        for thread in self._threads:
            thread.start()

    def _follow(self, kind: str, selector: dict[str, str]) -> None:
        apps, core = self.target.apis
        lister = core.list_namespaced_pod if kind == "pods" else self.target.workload.method(apps, "list")
        resource_version = None
        while not self._stop.is_set():
            try:
                if resource_version is None:
                    resource_version = json.loads(lister(self.target.namespace, _request_timeout=30, _preload_content=False,
                                                       **selector).data)[
                        "metadata"].get("resourceVersion")
                response = lister(self.target.namespace, watch=True, resource_version=resource_version,
                                  timeout_seconds=WATCH_SECONDS, allow_watch_bookmarks=True,
                                  _request_timeout=WATCH_SECONDS + 10, _preload_content=False, **selector)
                with self._streams_lock:
                    if self._stop.is_set():
                        response.close()  # nobody reads it yet: closing does not wait
                        break
                    self._responses[kind] = response
                for line in response:
                    if self._stop.is_set():
                        break
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event.get("type") == "ERROR":
                        resource_version = None  # 410 Gone: list again
                        break
                    resource_version = event["object"]["metadata"].get("resourceVersion", resource_version)
                    if event.get("type") != "BOOKMARK":
                        self._changed.set()
                response.release_conn()
            except Exception:  # noqa: BLE001 - a broken watch falls back to polling at `interval`
                resource_version = None
                self._stop.wait(1.0)

    def wait(self, seconds: float) -> None:
        """Sleep up to `seconds`, returning early when the workload or one of its pods changed."""
        self._changed.wait(seconds)
        self._changed.clear()

    def observe(self) -> Observation:
        """Ready when the rollout is complete as `kubectl rollout status` judges the workload's kind
        (Workload.progress, after kubectl/pkg/polymorphichelpers/rollout_status.go: Deployments
        observed, updated, available, no old replicas; StatefulSets ready, updatedReplicas up to
        the partition; DaemonSets updatedNumberScheduled and numberAvailable); failed on a pod
        that will not heal (crash loop, restarts beyond max_restarts counted from the rollout's
        start, pull errors by the pull rule) or on a Deployment's ProgressDeadlineExceeded.
        Raises what reading the workload raises (TargetUnreachable)."""
        target = self.target
        deployment = target._read()
        progress = target.workload.progress(deployment, target._generation or 0)
        if progress.failure:
            return Observation(False, progress.failure)
        if not target.workload.observed(deployment, target._generation or 0):
            return Observation(False, detail=progress.detail)
        failure = self._pod_failure(deployment)
        if failure:
            return Observation(False, failure)
        return Observation(progress.done, detail=progress.detail)

    def _pod_failure(self, deployment: dict[str, Any]) -> str | None:
        container = self.target._container or self.target._pick_container(deployment)
        for pod in self.target._new_pods(deployment):
            for status in pod.get("status", {}).get("containerStatuses") or []:
                if status.get("name") != container:
                    continue
                waiting_failure = self._waiting_failure(pod, status)
                if waiting_failure:
                    return waiting_failure
                name = pod["metadata"]["name"]
                restarts = status.get("restartCount", 0) - self._restarts_at_start.get(pod["metadata"].get("uid"), 0)
                if restarts >= self.target.max_restarts:
                    return f"pod {name} restarted {restarts} times since the rollout started"
        return None

    def _waiting_failure(self, pod: dict[str, Any], status: dict[str, Any]) -> str | None:
        """A container waiting for a reason that waiting will not heal (FAST_FAIL_REASONS), or a
        pull that failed again after the kubelet's back-off (see PULL_ERROR); None otherwise."""
        waiting = (status.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        message = f": {waiting['message']}" if waiting.get("message") else ""
        name = pod["metadata"]["name"]
        if reason in FAST_FAIL_REASONS:
            return f"pod {name} is in {reason}{message}"[:300]
        key = (pod["metadata"].get("uid") or name, status.get("name") or "")
        if reason == PULL_BACK_OFF:
            self._pull_backed_off.add(key)
        elif reason == PULL_ERROR and key in self._pull_backed_off:
            return f"pod {name} failed to pull its image again after the kubelet's back-off ({PULL_ERROR}){message}"[:300]
        return None

    def close(self) -> None:
        """Stop the watch streams and their threads; safe to call more than once."""
        with self._streams_lock:
            self._stop.set()
            responses = list(self._responses.values())
        self._changed.set()
        for response in responses:
            # Shut the socket down rather than close the response: close() waits for the watch
            # thread's blocked read, i.e. for the next event (a crash-looping pod's next restart,
            # 10 s away), and the verdict would wait with it. The thread sees EOF now and ends.
            sock = getattr(getattr(response, "connection", None), "sock", None)
            try:
                if sock is not None:
                    sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed: its thread has ended


_owner_uids = owner_uids


def _counts(pod: dict[str, Any]) -> bool:
    """Not terminating (deletionTimestamp) and not finished (phase Failed, e.g. evicted, or Succeeded)."""
    return not pod["metadata"].get("deletionTimestamp") and pod.get("status", {}).get("phase") not in ("Failed", "Succeeded")


def kubeconfig_file(explicit: str | None) -> str | None:
    """The kubeconfig kubectl would read: `explicit` (the `kubeconfig` setting, `--kubeconfig`),
    else $KUBECONFIG, else ~/.kube/config when it exists (each with ~ expanded); None means the
    in-cluster service account (rest.InClusterConfig, as client-go's loader falls back to)."""
    chosen = explicit or os.environ.get("KUBECONFIG")
    if chosen:
        return os.path.expanduser(chosen)
    default = Path(os.path.expanduser("~/.kube/config"))
    return str(default) if default.exists() else None


def new_api_client(kubeconfig: str | None, context: str | None) -> Any:
    """A kubernetes.client.ApiClient that connects as kubectl would: the kubeconfig
    `kubeconfig_file(kubeconfig)` with `context` (None: its current context), or the in-cluster
    service account; rollout's proxy rule (never loopback, NO_PROXY as Go reads it, the
    kubeconfig's proxy-url first); one urllib3 retry (connection failures only for writes).
    The one factory for every Kubernetes client rollout makes (the target, `rollout init`).

    Raises UserError (exit 2) "cannot load Kubernetes config FILE: WHY" when it cannot be loaded.
    """
    from kubernetes import client, config

    config_file = kubeconfig_file(kubeconfig)
    settings = client.Configuration()
    try:
        if config_file:
            config.load_kube_config(config_file=config_file, context=context, client_configuration=settings)
        else:
            config.load_incluster_config(client_configuration=settings)
    except Exception as exc:  # noqa: BLE001 - ConfigException, missing files, bad YAML
        source = config_file or "(the in-cluster service account)"
        raise UserError(f"cannot load Kubernetes config {source}: {one_line(exc, 200)}") from None
    _route_through_proxy_as_kubectl_does(settings)
    settings.retries = 1
    # The connection pool (and its proxy) is made here, from the settings as they are now.
    return client.ApiClient(configuration=settings)


def _never_sent(exc: BaseException) -> bool:
    """Whether a transport failure happened before any connection to the API server (or its proxy)
    was made, so the request cannot have reached it: urllib3's ConnectTimeoutError, which
    NewConnectionError and NameResolutionError subclass (urllib3 2.x exceptions.py), also as the
    reason of MaxRetryError or the original error of a ProxyError."""
    from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, ProxyError

    reason: Any = exc.reason if isinstance(exc, MaxRetryError) else exc
    if isinstance(reason, ProxyError):
        reason = reason.original_error
    return isinstance(reason, ConnectTimeoutError)


def _route_through_proxy_as_kubectl_does(settings: Any) -> None:
    """Apply rollout's proxy rule (rollout.proxies: Go's httpproxy, which kubectl follows) to the
    client's settings, unless the kubeconfig names its own `proxy-url` (kubectl honours that first).

    The client reads HTTPS_PROXY itself, by urllib's rule: no exception for loopback, so a dead
    proxy would cut rollout off from a cluster on 127.0.0.1 that kubectl reaches.
    """
    from rollout.proxies import proxies_for

    if not getattr(settings, "_proxy_from_env", settings.proxy is None):
        return  # proxy-url from the kubeconfig
    proxy = next(iter(proxies_for(settings.host).values()), None)
    settings.proxy = proxy  # also stops the client re-reading the environment when the host changes
    settings.no_proxy = None  # decided above, by our rule


def _shown_name(name: object) -> str:
    """A container name the API server answered, for a message: as it is when it is a DNS-1123
    label (what a real API server stores), else a placeholder, so an answer from something that is
    no real API server cannot put terminal escapes or extra lines into rollout's output."""
    if isinstance(name, str) and DNS_1123_LABEL.fullmatch(name):
        return name
    return "<a container whose name is no DNS-1123 label>"


def _checked_image(target: str, image: object, what: str) -> str:
    """An image the API server answered with, checked before it reaches the ledger or a message."""
    return checked_image(image, f"target {target}: {what}", TargetUnreachable)


def _digest_in(target: str, image: str, what: str) -> str | None:
    """The digest after "@" in a pod template image or an imageID (None when there is none), checked:
    an API server's answer is input too (an imageID may be any text a runtime reports)."""
    if "@" not in image:
        return None
    return checked_digest(image.rsplit("@", 1)[1], f"target {target}: {what}", TargetUnreachable)


def _container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def _status_message(exc: Any) -> str:
    """The `message` of the Status object an API error carries (apimachinery metav1.Status), one line."""
    try:
        body = json.loads(exc.body)
    except (TypeError, ValueError):
        return ""
    message = body.get("message") if isinstance(body, dict) else None
    return one_line(message) if isinstance(message, str) else ""