"""rollout: deploy container images by exact digest, keep a ledger, revert automatically."""

__version__ = "0.1.0"
