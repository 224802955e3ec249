"""`/health` and `/v1/models`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request

from halo_pipeline.serving.server import server_of

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    return server_of(request).health()


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": server_of(request).models()}
