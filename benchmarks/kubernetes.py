"""B3 Kubernetes failure detection: a crash-looping release on the API simulator, whose
kubelet runs pods as real containers on the Docker engine (with Kubernetes' real
10 s restart back-off).

rollout: `rollout deploy web:crash`; its verdict is the failed entry's `status:failed`
event in the ledger. Baseline: `kubectl set image` then `kubectl rollout status`,
which gives its verdict when progressDeadlineSeconds runs out (600 s unless the
Deployment says otherwise; 60 s in quick mode). Each side has its own Deployment.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path

from benchmarks.common import (APP_IMAGE, ROLLOUT, Comparison, ScenarioFailed, ScenarioResult, Settings, alternate,
                               docker, iso_time, require_docker, require_test_images, rollout_env, run)

OURS, THEIRS = "bench-rollout", "bench-kubectl"


def deployment(name: str, deadline: int) -> dict:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": 2, "progressDeadlineSeconds": deadline, "selector": {"matchLabels": {"app": name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [
                {"name": "app", "image": f"{APP_IMAGE}:good1", "imagePullPolicy": "IfNotPresent",
                 "env": [{"name": "PORT", "value": "8080"}]},
            ]}},
        },
    }


def detection(settings: Settings, result: ScenarioResult) -> None:
    from tests.kube_sim.harness import running_simulator

    require_docker()
    require_test_images("good1", "crash")
    if shutil.which("kubectl") is None:
        raise ScenarioFailed("kubectl is not installed (apt-get install kubernetes-client)")
    for variant in ("good1", "crash"):
        docker("pull", "-q", f"{APP_IMAGE}:{variant}")
    root = settings.workdir / "b3"
    root.mkdir()
    deadline = settings.k8s_deadline
    with running_simulator(root, "docker") as sim:
        def kubectl(*args: str, timeout: float = 120, expect: tuple[int, ...] = (0,)):  # type: ignore[no-untyped-def]
            return run(["kubectl", f"--kubeconfig={sim.kubeconfig}", *args], timeout=timeout, expect=expect,
                       what=f"kubectl {' '.join(args[:2])}")

        for name in (OURS, THEIRS):
            manifest = root / f"{name}.json"
            manifest.write_text(json.dumps(deployment(name, deadline)))
            kubectl("create", "-f", str(manifest), "--validate=false")
        for name in (OURS, THEIRS):
            kubectl("rollout", "status", f"deployment/{name}", "--timeout=120s")
        config = write_config(root, sim.kubeconfig)
        env = rollout_env(config)
        # The ledger needs a healthy entry to revert to, as after any first deploy.
        run([ROLLOUT, "deploy", "web:good1"], env=env, timeout=300, what="rollout deploy web:good1 (seed)")
        process_times: list[float] = []

        def rollout_side(_index: int) -> float:
            started_wall, started = time.time(), time.monotonic()
            run([ROLLOUT, "deploy", "web:crash"], env=env, timeout=deadline + 300, expect=(1,),
                what="rollout deploy web:crash")
            process_times.append(time.monotonic() - started)
            return failed_verdict_at(root / "state" / "ledger.db") - started_wall

        def kubectl_side(_index: int) -> float:
            started = time.monotonic()
            kubectl("set", "image", f"deployment/{THEIRS}", f"app={APP_IMAGE}:crash")
            done = kubectl("rollout", "status", f"deployment/{THEIRS}", f"--timeout={deadline + 300}s",
                           timeout=deadline + 360, expect=(1,))
            elapsed = time.monotonic() - started
            if "progress deadline" not in done.stderr + done.stdout:
                raise ScenarioFailed(f"kubectl rollout status failed for another reason: {done.stderr.strip()[:200]}")
            # Put it back untimed, as an operator would after reading the verdict.
            kubectl("rollout", "undo", f"deployment/{THEIRS}")
            kubectl("rollout", "status", f"deployment/{THEIRS}", "--timeout=180s", timeout=240)
            return elapsed

        comparison = Comparison(f"crash-looping release: time to a verdict (progressDeadlineSeconds = {deadline})",
                                "rollout deploy", "kubectl set image + rollout status")
        alternate(settings.runs, kubectl_side, rollout_side, comparison)
        result.comparisons.append(comparison)
        result.metrics.update(progress_deadline_s=deadline,
                              rollout_process_s_incl_revert=round(sorted(process_times)[len(process_times) // 2], 2))


def write_config(root: Path, kubeconfig: Path) -> Path:
    config = root / "rollout.toml"
    config.write_text(f"""
[apps.web]
image = "{APP_IMAGE}"

[apps.web.health]
timeout = 120
interval = 1
stable = 2

[[apps.web.targets]]
name = "cluster"
kind = "kubernetes"
kubeconfig = "{kubeconfig}"
deployment = "{OURS}"
container = "app"
""")
    return config


def failed_verdict_at(ledger: Path) -> float:
    conn = sqlite3.connect(ledger)
    try:
        row = conn.execute(
            "SELECT e.at FROM events e JOIN entries d ON d.id = e.entry_id"
            " WHERE d.kind = 'deploy' AND e.event = 'status:failed' ORDER BY e.id DESC LIMIT 1").fetchone()
    finally:
        conn.close()
    if row is None:
        raise ScenarioFailed("rollout exited 1 but the ledger records no failed deploy")
    return iso_time(row[0])
