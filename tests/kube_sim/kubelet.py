"""The kubelet: decides each pod's fate and reports it in the pod's status.

One thread per pod runs the container state machine of a real kubelet (pull, start,
watch, restart with back-off) against a runtime: `TableRuntime` for fast unit tests,
`DockerRuntime` for the local Docker engine. The state machine is shared so both report
the same status shapes (CrashLoopBackOff, ErrImagePull, ImagePullBackOff, restartCount).
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from .controllers import get_condition, record_event
from .deletion import DEFAULT_GRACE_SECONDS, delete_object
from .errors import ApiError
from .resources import PODS
from .store import Obj, Store, now_rfc3339

NODE_NAME = "kube-sim"
POLL_INTERVAL = 0.2
TERMINAL_PHASES = ("Failed", "Succeeded")
# Exit code of a container killed with SIGKILL when its grace period ran out (128 + 9).
KILLED_EXIT_CODE = 137


def iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def normalized_repository(repository: str) -> str:
    """A repository named as containerd reports it in imageID: Docker Hub's short names in
    full (nginx -> docker.io/library/nginx, user/web -> docker.io/user/web), others as they are
    (distribution/reference's ParseNormalizedNamed)."""
    first = repository.split("/", 1)[0]
    if "/" not in repository:
        return f"docker.io/library/{repository}"
    if "." in first or ":" in first or first == "localhost":
        return repository
    return f"docker.io/{repository}"


@dataclass
class PullResult:
    ok: bool
    image_id: str = ""
    message: str = ""
    # The waiting reason a failure shows: ErrImagePull, or ErrImageNeverPull when the policy
    # is Never and the image is not on the node (no pull was tried, so no back-off follows).
    reason: str = "ErrImagePull"


def never_pull_message(image: str) -> str:
    """pkg/kubelet/images/image_manager.go EnsureImageExists, pull policy Never and no image."""
    return f'Container image "{image}" is not present with pull policy of Never'


@dataclass
class Probe:
    """What the runtime says about a started container."""

    running: bool
    health: str | None = None  # None: no health check; else starting / healthy / unhealthy
    exit_code: int = 0
    finished_at: float = 0.0


class Runtime(Protocol):
    def pull(self, image: str, policy: str) -> PullResult: ...

    def start(self, pod: Obj, container: Obj, attempt: int) -> tuple[Any, str]: ...

    def probe(self, handle: Any) -> Probe: ...

    def signal(self, handle: Any) -> None:
        """Sends the container its stop signal (SIGTERM unless the image says otherwise)."""

    def logs(self, handle: Any) -> str:
        """Everything the container wrote to stdout and stderr so far."""

    def remove(self, handle: Any) -> None:
        """Kills (SIGKILL) and removes the container."""

    def cleanup(self) -> None: ...


@dataclass
class BackOff:
    base: float = 10.0
    cap: float = 300.0

    def delay(self, failures: int) -> float:
        """Delay before retry number `failures` (1-based): base, 2*base, ... capped."""
        return min(self.cap, self.base * 2 ** max(0, failures - 1))


@dataclass
class ContainerRun:
    spec: Obj
    phase: str = "pull"  # pull, start, running, backoff, done
    handle: Any = None
    container_id: str = ""
    image_id: str = ""
    started_at: float = 0.0
    exits: int = 0
    # Containers created so far: restartCount is this minus one. kuberuntime_container.go
    # (startContainer) gives a new container its restart count when it is created, so the
    # count rises when the next container starts, not when one exits.
    starts: int = 0
    # Logs of the last two stopped containers by container ID (`kubectl logs` and --previous):
    # the kubelet keeps the previous container's log when it starts the next one.
    stopped_logs: dict[str, str] = field(default_factory=dict)
    dead: Any = None  # the last container that died, kept until the next one dies
    pull_failures: int = 0
    next_attempt: float = 0.0
    pull_error_until: float = 0.0
    pull_message: str = ""
    state: Obj = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: Obj = field(default_factory=dict)
    ready: bool = False

    @property
    def name(self) -> str:
        return self.spec["name"]


class PodWorker:
    """Drives one pod's containers until the pod is deleted."""

    def __init__(self, store: Store, runtime: Runtime, backoff: BackOff, pod: Obj) -> None:
        self.store = store
        self.runtime = runtime
        self.backoff = backoff
        self.namespace = pod["metadata"]["namespace"]
        self.name = pod["metadata"]["name"]
        self.uid = pod["metadata"]["uid"]
        self.pod = pod
        self.containers = [ContainerRun(copy.deepcopy(c)) for c in pod["spec"].get("containers") or []]
        self.stop = threading.Event()
        self.started = time.time()
        self.thread = threading.Thread(target=self._loop, name=f"pod-{self.name}", daemon=True)

    def _event(self, event_type: str, reason: str, message: str, component: str = "kubelet") -> None:
        try:
            with self.store.lock:
                record_event(self.store, PODS, self.pod, event_type, reason, message, component)
        except ApiError:
            pass

    def _loop(self) -> None:
        self._schedule()
        present = True
        while not self.stop.is_set() and not self._ending():
            for run in self.containers:
                if self.stop.is_set():
                    break
                try:
                    self._step(run)
                except Exception as error:  # runtime trouble must not kill the worker silently
                    print(f"kube-sim kubelet: pod {self.name}: {error!r}", flush=True)
            present = self._report()
            if not present:
                break
            self.stop.wait(POLL_INTERVAL)
        if present and not self.stop.is_set():
            try:
                self._terminate()
            except Exception as error:  # noqa: BLE001 - the containers are removed below all the same
                print(f"kube-sim kubelet: pod {self.name}: terminating: {error!r}", flush=True)
        for run in self.containers:  # the pod is gone (force-deleted) or the kubelet stops: no grace
            self._remove_container(run)
            if run.dead is not None:
                self.runtime.remove(run.dead)
                run.dead = None

    # -- ending: deletion, eviction --

    def _ending(self) -> bool:
        """The pod was deleted (deletionTimestamp), or its phase in the API is terminal: an
        eviction, or its containers finished for good. kubelet_pods.go (generateAPIPodStatus):
        a terminal phase in the API server is never left again."""
        phase = (self.pod.get("status") or {}).get("phase")
        return bool(self.pod["metadata"].get("deletionTimestamp")) or phase in TERMINAL_PHASES

    def _terminate(self) -> None:
        """Stops the containers within the grace period, reports the pod's terminal phase, and,
        when the pod was deleted, deletes it for good (status_manager.go: with grace period 0
        once its containers stopped; finalizers still hold it until they are removed)."""
        meta, spec = self.pod["metadata"], self.pod.get("spec") or {}
        deleting = bool(meta.get("deletionTimestamp"))
        grace = meta.get("deletionGracePeriodSeconds") if deleting else None
        if grace is None:
            configured = spec.get("terminationGracePeriodSeconds")
            grace = DEFAULT_GRACE_SECONDS if configured is None else configured
        self._stop_containers(float(grace))
        api_status = self.pod.get("status") or {}
        if api_status.get("phase") in TERMINAL_PHASES:
            ending = {k: api_status[k] for k in ("phase", "reason", "message") if api_status.get(k)}
        else:
            # Since 1.27 the kubelet puts a deleted pod in a terminal phase before it goes
            # (kubelet_pods.go getPhase, podIsTerminal): Succeeded only if every container exited 0.
            failed = any(run.state.get("terminated", {}).get("exitCode", 0) != 0 for run in self.containers)
            ending = {"phase": "Failed" if failed else "Succeeded"}
        if not self._report(ending) or not deleting:
            return
        with self.store.lock:
            current = self.store.find(PODS, self.namespace, self.name)
            if current is not None and current["metadata"]["uid"] == self.uid:
                delete_object(self.store, PODS, current, requested_grace=0)

    def _stop_containers(self, grace: float) -> None:
        """kuberuntime_container.go (killContainer): the stop signal, then SIGKILL when the grace
        period is over. Containers stop in parallel, each within the same period."""
        running = [run for run in self.containers if run.handle is not None]
        for run in running:
            try:
                self.runtime.signal(run.handle)
            except Exception:  # noqa: BLE001 - already gone: the probe below says so
                pass
        deadline = time.monotonic() + grace
        while running and not self.stop.is_set() and time.monotonic() < deadline:
            for run in list(running):
                probe = self.runtime.probe(run.handle)
                if not probe.running:
                    self._stopped(run, probe)
                    running.remove(run)
            if running:
                self.stop.wait(POLL_INTERVAL)
        for run in running:
            self._stopped(run, Probe(False, exit_code=KILLED_EXIT_CODE, finished_at=time.time()))
        for run in self.containers:
            run.phase, run.ready = "done", False

    def _stopped(self, run: ContainerRun, probe: Probe) -> None:
        terminated: Obj = {
            "exitCode": probe.exit_code,
            "reason": "Completed" if probe.exit_code == 0 else "Error",
            "startedAt": iso(run.started_at),
            "finishedAt": iso(probe.finished_at or time.time()),
        }
        if run.container_id:
            terminated["containerID"] = run.container_id
        self._remove_container(run)
        run.state = {"terminated": terminated}

    def _remove_container(self, run: ContainerRun, keep_dead: bool = False) -> None:
        """Keeps the container's log (for `kubectl logs`) and removes the container; with
        keep_dead, the container that died stays until the next one dies (the kubelet's container
        GC keeps one dead container per container: MaxPerPodContainer, kuberuntime_gc.go)."""
        if run.handle is None:
            return
        try:
            run.stopped_logs[run.container_id] = self.runtime.logs(run.handle)
        except Exception:  # noqa: BLE001 - a container the engine lost has no logs to keep
            run.stopped_logs[run.container_id] = ""
        for old in list(run.stopped_logs)[:-2]:
            del run.stopped_logs[old]
        if run.dead is not None:
            self.runtime.remove(run.dead)
            run.dead = None
        if keep_dead:
            run.dead = run.handle
        else:
            self.runtime.remove(run.handle)
        run.handle = None

    def logs(self, container: str, previous: bool) -> str:
        """The container's log as the kubelet serves it (kubelet_pods.go, validateContainerLogStatus);
        raises ApiError 400 with the kubelet's words when there is none."""
        run = next((r for r in self.containers if r.name == container), None)
        if run is None:
            raise ApiError.bad_request(f'container "{container}" in pod "{self.name}" is not available')
        state, last = run.state, (run.last_state or {}).get("terminated") or {}
        if previous:
            if not last.get("containerID"):
                raise ApiError.bad_request(f'previous terminated container "{container}" in pod "{self.name}" not found')
            return run.stopped_logs.get(last["containerID"], "")
        handle = run.handle
        if "running" in state and handle is not None:
            return self.runtime.logs(handle)
        terminated = state.get("terminated") or last
        if terminated.get("containerID"):
            return run.stopped_logs.get(terminated["containerID"], "")
        reason = (state.get("waiting") or {}).get("reason", "")
        detail = {"ErrImagePull": "image can't be pulled", "ImagePullBackOff": "trying and failing to pull image"}.get(reason, reason)
        raise ApiError.bad_request(f'container "{container}" in pod "{self.name}" is waiting to start: {detail}')

    def _schedule(self) -> None:
        # The scheduler binds a pod to the node its required affinity names (a DaemonSet's pods,
        # daemon/util ReplaceDaemonSetPodNodeNameNodeAffinity), else to the first node; this one
        # kubelet serves every node.
        from .workloads import affinity_node

        node = self.pod["spec"].get("nodeName") or affinity_node(self.pod) or NODE_NAME

        def bind(pod: Obj) -> None:
            pod["spec"]["nodeName"] = node
            status = pod.setdefault("status", {})
            status["conditions"] = [self._condition("PodScheduled", True, None)]

        try:
            self.pod = self.store.mutate(PODS, self.namespace, self.name, bind)
        except ApiError:
            self.stop.set()
            return
        self._event("Normal", "Scheduled", f"Successfully assigned {self.namespace}/{self.name} to {node}", "default-scheduler")

    # -- container state machine --

    def _step(self, run: ContainerRun) -> None:
        now = time.time()
        image = run.spec.get("image", "")
        if run.phase == "pull":
            if now < run.next_attempt:
                if now >= run.pull_error_until:
                    run.state = {"waiting": {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{image}"'}}
                return
            policy = run.spec.get("imagePullPolicy", "IfNotPresent")
            if run.pull_failures == 0 and policy != "Never":
                self._event("Normal", "Pulling", f'Pulling image "{image}"')
            result = self.runtime.pull(image, policy)
            if not result.ok and result.reason == "ErrImageNeverPull":
                # image_manager.go returns ErrImageNeverPull without touching the pull back-off:
                # the pod stays in that state and each later sync looks for the image again.
                run.next_attempt = run.pull_error_until = time.time() + self.backoff.base
                run.state = {"waiting": {"reason": result.reason, "message": result.message}}
                self._event("Warning", "ErrImageNeverPull", result.message)
                return
            if not result.ok:
                run.pull_failures += 1
                delay = self.backoff.delay(run.pull_failures)
                run.next_attempt = time.time() + delay
                run.pull_error_until = time.time() + min(1.0, delay / 2)
                run.state = {"waiting": {"reason": "ErrImagePull", "message": result.message}}
                self._event("Warning", "Failed", f'Failed to pull image "{image}": {result.message}')
                return
            run.image_id = result.image_id
            run.phase = "start"
            self._event("Normal", "Pulled", f'Successfully pulled image "{image}"')
        if run.phase == "backoff":
            if now < run.next_attempt:
                return
            run.phase = "start"
        if run.phase == "start":
            try:
                run.handle, run.container_id = self.runtime.start(self.pod, run.spec, run.exits)
            except Exception as error:  # e.g. the engine refused: a start error is an exit
                message = str(error)
                self._event("Warning", "Failed", f"Error: {message}")
                self._exited(run, Probe(False, None, 128, time.time()), reason="StartError", message=message)
                return
            run.started_at = time.time()
            run.starts += 1
            run.phase = "running"
            run.state = {"running": {"startedAt": iso(run.started_at)}}
            self._event("Normal", "Created", f"Created container {run.name}")
            self._event("Normal", "Started", f"Started container {run.name}")
        if run.phase == "running":
            probe = self.runtime.probe(run.handle)
            if probe.running:
                run.ready = probe.health in (None, "healthy")
                return
            self._exited(run, probe)

    def _exited(self, run: ContainerRun, probe: Probe, reason: str | None = None, message: str | None = None) -> None:
        run.ready = False
        run.exits += 1
        terminated: Obj = {
            "exitCode": probe.exit_code,
            "reason": reason or ("Completed" if probe.exit_code == 0 else "Error"),
            "startedAt": iso(run.started_at or probe.finished_at),
            "finishedAt": iso(probe.finished_at or time.time()),
        }
        if message:
            terminated["message"] = message
        if run.container_id:
            terminated["containerID"] = run.container_id
        self._remove_container(run, keep_dead=True)
        policy = self.pod["spec"].get("restartPolicy", "Always")
        if policy == "Never" or (policy == "OnFailure" and probe.exit_code == 0):
            run.phase = "done"
            run.state = {"terminated": terminated}
            return
        run.last_state = {"terminated": terminated}
        # The first restart is immediate; then 10 s, 20 s, ... like the kubelet's back-off.
        delay = 0.0 if run.exits == 1 else self.backoff.delay(run.exits - 1)
        run.next_attempt = time.time() + delay
        run.phase = "backoff"
        if delay > 0:
            pod_ref = f"{self.name}_{self.namespace}({self.uid})"
            run.state = {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off {_seconds(delay)} restarting failed container={run.name} pod={pod_ref}",
                }
            }
            self._event("Warning", "BackOff", "Back-off restarting failed container")
        else:
            run.state = {"terminated": terminated}

    # -- status --

    def _condition(self, kind: str, ok: bool, reason: str | None, message: str | None = None) -> Obj:
        previous = get_condition(self.pod.get("status") or {}, kind)
        status = "True" if ok else "False"
        transition = previous["lastTransitionTime"] if previous and previous["status"] == status else now_rfc3339()
        condition: Obj = {"type": kind, "status": status, "lastProbeTime": None, "lastTransitionTime": transition}
        if reason:
            condition["reason"] = reason
        if message:
            condition["message"] = message
        return condition

    def _container_status(self, run: ContainerRun) -> Obj:
        status: Obj = {
            "name": run.name,
            "state": run.state,
            "lastState": run.last_state,
            "ready": run.ready,
            "restartCount": max(0, run.starts - 1),
            "image": run.spec.get("image", ""),
            "imageID": run.image_id,
            "started": run.phase == "running",
        }
        if run.container_id:
            status["containerID"] = run.container_id
        return status

    def _pod_phase(self) -> str:
        if self.containers and all(run.phase == "done" for run in self.containers):
            failed = any(run.state.get("terminated", {}).get("exitCode", 0) != 0 for run in self.containers)
            return "Failed" if failed else "Succeeded"
        ever_ran = any(run.phase in ("running", "backoff", "done") for run in self.containers)
        return "Running" if ever_ran else "Pending"

    def _report(self, ending: Obj | None = None) -> bool:
        """Writes the pod status (with `ending`: the terminal phase, reason, message); False once
        the pod is gone."""
        unready = [run.name for run in self.containers if not run.ready]
        all_ready = not unready
        not_ready_message = f"containers with unready status: [{' '.join(unready)}]"
        conditions = [
            self._condition("PodReadyToStartContainers", True, None),
            self._condition("Initialized", True, None),
            self._condition("Ready", all_ready, None if all_ready else "ContainersNotReady", None if all_ready else not_ready_message),
            self._condition("ContainersReady", all_ready, None if all_ready else "ContainersNotReady", None if all_ready else not_ready_message),
            self._condition("PodScheduled", True, None),
        ]
        status: Obj = {
            **(ending or {"phase": self._pod_phase()}),
            "conditions": conditions,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "startTime": iso(self.started),
            "containerStatuses": [self._container_status(run) for run in self.containers],
            "qosClass": (self.pod.get("status") or {}).get("qosClass", "BestEffort"),
        }
        with self.store.lock:
            current = self.store.find(PODS, self.namespace, self.name)
            if current is None or current["metadata"]["uid"] != self.uid:
                return False
            if ending is None and (current.get("status") or {}).get("phase") in TERMINAL_PHASES:
                # Put in a terminal phase by someone else (an eviction): never left again.
                self.pod = current
                return True
            if current.get("status") != status:
                current["status"] = status
                current = self.store.replace(PODS, current, expected_rv=None)
            self.pod = current
        return True


def _seconds(delay: float) -> str:
    """Go's Duration formatting for whole or fractional seconds: 10s, 2m40s, 500ms."""
    if delay < 1:
        return f"{int(delay * 1000)}ms"
    whole = int(delay)
    if whole < 60:
        return f"{whole}s" if whole == delay else f"{delay:g}s"
    minutes, seconds = divmod(whole, 60)
    return f"{minutes}m{seconds}s"


class Kubelet:
    """Starts a PodWorker for every new pod and stops it when the pod goes away."""

    def __init__(self, store: Store, runtime: Runtime, backoff: BackOff) -> None:
        self.store = store
        self.runtime = runtime
        self.backoff = backoff
        self.workers: dict[str, PodWorker] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="kubelet", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _loop(self) -> None:
        seen = -1
        while not self.stop.is_set():
            with self.store.lock:
                if self.store.resource_version == seen:
                    self.store.changed.wait(1.0)
                seen = self.store.resource_version
                pods, _ = self.store.list(PODS, None)
            alive = {p["metadata"]["uid"] for p in pods}
            for pod in pods:
                uid = pod["metadata"]["uid"]
                if (uid not in self.workers and pod["status"].get("phase") not in TERMINAL_PHASES
                        and not pod["metadata"].get("deletionTimestamp")):
                    worker = PodWorker(self.store, self.runtime, self.backoff, pod)
                    self.workers[uid] = worker
                    worker.thread.start()
            for uid in list(self.workers):
                if uid not in alive:
                    self.workers.pop(uid).stop.set()

    def logs(self, namespace: str, name: str, container: str, previous: bool) -> str:
        """The kubelet's log endpoint for one container of one pod; ApiError 400 when it has none."""
        worker = next((w for w in list(self.workers.values()) if (w.namespace, w.name) == (namespace, name)), None)
        if worker is None:
            raise ApiError.bad_request(f'pod "{name}" cannot be found - no logs available')
        return worker.logs(container, previous)

    def shutdown(self) -> None:
        self.stop.set()
        with self.store.lock:
            self.store.changed.notify_all()
        for worker in self.workers.values():
            worker.stop.set()
        for worker in self.workers.values():
            worker.thread.join(timeout=15)
        self.runtime.cleanup()


# --- the table runtime --------------------------------------------------------------

BEHAVIOURS = ("ready", "crashloop", "pull-error", "pull-transient", "never-ready", "unhealthy")


@dataclass(frozen=True)
class TableRule:
    """An image reference containing `match` behaves as `behaviour`.

    ready: running at once, ready after `delay` s; crashloop: exits with `exit_code`
    after `delay` s, every time; pull-error: the pull fails; pull-transient: the first pull
    of the reference fails (a registry hiccup), the kubelet's retry after its back-off
    succeeds, then as ready; never-ready: running, never ready; unhealthy: ready, then not
    ready after `delay` s. `stop_delay`: seconds the container takes to exit after its stop
    signal (a large value: one that ignores SIGTERM and is killed when its grace period ends).
    """

    match: str
    behaviour: str
    delay: float = 0.0
    exit_code: int = 1
    stop_delay: float = 0.0


@dataclass
class TableHandle:
    rule: TableRule
    started: float
    image: str = ""
    signalled: float | None = None  # when the stop signal was sent


class TableRuntime:
    def __init__(self, rules: list[TableRule], default: TableRule) -> None:
        for rule in rules + [default]:
            if rule.behaviour not in BEHAVIOURS:
                raise ValueError(f"unknown behaviour {rule.behaviour!r}; expected one of {', '.join(BEHAVIOURS)}")
        self.rules = rules
        self.default = default
        self.counter = 0
        self.present: set[str] = set()  # references pulled before: the node's image store
        self.failed_once: set[str] = set()  # pull-transient references whose first pull failed

    def rule_for(self, image: str) -> TableRule:
        return next((rule for rule in self.rules if rule.match in image), self.default)

    def pull(self, image: str, policy: str) -> PullResult:
        if policy == "Never" and image not in self.present:
            return PullResult(False, message=never_pull_message(image), reason="ErrImageNeverPull")
        behaviour = self.rule_for(image).behaviour
        if behaviour == "pull-error":
            message = (
                f'rpc error: code = NotFound desc = failed to pull and unpack image "{image}": '
                f'failed to resolve reference "{image}": {image}: not found'
            )
            return PullResult(False, message=message)
        if behaviour == "pull-transient" and image not in self.failed_once:
            self.failed_once.add(image)
            message = (
                f'rpc error: code = Unknown desc = failed to pull and unpack image "{image}": failed to resolve '
                f'reference "{image}": unexpected status from HEAD request: 503 Service Unavailable'
            )
            return PullResult(False, message=message)
        self.present.add(image)
        if "@sha256:" in image:
            # containerd's imageID: the repository in full, then the digest (no docker-pullable://).
            repository, digest = image.split("@", 1)
            return PullResult(True, image_id=f"{normalized_repository(repository)}@{digest}")
        repository = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
        digest = hashlib.sha256(image.encode()).hexdigest()
        return PullResult(True, image_id=f"{normalized_repository(repository)}@sha256:{digest}")

    def start(self, pod: Obj, container: Obj, attempt: int) -> tuple[Any, str]:
        self.counter += 1
        container_id = hashlib.sha256(f"{pod['metadata']['uid']}/{container['name']}/{attempt}".encode()).hexdigest()
        image = container.get("image", "")
        return TableHandle(self.rule_for(image), time.time(), image), f"docker://{container_id}"

    def signal(self, handle: TableHandle) -> None:
        handle.signalled = handle.signalled or time.time()

    def logs(self, handle: TableHandle) -> str:
        lines = [f"{iso(handle.started)} {handle.image}: started ({handle.rule.behaviour})"]
        probe = self.probe(handle)
        if not probe.running:
            lines.append(f"{iso(probe.finished_at)} {handle.image}: exited with code {probe.exit_code}")
        return "".join(line + "\n" for line in lines)

    def probe(self, handle: TableHandle) -> Probe:
        elapsed = time.time() - handle.started
        rule = handle.rule
        if handle.signalled is not None and time.time() >= handle.signalled + rule.stop_delay:
            return Probe(False, exit_code=0, finished_at=handle.signalled + rule.stop_delay)  # exits on SIGTERM
        if rule.behaviour == "crashloop":
            if elapsed >= rule.delay:
                return Probe(False, exit_code=rule.exit_code, finished_at=handle.started + rule.delay)
            return Probe(True, None)
        if rule.behaviour == "never-ready":
            return Probe(True, "starting")
        if rule.behaviour == "unhealthy":
            return Probe(True, "healthy" if elapsed < rule.delay else "unhealthy")
        return Probe(True, "healthy" if elapsed >= rule.delay else "starting")

    def remove(self, handle: Any) -> None:
        pass

    def cleanup(self) -> None:
        pass


def load_table(path: str | None, cli_rules: list[str]) -> TableRuntime:
    """Rules from a JSON file ({"rules": [{"match", "behaviour", "delay", "exit_code", "stop_delay"}],
    "default": {...}}) followed by --rule MATCH=BEHAVIOUR[:DELAY[:STOP_DELAY]] options."""
    rules: list[TableRule] = []
    default = TableRule("", "ready", 0.0)
    if path:
        with open(path) as handle:
            config = json.load(handle)
        rules += [TableRule(**rule) for rule in config.get("rules", [])]
        if "default" in config:
            default = TableRule(**{"match": "", **config["default"]})
    for text in cli_rules:
        match, _, rest = text.rpartition("=")
        behaviour, _, timings = rest.partition(":")
        delay, _, stop_delay = timings.partition(":")
        rules.append(TableRule(match, behaviour, float(delay or 0), stop_delay=float(stop_delay or 0)))
    return TableRuntime(rules, default)
