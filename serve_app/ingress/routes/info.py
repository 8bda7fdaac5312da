"""The service's own routes: the index, health (public), the presets and model loads (keyed)."""

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from ... import __version__
from ..openapi import errors
from ..params import API, KEYED, ServiceDep
from ..schemas import HealthResponse, LoadModelResponse, ModelsResponse

router = APIRouter()

INDEX = {
    "name": "Qwen Image Edit API", "version": __version__, "docs": "/docs", "redoc": "/redoc",
    "endpoints": {
        "health": f"{API}/health", "models": f"{API}/models", "load_model": f"{API}/load-model",
        "submit": f"{API}/submit", "status": f"{API}/status/{{job_id}}",
        "result": f"{API}/status/{{job_id}}/result", "preview": f"{API}/status/{{job_id}}/preview",
        "queue": f"{API}/queue", "edit": f"{API}/edit",
        "events": f"{API}/status/{{job_id}}/events", "cancel": f"DELETE {API}/status/{{job_id}}",
        "jobs": f"{API}/jobs", "ui": "/ui/",
    },
}


@router.get("/", tags=["info"], responses={200: {"content": {"application/json": {"example": {
    "name": "Qwen Image Edit API", "version": __version__, "docs": "/docs", "redoc": "/redoc",
    "endpoints": {"submit": f"{API}/submit", "status": f"{API}/status/{{job_id}}", "...": "..."}}}}}})
async def index() -> dict:
    return INDEX

@router.get(f"{API}/health", response_model=HealthResponse, tags=["info"], responses={503: {
    "model": HealthResponse,
    "description": "degraded: the queue is not reachable, or no model worker can run; unhealthy: the job "
                   "database is damaged (see warnings)"}})
async def health(service: ServiceDep):
    body, reachable = await service.health()
    return body if reachable else JSONResponse(body, status_code=503)


@router.get(f"{API}/models", response_model=ModelsResponse, dependencies=KEYED, responses=errors(401, 503),
         tags=["models"])
async def models(service: ServiceDep):
    return await service.models()

@router.post(f"{API}/load-model", response_model=LoadModelResponse, dependencies=KEYED, tags=["models"],
          responses=errors(400, 401, 409, 422, 503, e400="Unknown preset, or its weights are not on this server.",
                           e409="Another model load is running; try again when it finishes."))
async def load_model(service: ServiceDep,
                     model: Annotated[str, Query(description="preset name or alias", examples=["qwen-8step"])]):
    return await service.load_model(model)
