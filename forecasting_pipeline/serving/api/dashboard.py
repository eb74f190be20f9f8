"""The dashboard at ``/``: a static page that reads only the service's read endpoints (no database credentials)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parents[1] / "static"

router = APIRouter(tags=["dashboard"])


@router.get("/", include_in_schema=False)
def page() -> FileResponse:
    return FileResponse(STATIC / "dashboard.html", media_type="text/html")


def static_files() -> StaticFiles:
    """The page's script, style and the charting library (served from the package: no CDN)."""
    return StaticFiles(directory=STATIC)
