"""Command line: ``python -m iot_emulator --host 127.0.0.1 --port PORT [--state-dir DIR] [--mqtt-port P]``."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Any

from iot_emulator.admin import ADMIN_TOKEN_ENV, ADMIN_TOKEN_HEADER
from iot_emulator.faults import Faults
from iot_emulator.provisioning_hooks import parse_hook_option
from iot_emulator.state import DEFAULT_REGION


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m iot_emulator",
        description="Offline AWS IoT provisioning control plane, with S3/SQS (moto) on the same endpoint.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=4566, help="port to listen on (0: any free port)")
    parser.add_argument("--state-dir", help="keep state here across restarts (default: in memory only)")
    parser.add_argument(
        "--public-url", help="base URL put in presigned links (default: the URL each caller used)"
    )
    parser.add_argument(
        "--admin-token",
        default=os.environ.get(ADMIN_TOKEN_ENV) or None,
        help=f"let non-loopback clients sending it in {ADMIN_TOKEN_HEADER} use the admin routes "
        f"(default ${ADMIN_TOKEN_ENV}; without one, only loopback clients may)",
    )
    parser.add_argument("--verbose", action="store_true", help="log every request")
    mqtt = parser.add_argument_group("device endpoint (MQTT over mutual TLS)")
    mqtt.add_argument(
        "--mqtt-port", type=int, help="serve the MQTT device endpoint on this port too (0: any free port)"
    )
    mqtt.add_argument(
        "--mqtt-endpoint-host",
        default="localhost",
        help="host name DescribeEndpoint answers and the server certificate names (default localhost)",
    )
    mqtt.add_argument(
        "--mqtt-region",
        default=DEFAULT_REGION,
        help=f"region the device endpoint serves (default {DEFAULT_REGION})",
    )
    mqtt.add_argument(
        "--provisioning-hook",
        action="append",
        default=[],
        metavar="ARN=TARGET",
        help="what a template's preProvisioningHook targetArn calls: a http(s) URL (the hook input is POSTed "
        "as JSON, the response is the output), allow or deny; ARN * for any other (repeatable)",
    )
    faults = parser.add_argument_group("faults")
    faults.add_argument("--throttle-rate", type=float, default=0.0, help="fraction of IoT requests throttled")
    faults.add_argument("--error-rate", type=float, default=0.0, help="fraction of IoT requests answered 5xx")
    faults.add_argument("--error-status", type=int, default=500, choices=(500, 503), help="the 5xx to answer")
    faults.add_argument(
        "--fault-operations",
        default="",
        help="comma-separated operation names the faults apply to (default all)",
    )
    faults.add_argument(
        "--task-line-delay", type=float, default=0.0, help="seconds a bulk task spends on each line"
    )
    faults.add_argument("--fail-lines", default="", help="comma-separated 1-based bulk lines forced to fail")
    faults.add_argument("--fail-rate", type=float, default=0.0, help="fraction of bulk lines forced to fail")
    faults.add_argument(
        "--partial-fail-lines",
        default="",
        help="comma-separated 1-based bulk lines that fail after their resources were made",
    )
    faults.add_argument(
        "--detach-lag",
        type=float,
        default=0.0,
        help="seconds a detached thing or certificate still counts as attached for deletes (eventual "
        "consistency)",
    )
    faults.add_argument("--seed", type=int, default=1234, help="seed of the fault RNG")
    return parser.parse_args(argv)


def faults_from_args(args: argparse.Namespace) -> Faults:
    faults = Faults()
    faults.update(
        {
            "throttle_rate": args.throttle_rate,
            "error_rate": args.error_rate,
            "error_status": args.error_status,
            "operations": [op for op in args.fault_operations.split(",") if op],
            "task_line_delay": args.task_line_delay,
            "fail_lines": [int(n) for n in args.fail_lines.split(",") if n],
            "fail_rate": args.fail_rate,
            "partial_fail_lines": [int(n) for n in args.partial_fail_lines.split(",") if n],
            "detach_lag": args.detach_lag,
            "seed": args.seed,
        }
    )
    return faults


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        faults = faults_from_args(args)
        hooks = dict(parse_hook_option(option) for option in args.provisioning_hook)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from iot_emulator.persistence import StateDirError
    from iot_emulator.server import EmulatorServer

    try:
        server = EmulatorServer(
            args.host,
            args.port,
            state_dir=args.state_dir,
            faults=faults,
            public_url=args.public_url,
            verbose=args.verbose,
            admin_token=args.admin_token,
            mqtt_port=args.mqtt_port,
            mqtt_region=args.mqtt_region,
            mqtt_endpoint_host=args.mqtt_endpoint_host,
            provisioning_hooks=hooks,
        )
    except StateDirError as exc:  # in use by another emulator, or saved by a newer one
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def stop(signum: int, _frame: Any) -> None:
        server.request_shutdown()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logger = logging.getLogger("iot_emulator")
    logger.info("IoT emulator listening on %s", server.endpoint_url)
    if server.mqtt_port is not None:
        logger.info(
            "MQTT device endpoint (mutual TLS, %s) on %s:%d; root CA %s",
            args.mqtt_region,
            args.mqtt_endpoint_host,
            server.mqtt_port,
            server.mqtt_root_ca,
        )
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
