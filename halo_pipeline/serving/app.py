"""The OpenAI-compatible app: the shared `Server`, the ASGI guard, the error handlers and one router per
endpoint family. Every request that takes engine time holds an admission ticket (`admission.py`)."""

from __future__ import annotations

from typing import Any

from halo_pipeline.serving.core import Engine
from halo_pipeline.serving.server import Server, Settings


def create_app(engine: Engine, settings: Settings) -> Any:
    from fastapi import FastAPI

    from halo_pipeline.serving import chat, completions, embeddings, models
    from halo_pipeline.serving.admission import Guard
    from halo_pipeline.serving.errors import add_handlers

    app = FastAPI(title="halo-pipeline serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = Server(engine, settings)
    app.add_middleware(Guard, api_key=settings.api_key, max_body_bytes=settings.max_body_bytes)
    add_handlers(app, settings.retry_after_s)
    for module in (models, chat, completions, embeddings):
        app.include_router(module.router)
    return app
