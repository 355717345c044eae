"""python -m tests.kube_sim --port PORT --kubeconfig PATH [--kubelet docker|table]"""

from __future__ import annotations

import sys

from .app import main

if __name__ == "__main__":
    sys.exit(main())
