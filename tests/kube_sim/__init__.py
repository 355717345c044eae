"""A Kubernetes API simulator for tests: real HTTP, real kubectl, honest semantics.

Start it with `python -m tests.kube_sim --port PORT --kubeconfig PATH [--kubelet docker|table]`
or, from tests, with `tests.kube_sim.harness.running_simulator(...)`.
"""
