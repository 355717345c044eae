"""Verification of one container: its state, woken early by the engine's event stream."""

from __future__ import annotations

import queue
import threading
from typing import Any

import docker
import docker.errors

from rollout.targets import Observation
from rollout.targets.docker.engine import EngineUnreachable, engine_call, unreachable

# Engine events that fail a release at once (moby events: container die/oom/restart/health_status).
FAILURE_EVENTS = {"die", "oom", "restart", "health_status: unhealthy"}


class DockerWatch:
    """Health of one container, woken by the engine's event stream.

    `events`: the queue failure events go to; several watches may share one (a scaled Compose
    service: rollout.targets.compose.ReplicasWatch), so one wait wakes on any of them. `label`:
    when set (a container's name), every failure this watch reports begins "LABEL: ".
    """

    def __init__(self, client: docker.DockerClient, container_id: str, not_before_ns: int,
                 where: str = "the local socket", events: "queue.Queue[str] | None" = None,
                 label: str | None = None) -> None:
        self.client = client
        self.where = where
        self.container_id = container_id
        self.not_before_ns = not_before_ns
        self.events: queue.Queue[str] = queue.Queue() if events is None else events
        self.prefix = f"{label}: " if label else ""
        self.failure: str | None = None
        self.restart_count: int | None = None
        # Replay from a little before the start, so a crash in the first instant is not missed.
        since = f"{not_before_ns // 1_000_000_000 - 2}"
        self._stream = client.events(since=since, filters={"container": container_id, "type": "container"},
                                     decode=True)
        self._thread = threading.Thread(target=self._pump, name=f"events-{container_id[:12]}", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            for event in self._stream:
                status = event.get("status") or event.get("Action") or ""
                if status in FAILURE_EVENTS and int(event.get("timeNano", 0)) >= self.not_before_ns:
                    self.events.put(self.prefix + _describe_event(status, event))
        except Exception:  # noqa: BLE001 - the stream ends when closed or when the engine goes away
            self.events.put("")

    def wait(self, seconds: float) -> None:
        """Sleep up to `seconds`, returning at once when the engine reports a failure event
        (die, oom, restart, unhealthy) of the container since it started."""
        try:
            event = self.events.get(timeout=seconds)
        except queue.Empty:
            return
        if event and self.failure is None:
            self.failure = event

    def observe(self) -> Observation:
        """The container's state now: failed on a failure event seen, a removed container, an
        unreachable engine, a restart (RestartCount rising from the first look, or restarting),
        OOM, paused, not running, or HEALTHCHECK unhealthy; ready when running and (if it has a
        HEALTHCHECK) healthy; neither while the HEALTHCHECK is starting."""
        while not self.events.empty():
            self.wait(0)
        if self.failure:
            return Observation(False, self.failure)
        look = self._look()
        return Observation(False, self.prefix + look.failed) if look.failed else look

    def _look(self) -> Observation:
        """observe() without the failure events and the label: the engine's inspect of the container."""
        try:
            attrs = engine_call(self.where, lambda: self.client.api.inspect_container(self.container_id))
        except docker.errors.NotFound:
            return Observation(False, "container was removed")
        except EngineUnreachable as exc:
            return Observation(False, unreachable(self.where, exc.reason))
        state = attrs["State"]
        restarts = attrs.get("RestartCount", 0)
        if self.restart_count is None:
            self.restart_count = restarts
        if restarts > self.restart_count or state.get("Restarting"):
            return Observation(False, f"container restarted (restart count {restarts})")
        if state.get("OOMKilled"):
            return Observation(False, "container was killed: out of memory")
        if state.get("Paused"):
            return Observation(False, "container was paused")
        if state.get("Status") != "running":
            return Observation(False, f"container exited with code {state.get('ExitCode')}")
        health = (state.get("Health") or {}).get("Status")
        if health == "unhealthy":
            return Observation(False, "HEALTHCHECK reports unhealthy")
        if health == "starting":
            return Observation(False, detail="running, HEALTHCHECK starting")
        return Observation(True, detail="running" + (", HEALTHCHECK healthy" if health else ""))

    def close(self) -> None:
        """Close the event stream (its reader thread then ends); safe to call more than once."""
        try:
            self._stream.close()
        except Exception:  # noqa: BLE001 - closing a dead stream is fine
            pass


def _describe_event(status: str, event: dict[str, Any]) -> str:
    attributes = (event.get("Actor") or {}).get("Attributes") or {}
    if status == "die":
        return f"container exited with code {attributes.get('exitCode', '?')}"
    if status == "oom":
        return "container was killed: out of memory"
    if status == "restart":
        return "container restarted"
    return "HEALTHCHECK reports unhealthy"
