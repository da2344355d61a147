"""What the registry holds for a device, read with as few calls as AWS allows, at a bounded request rate.

`Calls` is every IoT request a lifecycle or audit chunk makes: under a rate limit (requests per second, the
operator's), counted per operation for the summary, paged by the model's token names. botocore's standard
retries still handle throttling underneath; the limit keeps a large run from provoking it.
`inspect` reads one device: the thing's principals (ListThingPrincipalsV2), and for each certificate
among them (and the inventory's own, attached or not) its status, policies and things.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from include.aws_errors import error_code, is_not_found

# Codes that mean "try again later", never "this device cannot": they fail the chunk (Airflow retries it)
# instead of failing a device. botocore has already retried them; anything that is no ClientError at all
# (a connection error) is treated the same way.
TRANSIENT_CODES = frozenset(
    {
        "ThrottlingException",
        "TooManyRequestsException",
        "LimitExceededException",
        "InternalFailureException",
        "InternalException",
        "InternalServerException",
        "ServiceUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
CERT_ARN_MARK = ":cert/"


def is_transient(exc: BaseException) -> bool:
    code = error_code(exc)
    return code is None or code in TRANSIENT_CODES


class RateLimiter:
    """At most `rate` requests per second (None: no limit), spread evenly; thread-safe."""

    def __init__(
        self,
        rate: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"the rate limit must be positive, got {rate}")
        self.interval = 1.0 / rate if rate else 0.0
        self._clock, self._sleep = clock, sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = self._clock()
            at = max(now, self._next)
            self._next = at + self.interval
        if at > now:
            self._sleep(at - now)


class Calls:
    """IoT requests through a rate limiter, counted by operation."""

    def __init__(self, iot: Any, limiter: RateLimiter | None = None) -> None:
        self.iot = iot
        self.limiter = limiter or RateLimiter(None)
        self.counts: Counter[str] = Counter()

    def __call__(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        self.limiter.wait()
        self.counts[operation] += 1
        return getattr(self.iot, operation)(**kwargs)

    def pages(self, operation: str, result_key: str, *, marker: bool = False, **kwargs: Any) -> Iterator[Any]:
        """Every item of a paged listing (`marker`: the operation pages by marker/nextMarker, the
        certificate and policy listings, instead of nextToken)."""
        given, returned = ("marker", "nextMarker") if marker else ("nextToken", "nextToken")
        while True:
            page = self(operation, **kwargs)
            yield from page.get(result_key, [])
            following = page.get(returned)
            if not following:
                return
            kwargs[given] = following

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class Certificate:
    """A certificate as the registry has it (status None: it does not exist)."""

    certificate_id: str
    arn: str
    status: str | None
    policies: tuple[str, ...] = ()
    things: tuple[str, ...] = ()
    ca_certificate_id: str | None = None

    @property
    def exists(self) -> bool:
        return self.status is not None


@dataclass(frozen=True)
class DeviceView:
    """One device in the registry: its thing (if any), the principals attached, and its certificates."""

    thing_name: str
    thing_exists: bool
    principals: tuple[str, ...]  # attached principals: certificate ARNs (and Cognito ids, left alone)
    certificates: dict[str, Certificate]  # by id: the attached ones and the inventory's own

    @property
    def attached_certificates(self) -> list[Certificate]:
        ids = [certificate_id_of(p) for p in self.principals if CERT_ARN_MARK in p]
        return [self.certificates[i] for i in ids if i in self.certificates]


def certificate_id_of(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


def certificate_arn(iot_arn_prefix: str, certificate_id: str) -> str:
    return f"{iot_arn_prefix}cert/{certificate_id}"


def describe_certificate(calls: Calls, certificate_id: str, arn: str | None = None) -> Certificate:
    """Status, policies and things of one certificate (one call when it does not exist)."""
    try:
        description = calls("describe_certificate", certificateId=certificate_id)["certificateDescription"]
    except Exception as exc:
        if is_not_found(exc):
            return Certificate(certificate_id, arn or "", None)
        raise
    arn = description["certificateArn"]
    policies = tuple(
        p["policyName"] for p in calls.pages("list_attached_policies", "policies", marker=True, target=arn)
    )
    things = tuple(
        o["thingName"]
        for o in calls.pages("list_principal_things_v2", "principalThingObjects", principal=arn)
    )
    status, ca_id = str(description["status"]), description.get("caCertificateId")
    return Certificate(certificate_id, arn, status, policies, things, ca_id)


def inspect(calls: Calls, thing_name: str, inventory_certificates: Iterable[str | None] = ()) -> DeviceView:
    """The device as the registry has it: thing, principals, and every certificate that concerns it."""
    try:
        objects = list(calls.pages("list_thing_principals_v2", "thingPrincipalObjects", thingName=thing_name))
        exists = True
    except Exception as exc:
        if not is_not_found(exc):
            raise
        objects, exists = [], False
    principals = tuple(o["principal"] for o in objects)
    certificates: dict[str, Certificate] = {}
    for principal in principals:
        if CERT_ARN_MARK in principal:
            certificate_id = certificate_id_of(principal)
            certificates[certificate_id] = describe_certificate(calls, certificate_id, principal)
    for certificate_id in inventory_certificates:
        if certificate_id and certificate_id not in certificates:
            certificates[certificate_id] = describe_certificate(calls, certificate_id)
    return DeviceView(thing_name, exists, principals, certificates)
