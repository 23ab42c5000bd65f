"""ReadFront: reads go straight to their handler, everything else to the application, failures are 500s."""

from __future__ import annotations

import asyncio

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from channels.fhir.front import ReadFront


async def _app_route(request: Request) -> Response:
    return PlainTextResponse(f"app:{request.url.path}")


async def _read(request: Request) -> Response:
    if request.path_params["res_id"] == "boom":
        raise RuntimeError("bug")
    return PlainTextResponse(f"read:{request.path_params['res_type']}/{request.path_params['res_id']}")


async def _failed(request: Request, exc: Exception) -> Response:
    return PlainTextResponse(f"failed:{type(exc).__name__}", 500)


FRONT = ReadFront(Starlette(routes=[Route("/{path:path}", _app_route, methods=["GET", "POST"])]), _read, _failed)


def _get(path: str, method: str = "GET") -> tuple[int, str]:
    async def go() -> tuple[int, str]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=FRONT), base_url="http://t") as client:
            response = await client.request(method, path)
            return response.status_code, response.text

    return asyncio.run(go())


def test_a_read_of_a_served_type_goes_to_the_read_handler_with_its_path_parameters() -> None:
    assert _get("/fhir/ImagingStudy/1.2.3") == (200, "read:ImagingStudy/1.2.3")
    assert _get("/fhir/Patient/42") == (200, "read:Patient/42")


def test_everything_else_goes_to_the_application() -> None:
    for path in ("/fhir/metadata", "/fhir/ImagingStudy", "/fhir/ImagingStudy/_history", "/fhir/Observation/1",
                 "/fhir/.well-known/smart-configuration", "/fhir/ImagingStudy/1/_history", "/fhir/Patient/a_b",
                 "/auth/token", "/other/Patient/1"):
        assert _get(path) == (200, f"app:{path}"), path
    assert _get("/fhir/Patient/1", "POST") == (200, "app:/fhir/Patient/1")


def test_an_unexpected_exception_is_answered_by_the_failure_handler() -> None:
    assert _get("/fhir/Patient/boom") == (500, "failed:RuntimeError")
