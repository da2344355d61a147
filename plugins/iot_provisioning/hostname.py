"""The host name Airflow records for a task instance: FACTORY_HOSTNAME when set, else the host's FQDN.

Configured as `[core] hostname_callable`. In docker-compose every worker is its own container (its FQDN
differs); `make cluster` runs several workers on one machine and names each one (worker-1, worker-2, ...),
so the UI and the API tell which worker ran which chunk.
"""

from __future__ import annotations

import os
import socket


def worker_hostname() -> str:
    return os.environ.get("FACTORY_HOSTNAME") or socket.getfqdn()
