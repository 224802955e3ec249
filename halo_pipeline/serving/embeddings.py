"""`/v1/embeddings`: strings or token ids, floats or base64."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import numpy as np
from fastapi import APIRouter
from starlette.requests import Request  # at module level: FastAPI resolves the routes' annotations here

from halo_pipeline.serving.admission import while_connected
from halo_pipeline.serving.api import EmbeddingRequest
from halo_pipeline.serving.common import refuse_unsupported
from halo_pipeline.serving.errors import bad_request
from halo_pipeline.serving.server import server_of

router = APIRouter()


@router.post("/v1/embeddings")
async def embeddings(req: EmbeddingRequest, request: Request) -> Any:
    server = server_of(request)
    engine, settings = server.engine, server.settings
    adapter = server.check_model(req.model)
    refuse_unsupported(req)
    raw = req.input
    if isinstance(raw, str):
        inputs: list[str | list[int]] = [raw]
    elif raw and all(isinstance(x, int) for x in raw):
        inputs = [[int(x) for x in raw]]  # type: ignore[arg-type]
    else:
        inputs = list(raw)  # type: ignore[arg-type]
    if not 1 <= len(inputs) <= settings.max_embedding_inputs:
        raise bad_request(f"input takes 1 to {settings.max_embedding_inputs} strings; got {len(inputs)}", "input")
    many = len(inputs) > 1 or not isinstance(raw, str)

    def tokenize() -> list[list[int]]:
        return [server.prompt_ids(x) if isinstance(x, str) else x for x in inputs]

    ids = await asyncio.to_thread(tokenize)
    for i, one in enumerate(ids):
        what = f"input[{i}]" if many else "input"
        server.check_fits(len(one), "input", what)
        if not one:
            raise bad_request(f"{what} is empty", "input")
        if not isinstance(inputs[i], str):
            server.check_token_ids(one, "input", what)
    ticket = server.admit(request, 1)
    vectors = await while_connected(request, server.score(ticket, engine.embed, ids, adapter))
    tokens = sum(len(one) for one in ids)
    encode = _base64_floats if req.encoding_format == "base64" else (lambda v: v)
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
        "model": adapter or settings.model_id,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _base64_floats(vector: list[float]) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
