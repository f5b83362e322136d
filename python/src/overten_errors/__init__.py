"""Overten API errors for Python: the reference implementation of `docs/retry.md`.

- Reading a response: `classify`, `read_failed_task`, `Received`.
- The decision: `decide`, `decide_transport`, `Policy`, `RetryBudget` (paid newest first with
  `RetryTicket`), `Advice`.
- Pacing per API key and everything a client shares: `Retrier`, `Pacer`, `Pacers`.
- httpx: `Client` / `AsyncClient` (the five-line client, the async flow in one call),
  `RetryTransport` / `AsyncRetryTransport` (for an httpx client of your own).
- The tables (`CODES`, `TIERS`, `LIMITS`, ...) are generated from the Rust crates by
  `cargo xtask docs`.
"""

from ._catalog import (
    BUDGET,
    CODES,
    LIMITS,
    STATUS_RULES,
    STATUSES,
    TASK_STATUSES,
    TIERS,
    VERSION,
)
from ._types import Code, Limits, Rule, Status, StatusRule, Tier
from .client import AsyncClient, Client
from .decision import (
    RETRY_CANCELLED,
    Advice,
    Decision,
    RetryBudget,
    RetryTicket,
    decide,
    decide_transport,
    status_rule,
)
from .errors import (
    ApiError,
    OvertenError,
    RequestError,
    StillRunning,
    TaskFailed,
    TransportError,
    UnexpectedResponse,
)
from .policy import Policy, PolicyError, PollSchedule
from .reading import (
    RateLimit,
    Received,
    RetryAfter,
    TaskState,
    classify,
    parse_retry_after,
    rate_limit_of,
    read_failed_task,
    read_task,
)
from .retrier import Outcome, Pacer, Pacers, Retrier, bearer_key
from .transport import AsyncRetryTransport, RetryTransport

__version__ = VERSION

__all__ = [
    "BUDGET",
    "CODES",
    "LIMITS",
    "RETRY_CANCELLED",
    "STATUSES",
    "STATUS_RULES",
    "TASK_STATUSES",
    "TIERS",
    "VERSION",
    "Advice",
    "ApiError",
    "AsyncClient",
    "AsyncRetryTransport",
    "Client",
    "Code",
    "Decision",
    "Limits",
    "Outcome",
    "OvertenError",
    "Pacer",
    "Pacers",
    "Policy",
    "PolicyError",
    "PollSchedule",
    "RateLimit",
    "Received",
    "RequestError",
    "Retrier",
    "RetryAfter",
    "RetryBudget",
    "RetryTicket",
    "RetryTransport",
    "Rule",
    "Status",
    "StatusRule",
    "StillRunning",
    "TaskFailed",
    "TaskState",
    "Tier",
    "TransportError",
    "UnexpectedResponse",
    "bearer_key",
    "classify",
    "decide",
    "decide_transport",
    "parse_retry_after",
    "rate_limit_of",
    "read_failed_task",
    "read_task",
    "status_rule",
]
