"""Typed exceptions of the httpx client. None of them carries a raw response body: the
message is the envelope's (cut to 4096 bytes) or the status message."""

from __future__ import annotations

from .decision import Decision
from .reading import Received


class OvertenError(Exception):
    """Every error this package raises derives from this one."""


class ApiError(OvertenError):
    """The API answered with an error, and the client stopped (or was told to stop): its
    `code` (None when the body was not an envelope), `status`, `message`, ids, and the
    `decision` of `docs/retry.md` that ended it (None when no decision was taken)."""

    def __init__(self, received: Received, decision: Decision | None = None, attempts: int = 1):
        self.received = received
        self.decision = decision
        self.attempts = attempts
        super().__init__(str(self))

    @property
    def code(self) -> str | None:
        """The error code, known or not (None: the body was not an envelope)."""
        return self.received.code

    @property
    def known(self) -> bool:
        """Whether this version knows the code."""
        return self.received.known

    @property
    def status(self) -> int:
        """The HTTP status (for a failed task: its code's status)."""
        return self.received.status

    @property
    def message(self) -> str:
        """The public message."""
        return self.received.message

    @property
    def request_id(self) -> str | None:
        """`X-Request-Id`, to quote in a support ticket."""
        return self.received.request_id

    @property
    def run_id(self) -> str | None:
        """The body's `run_id`, if any."""
        return self.received.run_id

    @property
    def task_id(self) -> str | None:
        """The task's id (a failed task, or a body naming one)."""
        return self.received.task_id

    def __str__(self) -> str:
        code = self.received.code if self.received.code is not None else "no code"
        text = f"{self.received.status} {code}: {self.received.message}"
        if self.received.request_id is not None:
            text += f" (request {self.received.request_id})"
        return text


class TaskFailed(ApiError):
    """An async task ended `failed`: its code, message and `task_id`."""


class StillRunning(OvertenError):
    """The task had not ended when polling gave up: poll it later with `Client.poll`."""

    def __init__(self, task_id: str, polls: int, url: str):
        self.task_id = task_id
        self.polls = polls
        self.url = url
        super().__init__(f"task {task_id} is still running after {polls} polls")


class TransportError(OvertenError):
    """No response came back (refused, reset, timed out) and the client stopped; the httpx
    error is the `__cause__`."""

    def __init__(self, message: str, decision: Decision | None = None, attempts: int = 1):
        self.decision = decision
        self.attempts = attempts
        super().__init__(message)


class UnexpectedResponse(OvertenError):
    """A success whose body is not what the API sends (not JSON, not a task, too large)."""


class RequestError(OvertenError):
    """The request cannot be made as asked (e.g. the async flow needs a JSON object body)."""
