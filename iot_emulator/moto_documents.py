"""moto's Secrets Manager secrets and ACM Private CAs mirrored under --state-dir as JSON, and rebuilt.

Secrets go back through moto's own create_secret (the current value only: earlier versions are not kept).
moto has no API to rebuild a private CA with its key, so a CA's plain attributes (strings, numbers, dicts,
bytes as base64; never pickled) are written out and set back on a fresh object of moto's class.
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from iot_emulator.persistence import atomic_write

log = logging.getLogger(__name__)
SECRETS_FILE = "secretsmanager.json"
PCA_FILE = "acm-pca.json"
VERSION = 1


def _encode(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"__bytes__": base64.b64encode(value).decode("ascii")}
    if isinstance(value, uuid.UUID):
        return {"__uuid__": str(value)}
    if isinstance(value, dict):
        return {key: _encode(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(item) for item in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__bytes__"}:
            return base64.b64decode(value["__bytes__"])
        if set(value) == {"__uuid__"}:
            return uuid.UUID(value["__uuid__"])
        return {key: _decode(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode(item) for item in value]
    return value


def save_secrets(state_dir: Path, backends: Callable[[], Any]) -> None:
    """Every region's secrets: name, current value, description, tags."""
    secrets = []
    for region, backend in list(backends().items()):
        for name, secret in list(backend.secrets.items()):
            if secret.is_deleted():
                continue
            # The current version's value (the secret's own attributes keep the first one).
            current = secret.versions.get(secret.default_version_id) or {}
            secrets.append(
                {
                    "region": region,
                    "name": name,
                    "string": current.get("secret_string"),
                    "binary": current.get("secret_binary"),
                    "description": secret.description,
                    "tags": secret.tags or [],
                }
            )
    atomic_write(state_dir / SECRETS_FILE, json.dumps({"version": VERSION, "secrets": secrets}).encode())


def load_secrets(state_dir: Path, backends: Callable[[], Any]) -> None:
    path = state_dir / SECRETS_FILE
    if not path.exists():
        return
    by_region = backends()
    for entry in json.loads(path.read_bytes())["secrets"]:
        backend = by_region[entry["region"]]
        if entry["name"] in backend.secrets:  # moto's state is per process: an in-process restart keeps it
            continue
        backend.create_secret(
            name=entry["name"],
            secret_string=entry["string"],
            secret_binary=entry["binary"],
            description=entry["description"],
            tags=entry["tags"],
            kms_key_id=None,
            client_request_token=None,
            replica_regions=[],
            force_overwrite=False,
        )


def save_private_cas(state_dir: Path, backends: Callable[[], Any]) -> None:
    """Every region's ACM private CAs, with their keys and the certificates they issued."""
    cas = [
        {"region": region, "attributes": _encode(vars(ca))}
        for region, backend in list(backends().items())
        for ca in list(backend.certificate_authorities.values())
    ]
    atomic_write(state_dir / PCA_FILE, json.dumps({"version": VERSION, "cas": cas}).encode())


def load_private_cas(state_dir: Path, backends: Callable[[], Any]) -> None:
    path = state_dir / PCA_FILE
    if not path.exists():
        return
    from moto.acmpca.models import CertificateAuthority

    by_region = backends()
    for entry in json.loads(path.read_bytes())["cas"]:
        ca = CertificateAuthority.__new__(CertificateAuthority)
        vars(ca).update(_decode(entry["attributes"]))
        by_region[entry["region"]].certificate_authorities[ca.arn] = ca
