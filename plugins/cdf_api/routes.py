"""The six routes of CDF's provisioning API: each reads its body, calls include.cdf, answers CDF's way.

The domain modules are imported by the handlers: every Airflow process loads plugins, and only the API
server needs pandas and pyarrow for a request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from include.cdf.errors import NotFound
from include.cdf.validation import parse
from plugins.cdf_api.media import cdf_response, json_body
from plugins.cdf_api.models import (
    BulkRegistrationRequest,
    PatchCertificateRequest,
    ProvisionRequest,
    ProvisionResponse,
)

if TYPE_CHECKING:
    from include.cdf.bulk_tasks import BulkTask
    from plugins.cdf_api.backend import Backend


def router(backend: Backend) -> APIRouter:
    api = APIRouter()

    @api.get("/health", include_in_schema=False)
    async def health() -> Response:
        return JSONResponse({"status": "ok"})

    @api.post("/things")
    async def provision_thing(request: Request) -> Response:
        from include.cdf import provision

        body = parse(ProvisionRequest, await json_body(request))
        done = await run_in_threadpool(
            provision.provision_thing,
            backend.services(),
            body.provisioningTemplateId,
            body.parameters,
            body.cdfProvisioningParameters,
        )
        response = ProvisionResponse(
            certificatePem=done.certificate_pem,
            publicKey=done.public_key_pem,
            privateKey=done.private_key_pem,
            resourceArns=done.resource_arns,
        )
        return cdf_response(201, response.model_dump(exclude_none=True))

    @api.get("/things/{thingName}")
    async def get_thing(thingName: str) -> Response:  # noqa: N803 (CDF's parameter name)
        from include.cdf import things
        from include.cdf.bulk_tasks import TASK_ID

        services = backend.services()
        found = await run_in_threadpool(things.describe, services.iot, thingName)
        device = await run_in_threadpool(services.inventory().device, found["thingName"])
        if device and TASK_ID.match(str(device.get("run_id") or "")):
            found["taskId"] = device["run_id"]
        return cdf_response(200, found)

    @api.delete("/things/{thingName}")
    async def delete_thing(thingName: str) -> Response:  # noqa: N803
        from include.cdf import things

        services = backend.services()
        await run_in_threadpool(things.delete, services.iot, services.inventory(), thingName)
        return cdf_response(204)

    @api.patch("/things/{thingName}/certificates")
    async def update_certificates(thingName: str, request: Request) -> Response:  # noqa: N803
        from include.cdf import things

        things.check_thing_name(thingName)
        body = parse(PatchCertificateRequest, await json_body(request))
        await run_in_threadpool(
            things.set_certificate_status, backend.services().iot, thingName, body.certificateStatus
        )
        return cdf_response(204)

    @api.post("/bulkthings")
    async def bulk_provision(request: Request) -> Response:
        from include.cdf import bulk_plan

        body = parse(BulkRegistrationRequest, await json_body(request))
        plan = await run_in_threadpool(
            bulk_plan.plan_bulk,
            backend.services(),
            body.provisioningTemplateId,
            body.parameters,
            body.cdfProvisioningParameters,
        )
        await run_in_threadpool(backend.runner.check, plan)
        store = backend.store()
        task = await run_in_threadpool(store.create, plan, backend.runner.name, backend.dag_id)
        await run_in_threadpool(backend.runner.submit, task, getattr(request.state, "user", None))
        return cdf_response(201, await run_in_threadpool(_status, backend, task))

    @api.get("/bulkthings/{taskId}")
    async def bulk_task(taskId: str) -> Response:  # noqa: N803
        task = await run_in_threadpool(backend.store().get, taskId)
        if task is None:
            raise NotFound(f"bulk task {taskId[:80]} does not exist")
        return cdf_response(200, await run_in_threadpool(_status, backend, task))

    return api


def _status(backend: Backend, task: BulkTask) -> dict[str, Any]:
    from include.cdf import bulk_tasks

    s3, iot, _ = backend.clients()
    settings = backend.config.settings
    return bulk_tasks.status(
        task,
        backend.services().inventory(),
        iot,
        s3,
        bucket=settings.bucket,
        work_prefix=settings.work_prefix,
        # A task another kind of runner took (a standalone server on this state): the inventory tells.
        runner=backend.runner.state(task) if task.runner == backend.runner.name else None,
    )
