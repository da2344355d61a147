"""Faults on demand: throttling and transient 5xx for IoT requests, slow or failing bulk-task lines, and
AWS's eventual consistency after a detach."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field, fields
from typing import Any

from iot_emulator.errors import IotError

DEFAULT_SEED = 1234

# The settings an admin can change (GET/POST /_emulator/faults); everything else is runtime state.
SETTINGS = (
    "throttle_rate",
    "error_rate",
    "error_status",
    "operations",
    "throttle_count",
    "error_count",
    "task_line_delay",
    "fail_lines",
    "fail_rate",
    "partial_fail_lines",
    "detach_lag",
    "seed",
)
# The key under which ``injected`` counts the deletes refused by ``detach_lag``.
DETACH_LAG = "DetachLag"


@dataclass
class Faults:
    """Fault settings shared by every region's service (``service.faults``) and its bulk runner.

    throttle_rate / error_rate: fraction of IoT requests answered ThrottlingException (400) or a transient
    5xx (``error_status`` 500 InternalFailureException or 503 ServiceUnavailableException).
    throttle_count / error_count: if set, only that many such faults are injected, then they stop.
    operations: operation names the request faults apply to (empty: all).
    task_line_delay, fail_lines (1-based), fail_rate: read by bulk registration tasks.
    partial_fail_lines (1-based): bulk lines whose resources are all made, then reported failed (AWS does
    not roll a line back: what it made is left, owned by nobody).
    detach_lag: seconds after DetachThingPrincipal or DetachPolicy during which the detached thing or
    certificate still counts as attached for DeleteThing and DeleteCertificate (AWS's eventual consistency:
    a delete right after a detach may be refused, and succeeds when retried later).
    """

    throttle_rate: float = 0.0
    error_rate: float = 0.0
    error_status: int = 500
    operations: set[str] = field(default_factory=set)
    throttle_count: int | None = None
    error_count: int | None = None
    task_line_delay: float = 0.0
    fail_lines: set[int] = field(default_factory=set)
    fail_rate: float = 0.0
    partial_fail_lines: set[int] = field(default_factory=set)
    detach_lag: float = 0.0
    seed: int = DEFAULT_SEED
    rng: random.Random = field(default_factory=lambda: random.Random(DEFAULT_SEED), repr=False)
    injected: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def update(self, settings: dict[str, Any]) -> None:
        """Change some settings (validated); a new ``seed`` restarts the RNG."""
        unknown = set(settings) - set(SETTINGS)
        if unknown:
            raise ValueError(f"unknown fault settings: {', '.join(sorted(unknown))}")
        with self._lock:
            for name, value in settings.items():
                setattr(self, name, _coerce(name, value))
            if "seed" in settings:
                self.rng = random.Random(self.seed)

    def reset(self) -> None:
        with self._lock:
            fresh = Faults()
            for f in fields(self):
                if f.name != "_lock":
                    setattr(self, f.name, getattr(fresh, f.name))

    def settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in SETTINGS:
            value = getattr(self, name)
            out[name] = sorted(value) if isinstance(value, set) else value
        out["injected"] = dict(self.injected)
        return out

    def request_fault(self, operation: str) -> IotError | None:
        """The error to answer instead of running ``operation``, or None."""
        if not (self.throttle_rate or self.error_rate):
            return None
        if self.operations and operation not in self.operations:
            return None
        with self._lock:
            if self.throttle_rate and self.throttle_count != 0 and self.rng.random() < self.throttle_rate:
                self.throttle_count = None if self.throttle_count is None else self.throttle_count - 1
                self.injected["ThrottlingException"] = self.injected.get("ThrottlingException", 0) + 1
                return IotError("ThrottlingException", "Rate exceeded")
            if self.error_rate and self.error_count != 0 and self.rng.random() < self.error_rate:
                self.error_count = None if self.error_count is None else self.error_count - 1
                if self.error_status == 503:
                    error = IotError("ServiceUnavailableException", "Service Unavailable")
                else:
                    error = IotError("InternalFailureException", "Internal failure")
                self.injected[error.code] = self.injected.get(error.code, 0) + 1
                return error
        return None

    def count(self, kind: str) -> None:
        """Count one injected fault of ``kind`` (faults the services inject themselves, e.g. DETACH_LAG)."""
        with self._lock:
            self.injected[kind] = self.injected.get(kind, 0) + 1


def _coerce(name: str, value: Any) -> Any:
    if name in ("throttle_rate", "error_rate", "fail_rate"):
        rate = float(value)
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1")
        return rate
    if name in ("task_line_delay", "detach_lag"):
        if float(value) < 0:
            raise ValueError(f"{name} must not be negative")
        return float(value)
    if name == "error_status":
        if int(value) not in (500, 503):
            raise ValueError("error_status must be 500 or 503")
        return int(value)
    if name in ("throttle_count", "error_count"):
        return None if value is None else int(value)
    if name == "operations":
        return {value} if isinstance(value, str) else set(value or ())
    if name in ("fail_lines", "partial_fail_lines"):
        return {int(v) for v in (value or ())}
    if name == "seed":
        return int(value)
    return value
