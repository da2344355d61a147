"""The CDF provisioning API on a real port over the in-process emulator, bootstrapped like `make cdf-api`."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from include.cdf.config import CdfConfig
from include.settings import Settings
from plugins.cdf_api.app import create_app
from plugins.cdf_api.auth import DevelopmentToken
from plugins.cdf_api.media import MEDIA_TYPE
from plugins.cdf_api.standalone import standalone_backend
from scripts.bootstrap import bootstrap, development_pca

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "plugins" / "cdf_api" / "examples"
TOKEN = "test-development-token"
CDF = {"Accept": MEDIA_TYPE, "Content-Type": MEDIA_TYPE}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    """uvicorn in a thread on a free loopback port."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@dataclass
class CdfApi:
    base_url: str
    client: httpx.Client
    iot: Any
    s3: Any
    acm_pca: Any
    settings: Settings
    config: CdfConfig
    state_dir: Path
    pca_arn: str
    pca_ca_arn: str
    runner: Any
    backend: Any

    def call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        headers = {**CDF, "Authorization": f"Bearer {TOKEN}", **kwargs.pop("headers", {})}
        content = json.dumps(body) if body is not None else None
        return self.client.request(method, path, content=content, headers=headers, **kwargs)

    def wait_bulk(self, task_id: str, timeout: float = 300) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.call("GET", f"/bulkthings/{task_id}").json()
            if found["status"] in ("Completed", "Failed") or time.monotonic() > deadline:
                return found
            time.sleep(0.25)

    def upload_template(self, template_id: str, document: dict[str, Any]) -> None:
        self.s3.put_object(
            Bucket=self.config.templates_bucket,
            Key=self.config.template_key(template_id),
            Body=json.dumps(document),
        )


@pytest.fixture(scope="module")
def cdf_api(emulator: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CdfApi]:
    emulator.reset()
    state_dir = tmp_path_factory.mktemp("cdf-state")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "STATE_DIR": str(state_dir),
        }.items():
            patch.setenv(name, value)
        patch.delenv("AWS_ENDPOINT_URL", raising=False)
        settings = Settings(
            inventory_url=f"sqlite:///{state_dir / 'inventory.db'}",
            chunk_size=2500,
            workers=2,
        )
        bootstrap(
            endpoint_url=emulator.endpoint_url, local_state=state_dir, settings=settings, region="us-east-1"
        )
        iot, s3, acm_pca = emulator.client("iot"), emulator.client("s3"), emulator.client("acm-pca")
        pca_arn, pca_ca_arn = development_pca(acm_pca, iot, state_dir, settings)
        config = CdfConfig(
            settings=settings,
            templates_bucket=settings.bucket,
            pca_aliases={"dev": pca_arn},
            iot_ca_aliases={"dev": pca_ca_arn},
            catalogs_dir=state_dir / "cdf" / "catalogs",
        )
        for path in sorted(EXAMPLES.glob("*.json")):
            s3.put_object(Bucket=settings.bucket, Key=config.template_key(path.stem), Body=path.read_bytes())
        backend, runner = standalone_backend(
            endpoint_url=emulator.endpoint_url,
            region="us-east-1",
            state_dir=state_dir,
            config=config,
            poll=0.05,
        )
        app = create_app(backend, DevelopmentToken(TOKEN))
        with Server(app) as base_url, httpx.Client(base_url=base_url, timeout=120) as client:
            yield CdfApi(
                base_url,
                client,
                iot,
                s3,
                acm_pca,
                settings,
                config,
                state_dir,
                pca_arn,
                pca_ca_arn,
                runner,
                backend,
            )
        runner.shutdown(wait=True)
