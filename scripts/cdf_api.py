"""`make cdf-api`: the CDF provisioning API on http://127.0.0.1:8020, against the local state of `make run`.

Starts the emulator (state under $STATE_DIR/emulator) and bootstraps the account as `make run` does, adds a
development ACM Private CA (alias `dev`: CDF_PCA_DEV / CDF_CA_DEV) and the example CDF templates of
plugins/cdf_api/examples/ (uploaded when missing), then serves the API with a development bearer token
(CDF_API_TOKEN, or a new one each start) until Ctrl-C; the emulator is always stopped. Bulk requests run
the pipeline's stages in a background thread of this process. It prints the base URL and the token and
writes $STATE_DIR/cdf-api.json (mode 0600): base URL, token, AWS endpoint, templates location.

    python -m scripts.cdf_api [--port PORT] [--host 127.0.0.1]       # CDF_API_PORT sets the default port
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "plugins" / "cdf_api" / "examples"
DEFAULT_PORT = 8020


def upload_examples(s3: Any, bucket: str, config: Any) -> list[str]:
    """The example CDF templates, each uploaded unless a template of its id is there already."""
    uploaded = []
    for path in sorted(EXAMPLES.glob("*.json")):
        key = config.template_key(path.stem)
        try:
            s3.head_object(Bucket=bucket, Key=key)
        except Exception:  # absent: upload (a user's own template of the same id is never overwritten)
            s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes(), ContentType="application/json")
            uploaded.append(path.stem)
    return uploaded


def write_private_json(path: Path, document: dict[str, Any]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(document, handle, indent=2)


def serve(state_dir: Path, host: str, port: int, endpoint: str) -> None:
    """Bootstrap on the running emulator, then serve until interrupted."""
    import boto3
    import uvicorn

    from include.cdf.config import CdfConfig
    from include.settings import Settings
    from plugins.cdf_api.app import create_app
    from plugins.cdf_api.auth import DevelopmentToken
    from plugins.cdf_api.standalone import standalone_backend
    from scripts.bootstrap import bootstrap, development_pca
    from scripts.run_local import say

    say("bootstrapping the account (bucket, CA, types, groups, policies)")
    settings = Settings.from_env()
    bootstrap(endpoint_url=endpoint, local_state=state_dir, settings=settings, region="us-east-1")
    session = boto3.session.Session(region_name="us-east-1")
    iot, s3, acm_pca = (session.client(n, endpoint_url=endpoint) for n in ("iot", "s3", "acm-pca"))
    # The same PCA on every start (a new one each time would register one more CA in IoT per start).
    pca_arn, pca_ca_arn = development_pca(acm_pca, iot, state_dir, settings)
    os.environ.setdefault("CDF_PCA_DEV", pca_arn)
    os.environ.setdefault("CDF_CA_DEV", pca_ca_arn)
    config = CdfConfig.from_env(settings)
    uploaded = upload_examples(s3, config.templates_bucket, config)
    if uploaded:
        say(f"uploaded the example CDF templates {', '.join(uploaded)} to {config.templates_location}")
    backend, runner = standalone_backend(
        endpoint_url=endpoint, region="us-east-1", state_dir=state_dir, config=config
    )
    token = DevelopmentToken(os.environ.get("CDF_API_TOKEN") or None)
    base_url = f"http://{host}:{port}"
    write_private_json(
        state_dir / "cdf-api.json",
        {
            "base_url": base_url,
            "token": token.token,
            "aws_endpoint_url": endpoint,
            "templates": config.templates_location,
            "acm_pca": {"alias": "dev", "pca_arn": pca_arn, "iot_ca_arn": pca_ca_arn},
            "bulk_runner": runner.name,
        },
    )
    resumed = runner.resume(backend.store())
    if resumed:
        say(f"resuming unfinished bulk tasks: {', '.join(resumed)}")
    say(f"CDF provisioning API on {base_url} (details in {state_dir / 'cdf-api.json'})")
    say(f"development token: {token.token}")
    say("Ctrl-C stops it (and the emulator)")
    app = create_app(backend, token)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    try:
        server.run()
    finally:
        runner.shutdown()
    if server.should_exit:
        # Stopped by Ctrl-C (or SIGTERM). uvicorn raises the signal again after its shutdown, but asyncio's
        # runner turns that into KeyboardInterrupt only when the server had not quite finished: say so
        # every time, so the exit status is always the interrupted one (130).
        raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("CDF_API_PORT") or DEFAULT_PORT))
    args = parser.parse_args(argv)
    from scripts.run_local import RunError, emulator

    state_dir = Path(os.environ.get("STATE_DIR") or ROOT / ".local").resolve()
    logs = state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    os.environ.update(
        {
            "STATE_DIR": str(state_dir),
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    try:
        with emulator(state_dir, logs) as endpoint:
            os.environ["AWS_ENDPOINT_URL"] = endpoint
            serve(state_dir, args.host, args.port, endpoint)
    except RunError as error:
        print(f"[run] FAILED: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
