"""A Deployment on the Kubernetes API simulator (tests/kube_sim) and the rollout project that
deploys to it: one place for the manifest, the rollout.toml and the CLI runs of the Kubernetes tests."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

from .cli import run_rollout
from .images import APP_IMAGE


KINDS = {"deployment": "Deployment", "statefulset": "StatefulSet", "daemonset": "DaemonSet"}


class KubeApp:
    """A Deployment (or, with `workload`, a StatefulSet or DaemonSet) `name` (unique per test)
    created from pod_spec with kubectl and waited for (`kubectl rollout status`), and a
    rollout.toml in root whose app `web` targets it.

    The workload is labelled app=<name>; replicas (none for a DaemonSet), the rollout strategy
    (`strategy`, or `updateStrategy` for the other two) and annotations are the manifest's; the
    rollout.toml's health section is timeout/interval/stable seconds.
    """

    def __init__(self, root: Path, sim: Any, pod_spec: dict[str, Any], *, prefix: str = "k", replicas: int = 1,
                 strategy: dict[str, Any] | None = None, annotations: dict[str, str] | None = None,
                 ready_within: str = "90s", workload: str = "deployment") -> None:
        self.root, self.sim, self.workload = root, sim, workload
        self.name = f"{prefix}{uuid.uuid4().hex[:8]}"
        spec: dict[str, Any] = {"replicas": replicas, "selector": {"matchLabels": {"app": self.name}},
                                "template": {"metadata": {"labels": {"app": self.name}}, "spec": pod_spec}}
        if workload == "daemonset":
            del spec["replicas"]
        if workload == "statefulset":
            spec["serviceName"] = self.name
        if strategy is not None:
            spec["strategy" if workload == "deployment" else "updateStrategy"] = strategy
        metadata: dict[str, Any] = {"name": self.name, "labels": {"app": self.name}}
        if annotations is not None:
            metadata["annotations"] = annotations
        manifest = {"apiVersion": "apps/v1", "kind": KINDS[workload], "metadata": metadata, "spec": spec}
        path = root / f"{workload}.json"
        path.write_text(json.dumps(manifest))
        self.kubectl("create", "-f", str(path), "--validate=false")
        if (strategy or {}).get("type") != "OnDelete":  # kubectl has no rollout status for OnDelete
            self.kubectl("rollout", "status", f"{workload}/{self.name}", f"--timeout={ready_within}")

    @property
    def config(self) -> Path:
        return self.root / "rollout.toml"

    def write_config(self, image: str = APP_IMAGE, *, timeout: float = 60, interval: float = 1, stable: float = 2,
                     kubeconfig: Path | None = None, extra: str = "") -> None:
        """rollout.toml: app `web` from image, one kubernetes target `cluster` on this Deployment;
        `extra` lands in the target's table (or adds tables after it)."""
        self.config.write_text(f"""
[apps.web]
image = "{image}"

[apps.web.health]
timeout = {timeout}
interval = {interval}
stable = {stable}

[[apps.web.targets]]
name = "cluster"
kind = "kubernetes"
kubeconfig = "{kubeconfig or self.sim.kubeconfig}"
{'' if self.workload == "deployment" else f'workload = "{self.workload}"'}
{self.workload} = "{self.name}"
{extra}
""")

    def kubectl(self, *args: str) -> str:
        """kubectl against the simulator; asserts it succeeded; its stdout."""
        result = self.sim.kubectl(*args)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """`rollout ARGS...` with this rollout.toml, in a bare environment (see support.cli.BARE)."""
        return run_rollout(*args, env={"ROLLOUT_CONFIG": str(self.config)}, bare=True, timeout=timeout)

    def deployment(self) -> dict[str, Any]:
        """The workload as the API server has it (a Deployment unless `workload` said otherwise)."""
        return json.loads(self.kubectl("get", self.workload, self.name, "-o", "json"))

    def images(self, kind: str = "containers") -> dict[str, str]:
        """Container name -> image of the pod template (kind: "containers" or "initContainers")."""
        return {c["name"]: c["image"] for c in self.deployment()["spec"]["template"]["spec"].get(kind) or []}

    def history(self) -> list[dict[str, Any]]:
        result = self.run("history", "--json", "-n", "100")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def status(self) -> dict[str, Any]:
        """The one target of `rollout status --json`."""
        result = self.run("status", "--json")
        assert result.returncode == 0, result.stderr
        [target] = json.loads(result.stdout)["targets"]
        return target
