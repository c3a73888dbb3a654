"""OpenAI's `/v1/files` and `/v1/batches` routes; the ingress includes this router and installs its BatchApi."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import Response

from cluster.config import SurgeConfig
from deployments.admission.gate import AdmissionGate
from deployments.batch.api import BatchApi, CreateBatch, file_object
from deployments.errors import ServiceUnavailable

__all__ = ["install", "router"]

router = APIRouter()
# One per ingress replica process (the ingress installs it in its constructor).
_installed: tuple[BatchApi, AdmissionGate] | None = None


def install(config: SurgeConfig, gate: AdmissionGate) -> BatchApi | None:
    """Serve the Batch API from this process with the ingress's gate; None when it is disabled."""
    global _installed
    if not config.batch.enabled:
        return None
    api = BatchApi(config.batch, config.admission.key_store_dsn)
    _installed = (api, gate)
    return api


async def _caller(request: Request) -> tuple[BatchApi, str]:
    if _installed is None:
        raise ServiceUnavailable("the Batch API is not enabled on this server", code="batch_api_disabled")
    api, gate = _installed
    tenant = await gate.authenticate(request.headers.get("authorization"))
    return api, tenant.name


@router.post("/v1/files")
async def create_file(
    request: Request, file: Annotated[UploadFile, File()], purpose: Annotated[str, Form()]
) -> dict[str, Any]:
    api, tenant = await _caller(request)
    data = await file.read()
    return await api.upload(tenant, file.filename or "", purpose, data)


@router.get("/v1/files")
async def list_files(request: Request, purpose: str | None = None, limit: int = 10_000) -> dict[str, Any]:
    api, tenant = await _caller(request)
    return await api.files(tenant, purpose, limit)


@router.get("/v1/files/{file_id}")
async def get_file(request: Request, file_id: str) -> dict[str, Any]:
    api, tenant = await _caller(request)
    return file_object(await api.file(tenant, file_id))


@router.get("/v1/files/{file_id}/content")
async def file_content(request: Request, file_id: str) -> Response:
    api, tenant = await _caller(request)
    return Response(await api.content(tenant, file_id), media_type="application/jsonl")


@router.delete("/v1/files/{file_id}")
async def delete_file(request: Request, file_id: str) -> dict[str, Any]:
    api, tenant = await _caller(request)
    return await api.delete(tenant, file_id)


@router.post("/v1/batches")
async def create_batch(request: Request, body: CreateBatch) -> dict[str, Any]:
    api, tenant = await _caller(request)
    return await api.create_batch(tenant, body)


@router.get("/v1/batches")
async def list_batches(request: Request, after: str | None = None, limit: int = 20) -> dict[str, Any]:
    api, tenant = await _caller(request)
    return await api.batches(tenant, after, limit)


@router.get("/v1/batches/{batch_id}")
async def get_batch(request: Request, batch_id: str) -> dict[str, Any]:
    api, tenant = await _caller(request)
    return await api.batch(tenant, batch_id)


@router.post("/v1/batches/{batch_id}/cancel")
async def cancel_batch(request: Request, batch_id: str) -> dict[str, Any]:
    api, tenant = await _caller(request)
    return await api.cancel(tenant, batch_id)
