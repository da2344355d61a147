"""The HTTP contract of every route: authentication, media types, body limits, errors, unknown routes."""

from __future__ import annotations

import json

import httpx
import pytest

from plugins.cdf_api.media import MAX_BODY, MEDIA_TYPE
from tests.cdf.conftest import CDF, TOKEN

ROUTES = [
    ("POST", "/things", {"provisioningTemplateId": "cdf-own-ca", "parameters": {"ThingName": "x"}}),
    ("GET", "/things/some-thing", None),
    ("DELETE", "/things/some-thing", None),
    ("PATCH", "/things/some-thing/certificates", {"certificateStatus": "ACTIVE"}),
    ("POST", "/bulkthings", {"provisioningTemplateId": "cdf-own-ca", "parameters": [{"ThingName": "x"}]}),
    ("GET", "/bulkthings/cdf_bulk__20260101T000000.000000Z_00000000", None),
]


def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == MEDIA_TYPE
    body = response.json()
    assert set(body) == {"error"} and body["error"]
    return body["error"]


def test_health_is_open_and_nothing_else_is(cdf_api) -> None:
    assert cdf_api.client.get("/health").json() == {"status": "ok"}
    assert cdf_api.client.get("/health").status_code == 200


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_every_route_needs_the_bearer_token(cdf_api, method: str, path: str, body: object) -> None:
    content = json.dumps(body) if body is not None else None
    missing = cdf_api.client.request(method, path, content=content, headers=CDF)
    assert "authentication required" in _error(missing, 401)
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = cdf_api.client.request(
        method, path, content=content, headers={**CDF, "Authorization": "Bearer nope"}
    )
    assert "not this server's development token" in _error(wrong, 401)
    basic = cdf_api.client.request(
        method, path, content=content, headers={**CDF, "Authorization": f"Basic {TOKEN}"}
    )
    _error(basic, 401)


def test_unknown_routes_need_the_token_too_and_answer_cdf_errors(cdf_api) -> None:
    _error(cdf_api.client.get("/nothing-here", headers=CDF), 401)
    assert "no route GET /nothing-here" in _error(cdf_api.call("GET", "/nothing-here"), 404)
    assert "PUT is not allowed" in _error(cdf_api.call("PUT", "/things/a"), 405)


@pytest.mark.parametrize(
    "accept", [None, "application/json", "*/*", "text/html", "application/vnd.aws-cdf-v2.0+json"]
)
@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_any_other_accept_is_415(cdf_api, method: str, path: str, body: object, accept: str | None) -> None:
    headers = {"Content-Type": MEDIA_TYPE, "Authorization": f"Bearer {TOKEN}"}
    if accept is not None:
        headers["Accept"] = accept
    content = json.dumps(body) if body is not None else None
    response = cdf_api.client.request(method, path, content=content, headers=headers)
    assert f"send Accept: {MEDIA_TYPE}" in _error(response, 415)


def test_accept_lists_and_parameters_are_read(cdf_api) -> None:
    listed = cdf_api.call("GET", "/things/absent-thing", headers={"Accept": f"text/html, {MEDIA_TYPE};q=0.9"})
    assert listed.status_code == 404
    refused = cdf_api.call("GET", "/things/absent-thing", headers={"Accept": f"{MEDIA_TYPE};q=0"})
    assert refused.status_code == 415


@pytest.mark.parametrize(
    "content_type", [None, "application/json", "text/plain", "application/x-www-form-urlencoded"]
)
@pytest.mark.parametrize(("method", "path", "body"), [r for r in ROUTES if r[2] is not None])
def test_any_other_content_type_is_415(
    cdf_api, method: str, path: str, body: object, content_type: str | None
) -> None:
    headers = {"Accept": MEDIA_TYPE, "Authorization": f"Bearer {TOKEN}"}
    if content_type:
        headers["Content-Type"] = content_type
    response = cdf_api.client.request(method, path, content=json.dumps(body), headers=headers)
    assert f"send Content-Type: {MEDIA_TYPE}" in _error(response, 415)


def test_charset_parameter_is_fine(cdf_api) -> None:
    response = cdf_api.call(
        "PATCH",
        "/things/absent-thing/certificates",
        {"certificateStatus": "ACTIVE"},
        headers={"Content-Type": f"{MEDIA_TYPE}; charset=utf-8"},
    )
    assert "thing absent-thing does not exist" in _error(response, 404)


def test_bodies_over_10_mb_are_413_announced_or_chunked(cdf_api) -> None:
    big = (
        b'{"provisioningTemplateId": "x", "parameters": ['
        + b'{"ThingName": "a"},' * (MAX_BODY // 18)
        + b"{}]}"
    )
    assert len(big) > MAX_BODY
    headers = {**CDF, "Authorization": f"Bearer {TOKEN}"}
    announced = cdf_api.client.post("/bulkthings", content=big, headers=headers)
    assert "at most 10485760" in _error(announced, 413)

    def chunks():
        for start in range(0, len(big), 1 << 20):
            yield big[start : start + (1 << 20)]

    chunked = cdf_api.client.post("/bulkthings", content=chunks(), headers=headers)
    assert "larger than 10485760" in _error(chunked, 413)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "the request body is empty"),
        (b"{not json", "not valid JSON"),
        (b"[]", "body: input should be a valid dictionary"),
        (b"{}", "provisioningTemplateId: is required"),
        (b'{"provisioningTemplateId": 3, "parameters": {}}', "provisioningTemplateId: must be a string"),
        (b'{"provisioningTemplateId": "cdf-own-ca"}', "parameters: is required"),
        (
            b'{"provisioningTemplateId": "cdf-own-ca", "parameters": []}',
            "parameters: input should be a valid dictionary",
        ),
        (
            b'{"provisioningTemplateId": "", "parameters": {}}',
            "provisioningTemplateId: is required and must be a non-empty",
        ),
        (
            b'{"provisioningTemplateId": "a/b", "parameters": {}}',
            "provisioningTemplateId 'a/b': may hold letters",
        ),
        (
            b'{"provisioningTemplateId": "cdf-own-ca", "parameters": {"ThingName": 5}}',
            "parameters.ThingName: must be a string",
        ),
    ],
)
def test_post_things_bad_bodies_name_the_field(cdf_api, body: bytes, message: str) -> None:
    response = cdf_api.client.post(
        "/things", content=body, headers={**CDF, "Authorization": f"Bearer {TOKEN}"}
    )
    assert message in _error(response, 400)


def test_unknown_template_is_404_naming_both_places(cdf_api) -> None:
    response = cdf_api.call(
        "POST", "/things", {"provisioningTemplateId": "no-such-template", "parameters": {}}
    )
    error = _error(response, 404)
    assert "s3://factory-provisioning/templates/no-such-template.json" in error
    assert "no catalog product no-such-template" in error


def test_unknown_bulk_task_is_404_never_an_empty_200(cdf_api) -> None:
    assert "does not exist" in _error(
        cdf_api.call("GET", "/bulkthings/cdf_bulk__20260101T000000.000000Z_00000000"), 404
    )
    assert "does not exist" in _error(cdf_api.call("GET", "/bulkthings/whatever"), 404)


def test_invalid_thing_names_are_400(cdf_api) -> None:
    assert "may hold letters, digits" in _error(cdf_api.call("GET", "/things/bad%20name"), 400)
    assert "may hold letters, digits" in _error(cdf_api.call("DELETE", "/things/" + "a" * 129), 400)
