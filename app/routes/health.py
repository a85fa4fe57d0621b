"""Liveness: the app answers, and its caches are not needed to say so."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel

from app.render import STATIC

router = APIRouter()


class Health(BaseModel):
    status: str


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    # Answered on the event loop: it never waits for a thread, a build or a cache.
    return Health(status="ok")


@router.get("/favicon.ico", include_in_schema=False)
def favicon() -> FileResponse:
    """Browsers ask for it whatever the page says; answer with the icon the pages name."""
    return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")


class Memory(BaseModel):
    """What the byte budget holds (SPTELAB_CACHE_BYTES): the limit, the bytes every cache holds now
    (with the reserve booked for fixed-size memoisations), the most they held once an insertion was
    settled, and how many entries were evicted to stay within it."""

    limit: int
    total: int
    peak: int
    evictions: int


@router.get("/healthz/memory", response_model=Memory)
def memory(request: Request) -> Memory:
    return Memory(**request.app.state.store.budget.stats())
