"""Overten API errors for Python: the reference implementation of `docs/retry.md`."""

from .decision import Advice, Decision, RetryBudget, decide, decide_transport
from .reading import Received, classify, read_failed_task

__all__ = ["Advice", "Decision", "Received", "RetryBudget", "classify", "decide",
           "decide_transport", "read_failed_task"]
