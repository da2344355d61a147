"""Pre-provisioning hooks: what stands in for the Lambda function a template's ``targetArn`` names.

A target is a Python callable (in-process use), an ``http(s)://`` URL the hook input is POSTed to as
JSON (the response body is the function's output), or ``allow`` / ``deny``. Targets are looked up by the
exact ``targetArn``, then under ``*``; an ARN with no target fails, as an invocation of a Lambda function
that does not exist would. AWS's contract holds either way: provisioning goes on only when the output
says ``"allowProvisioning": true`` within 5 seconds, and ``parameterOverrides`` are merged into the
request's parameters.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import threading
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

HOOK_TIMEOUT = 5.0  # "The Lambda function must finish running and return within 5 seconds"
MAX_RESPONSE_BYTES = 1024 * 1024
HookTarget = Callable[[dict[str, Any]], Any] | str
ANY_ARN = "*"


@dataclass(frozen=True)
class HookVerdict:
    """The hook's decision: allowed or not (and why not), with the parameters to override."""

    allowed: bool
    overrides: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


def parse_hook_option(option: str) -> tuple[str, str]:
    """``ARN=TARGET`` from the command line (``--provisioning-hook``) as (arn, target)."""
    arn, sep, target = option.partition("=")
    if not sep or not arn or not target:
        raise ValueError(f"--provisioning-hook needs ARN=TARGET (a URL, allow or deny), got {option!r}")
    if target not in ("allow", "deny") and not target.startswith(("http://", "https://")):
        raise ValueError(f"a provisioning hook target is a http(s) URL, allow or deny, got {target!r}")
    return arn, target


class ProvisioningHooks:
    """The configured targets, and their invocation with AWS's time limit and output contract."""

    def __init__(self, targets: Mapping[str, HookTarget] | Iterable[tuple[str, HookTarget]] = ()) -> None:
        self._targets: dict[str, HookTarget] = dict(targets)
        self._lock = threading.Lock()
        # Hooks run here so that one exceeding its time cannot hold a caller past HOOK_TIMEOUT.
        self._pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="provisioning-hook")

    def set(self, target_arn: str, target: HookTarget | None) -> None:
        """Map ``target_arn`` (or ``*``) to ``target``; None removes the mapping."""
        with self._lock:
            if target is None:
                self._targets.pop(target_arn, None)
            else:
                self._targets[target_arn] = target

    def clear(self) -> None:
        with self._lock:
            self._targets.clear()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def invoke(self, target_arn: str, event: dict[str, Any]) -> HookVerdict:
        """Run the hook for ``event`` (the Lambda input) and read its output; never raises."""
        with self._lock:
            target = self._targets.get(target_arn, self._targets.get(ANY_ARN))
        if target is None:
            return HookVerdict(
                False, reason=f"no pre-provisioning hook target is configured for {target_arn}"
            )
        if target in ("allow", "deny"):
            return HookVerdict(target == "allow", reason="the hook target is deny")
        future = self._pool.submit(_call, target, event)
        try:
            output = future.result(timeout=HOOK_TIMEOUT)
        except concurrent.futures.TimeoutError:
            return HookVerdict(False, reason=f"the hook did not answer within {HOOK_TIMEOUT:g} seconds")
        except Exception as exc:
            log.warning("pre-provisioning hook %s failed: %s", target_arn, exc)
            return HookVerdict(False, reason=f"the hook failed: {type(exc).__name__}")
        return _verdict(output)


def _call(target: HookTarget, event: dict[str, Any]) -> Any:
    if callable(target):
        return target(event)
    request = urllib.request.Request(  # noqa: S310 - the operator configured this URL
        target, data=json.dumps(event).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=HOOK_TIMEOUT) as response:  # noqa: S310
        return json.loads(response.read(MAX_RESPONSE_BYTES))


def _verdict(output: Any) -> HookVerdict:
    """AWS's output contract: only ``allowProvisioning`` true allows; overrides must be an object."""
    if not isinstance(output, dict):
        return HookVerdict(False, reason="the hook's output is not an object")
    allow = output.get("allowProvisioning")
    if not (allow is True or (isinstance(allow, str) and allow.lower() == "true")):
        return HookVerdict(False, reason="the hook did not allow provisioning")
    overrides = output.get("parameterOverrides") or {}
    if not isinstance(overrides, dict):
        return HookVerdict(False, reason="the hook's parameterOverrides is not an object")
    return HookVerdict(True, overrides)
