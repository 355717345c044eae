"""Command line: build the store, start the API server, controllers and kubelet, write a
kubeconfig, serve until SIGTERM/SIGINT, then remove every container this process started."""

from __future__ import annotations

import argparse
import atexit
import signal
import threading
from dataclasses import dataclass
from typing import Any

from . import objects
from .admission import load_policies
from .authorization import load_authorizer
from .controllers import ControllerManager
from .kubelet import NODE_NAME, BackOff, Kubelet, Runtime, load_table
from .resources import NAMESPACES, NODES
from .server import ApiServer, Simulator
from .store import Store

INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


def kubeconfig_text(server_url: str, namespace: str = "default") -> str:
    """A kubeconfig for the simulator: no TLS, a token the server ignores."""
    return f"""apiVersion: v1
kind: Config
clusters:
- name: kube-sim
  cluster:
    server: {server_url}
contexts:
- name: kube-sim
  context:
    cluster: kube-sim
    user: kube-sim
    namespace: {namespace}
current-context: kube-sim
preferences: {{}}
users:
- name: kube-sim
  user:
    token: kube-sim-ignored-token
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.kube_sim", description="A Kubernetes API simulator for tests.")
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1; 0 picks a free one")
    parser.add_argument("--kubeconfig", required=True, help="where to write a kubeconfig for this simulator")
    parser.add_argument("--kubelet", choices=("table", "docker"), default="table")
    parser.add_argument("--table", help="JSON file of table-kubelet rules")
    parser.add_argument("--rule", action="append", default=[], help="table rule MATCH=BEHAVIOUR[:DELAY]")
    parser.add_argument("--backoff-base", type=float, default=10.0, help="first restart/pull back-off, seconds")
    parser.add_argument("--backoff-cap", type=float, default=300.0, help="back-off ceiling, seconds")
    parser.add_argument("--bookmark-interval", type=float, default=10.0, help="seconds between watch bookmarks")
    parser.add_argument("--event-log-size", type=int, default=20000, help="watch history kept before 410 Gone")
    parser.add_argument("--rbac", help="JSON file of users (token, name, RBAC rules); other tokens may do anything")
    parser.add_argument("--admission", help="JSON file of validating admission webhooks (image policies)")
    parser.add_argument("--nodes", type=int, default=1, help="how many Nodes (DaemonSets run one pod on each)")
    parser.add_argument("--conflicts", type=int, default=0,
                        help="the next N writes to Deployments that carry a resourceVersion lose the race: 409 Conflict")
    return parser.parse_args(argv)


def make_runtime(args: argparse.Namespace) -> Runtime:
    if args.kubelet == "docker":
        from .docker_runtime import DockerRuntime

        return DockerRuntime()
    return load_table(args.table, args.rule)


def seed(store: Store, nodes: int = 1) -> None:
    for name in INITIAL_NAMESPACES:
        namespace: dict[str, Any] = {"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": name}}
        objects.prepare_create(NAMESPACES, namespace)
        store.create(NAMESPACES, namespace)
    for index in range(nodes):
        name = NODE_NAME if index == 0 else f"{NODE_NAME}-{index + 1}"
        store.create(NODES, objects.new_node(name))


@dataclass
class Cluster:
    server: ApiServer
    sim: Simulator
    controllers: ControllerManager
    kubelet: Kubelet

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> None:
        self.controllers.start()
        self.kubelet.start()
        threading.Thread(target=self.server.serve_forever, name="api-server", daemon=True).start()

    def stop(self) -> None:
        self.sim.stopping.set()
        self.server.shutdown()
        self.controllers.shutdown()
        self.kubelet.shutdown()
        self.server.server_close()


def build(args: argparse.Namespace) -> Cluster:
    store = Store(event_log_size=args.event_log_size)
    seed(store, args.nodes)
    sim = Simulator(store, args.bookmark_interval, load_authorizer(args.rbac), load_policies(args.admission))
    sim.conflicts_left = args.conflicts
    server = ApiServer(("127.0.0.1", args.port), sim)
    runtime = make_runtime(args)
    kubelet = Kubelet(store, runtime, BackOff(args.backoff_base, args.backoff_cap))
    sim.pod_logs = kubelet.logs
    return Cluster(server, sim, ControllerManager(store), kubelet)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cluster = build(args)
    stopped = threading.Event()
    stop_once = threading.Lock()

    def stop(*_: Any) -> None:
        if stop_once.acquire(blocking=False):
            cluster.stop()
            stopped.set()

    atexit.register(stop)
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    cluster.start()
    with open(args.kubeconfig, "w") as handle:
        handle.write(kubeconfig_text(cluster.url))
    print(f"kube-sim serving {cluster.url} (kubelet: {args.kubelet})", flush=True)
    stopped.wait()
    stop()
    return 0
