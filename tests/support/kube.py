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


class KubeApp:
    """Deployment `name` (unique per test) created from pod_spec with kubectl and waited for
    (`kubectl rollout status`), and a rollout.toml in root whose app `web` targets it.

    The Deployment is labelled app=<name>; replicas, the rollout strategy and annotations are
    the manifest's; the rollout.toml's health section is timeout/interval/stable seconds.
    """

    def __init__(self, root: Path, sim: Any, pod_spec: dict[str, Any], *, prefix: str = "k", replicas: int = 1,
                 strategy: dict[str, Any] | None = None, annotations: dict[str, str] | None = None,
                 ready_within: str = "90s") -> None:
        self.root, self.sim = root, sim
        self.name = f"{prefix}{uuid.uuid4().hex[:8]}"
        spec: dict[str, Any] = {"replicas": replicas, "selector": {"matchLabels": {"app": self.name}},
                                "template": {"metadata": {"labels": {"app": self.name}}, "spec": pod_spec}}
        if strategy is not None:
            spec["strategy"] = strategy
        metadata: dict[str, Any] = {"name": self.name, "labels": {"app": self.name}}
        if annotations is not None:
            metadata["annotations"] = annotations
        manifest = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata, "spec": spec}
        path = root / "deployment.json"
        path.write_text(json.dumps(manifest))
        self.kubectl("create", "-f", str(path), "--validate=false")
        self.kubectl("rollout", "status", f"deployment/{self.name}", f"--timeout={ready_within}")

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
deployment = "{self.name}"
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
        return json.loads(self.kubectl("get", "deployment", self.name, "-o", "json"))

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
