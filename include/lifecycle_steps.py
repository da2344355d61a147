"""A lifecycle action on one device: the steps, planned from what the registry shows, run in the safe order.

Planning is pure (`plan_steps`): a step is only planned when it changes something, so a device whose
action is complete gets none, and a device a died run left half-done gets only what remains. Deleting
follows the order AWS allows and CDF's delete skipped the retries of: deactivate the certificate, detach
its policies, detach it from the thing, delete it when no other thing holds it, then delete the thing. A
certificate another thing also holds is only detached from this one: never deactivated or deleted.

`run_steps` executes them. Deletes right after a detach can meet AWS's eventual consistency (DeleteThing:
InvalidRequestException "still attached"; DeleteCertificate: DeleteConflictException): they are retried with
backoff while the registry itself confirms the detach happened (a principal listed again is a real
conflict, reported at once). Waits are seconds, so they stay in the task; anything transient beyond
botocore's retries fails the chunk for Airflow to retry.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from include.aws_errors import error_code, is_not_found
from include.lifecycle_registry import CERT_ARN_MARK, Calls, Certificate, DeviceView, is_transient
from include.outcomes import DEACTIVATE, DELETE, REACTIVATE, REVOKE

INACTIVE, ACTIVE, REVOKED = "INACTIVE", "ACTIVE", "REVOKED"
# Codes of the two deletes that AWS's eventual consistency refuses right after a detach.
CONFLICT_CODES = {
    "delete_thing": frozenset({"InvalidRequestException"}),
    "delete_certificate": frozenset({"DeleteConflictException", "CertificateStateException"}),
}


@dataclass(frozen=True)
class Step:
    """One change: an IoT operation, its arguments, and the sentence the report shows."""

    operation: str
    kwargs: dict[str, Any]
    text: str


@dataclass(frozen=True)
class Backoff:
    """Retries of an eventual-consistency conflict: `attempts` tries, delays doubling up to `cap`."""

    attempts: int = 8
    first: float = 0.25
    cap: float = 8.0
    sleep: Callable[[float], None] = time.sleep

    def delays(self) -> list[float]:
        return [min(self.cap, self.first * 2**n) for n in range(self.attempts - 1)]


class DeviceFailure(Exception):
    """The action cannot be completed for this device (precise reason; the run goes on with others)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass
class Outcome:
    """What running a device's steps did."""

    done: list[str] = field(default_factory=list)
    retries: int = 0


def status_step(certificate: Certificate, status: str, verb: str) -> Step:
    return Step(
        "update_certificate",
        {"certificateId": certificate.certificate_id, "newStatus": status},
        f"{verb} certificate {certificate.certificate_id} ({certificate.status} -> {status})",
    )


def retire_steps(view: DeviceView, certificate: Certificate) -> list[Step]:
    """Take one certificate off the thing being deleted, and delete it unless another thing holds it."""
    thing = view.thing_name
    others = [t for t in certificate.things if t != thing]
    steps: list[Step] = []
    attached = certificate.arn in view.principals
    if others:  # shared: this thing lets go of it, the others keep it as it is
        if attached:
            steps.append(
                Step(
                    "detach_thing_principal",
                    {"thingName": thing, "principal": certificate.arn},
                    f"detach certificate {certificate.certificate_id} from {thing} (kept: also attached "
                    f"to {', '.join(others)})",
                )
            )
        return steps
    if certificate.status == ACTIVE:
        steps.append(status_step(certificate, INACTIVE, "deactivate"))
    steps += [
        Step(
            "detach_policy",
            {"policyName": policy, "target": certificate.arn},
            f"detach policy {policy} from certificate {certificate.certificate_id}",
        )
        for policy in certificate.policies
    ]
    if attached:
        steps.append(
            Step(
                "detach_thing_principal",
                {"thingName": thing, "principal": certificate.arn},
                f"detach certificate {certificate.certificate_id} from {thing}",
            )
        )
    steps.append(
        Step(
            "delete_certificate",
            {"certificateId": certificate.certificate_id},
            f"delete certificate {certificate.certificate_id}",
        )
    )
    return steps


def plan_steps(action: str, view: DeviceView, current_certificate: str | None) -> list[Step]:
    """The steps `action` still needs on this device (none: already in the wanted state).

    `current_certificate` is the inventory's certificate id for the device. Raises DeviceFailure when the
    action cannot apply (reactivating a revoked certificate, a certificate that does not exist).
    """
    existing = {i: c for i, c in view.certificates.items() if c.exists}
    if action in (DEACTIVATE, REVOKE):
        target = INACTIVE if action == DEACTIVATE else REVOKED
        if not existing:
            raise DeviceFailure(
                "NoCertificate", f"{view.thing_name} has no certificate in AWS IoT to {action}"
            )
        changing = [
            c
            for c in existing.values()
            if (c.status == ACTIVE if target == INACTIVE else c.status != REVOKED)
        ]
        return [status_step(c, target, action) for c in changing]
    if action == REACTIVATE:
        certificate = existing.get(current_certificate or "")
        if certificate is None:
            raise DeviceFailure(
                "NoCertificate", f"certificate {current_certificate} of {view.thing_name} is not in AWS IoT"
            )
        if certificate.status == REVOKED:
            raise DeviceFailure(
                "CertificateRevoked",
                f"certificate {certificate.certificate_id} is revoked: a revoked "
                "certificate cannot be reactivated (rekey the device instead)",
            )
        return [] if certificate.status == ACTIVE else [status_step(certificate, ACTIVE, "reactivate")]
    if action == DELETE:
        steps: list[Step] = []
        for certificate in existing.values():
            # A certificate of the device that no thing holds is the device's too (left detached earlier).
            if certificate.arn in view.principals or certificate.certificate_id == current_certificate:
                steps += retire_steps(view, certificate)
        steps += [  # other principals (Cognito identities) are only detached: they are not the device's
            Step(
                "detach_thing_principal",
                {"thingName": view.thing_name, "principal": principal},
                f"detach principal {principal} from {view.thing_name}",
            )
            for principal in view.principals
            if CERT_ARN_MARK not in principal
        ]
        if view.thing_exists:
            steps.append(
                Step("delete_thing", {"thingName": view.thing_name}, f"delete thing {view.thing_name}")
            )
        return steps
    raise ValueError(f"no steps are planned here for action {action!r}")


def _confirm_detached(calls: Calls, step: Step) -> None:
    """A delete refused after its detach: go on retrying only if the registry shows the detach done."""
    if step.operation == "delete_thing":
        thing = step.kwargs["thingName"]
        attached = [
            o["principal"]
            for o in calls.pages("list_thing_principals_v2", "thingPrincipalObjects", thingName=thing)
        ]
        if attached:
            raise DeviceFailure(
                "StillAttached", f"thing {thing} holds {', '.join(attached)} again: attached by someone else"
            )
    elif step.operation == "delete_certificate":
        certificate_id = step.kwargs["certificateId"]
        arn = calls("describe_certificate", certificateId=certificate_id)["certificateDescription"][
            "certificateArn"
        ]
        things = [
            o["thingName"]
            for o in calls.pages("list_principal_things_v2", "principalThingObjects", principal=arn)
        ]
        if things:
            raise DeviceFailure(
                "StillAttached",
                f"certificate {certificate_id} is attached to {', '.join(things)} again: kept",
            )


def run_step(calls: Calls, step: Step, backoff: Backoff) -> int:
    """Run one step; returns how many eventual-consistency conflicts were retried."""
    conflicts = CONFLICT_CODES.get(step.operation, frozenset())
    delays = backoff.delays()
    retries = 0
    while True:
        try:
            calls(step.operation, **step.kwargs)
            return retries
        except Exception as exc:
            code = error_code(exc)
            if step.operation.startswith("delete_") and is_not_found(exc):
                return retries  # gone already: what the step wanted
            if code in conflicts and retries < len(delays):
                _confirm_detached(calls, step)
                backoff.sleep(delays[retries])
                retries += 1
                continue
            if is_transient(exc):
                raise
            raise DeviceFailure(code or type(exc).__name__, f"{step.text}: {code}") from None


def run_steps(calls: Calls, steps: list[Step], backoff: Backoff, outcome: Outcome) -> None:
    """Run the steps in order, noting each in `outcome` (so a DeviceFailure leaves what was done)."""
    for step in steps:
        outcome.retries += run_step(calls, step, backoff)
        outcome.done.append(step.text)
