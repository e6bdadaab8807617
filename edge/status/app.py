"""FastAPI app factory for the local status page.

``create_app(source, token)`` takes its dependencies: ``source`` is anything with
``snapshot() -> dict`` and ``camera_view(id) -> CameraView | None`` (the :class:`Daemon`,
or a stand-in built from real parts in tests), ``token`` the shared secret.

Routes: ``/`` (HTML), ``/api/status`` (JSON), ``/cameras/{id}/frame.jpg`` (latest classified
frame with the camera's zones, the prediction's pet regions and its label drawn on it),
``/metrics`` (Prometheus text), ``/healthz`` (open: load balancers and ``systemctl`` probes need
no secret; it reveals only ok/not ok).
Everything else needs the token: ``Authorization: Bearer …``, the ``parkwatch_token`` cookie,
or ``?token=…`` once (which sets the cookie, so a technician pastes one link).
"""

from __future__ import annotations

import hmac
import html
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from edge.status.metrics import CONTENT_TYPE, render_metrics

COOKIE = "parkwatch_token"
TEMPLATES = Path(__file__).parent / "templates"


class StatusSource(Protocol):
    def snapshot(self) -> dict[str, Any]: ...

    def camera_view(self, camera_id: str) -> Any: ...

    # optional: ``retry_camera(id) -> bool | None`` (None: no such camera) enables "retry now"


def _ago(ts: float | None) -> str:
    if not ts:
        return "never"
    d = max(time.time() - ts, 0)
    if d < 90:
        return f"{d:.0f} s ago"
    if d < 5400:
        return f"{d / 60:.0f} min ago"
    return f"{d / 3600:.1f} h ago"


def _clock(ts: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) if ts else "-"


LABEL_COLOURS = {"cat": (0, 165, 255), "dog": (255, 120, 60)}  # BGR: orange, blue
ZONE_COLOUR = (230, 230, 0)  # cyan


def _text(
    img: np.ndarray, text: str, org: tuple[int, int], scale: float, colour: tuple[int, int, int]
) -> None:
    """Text with a dark outline, readable on any part of a frame."""
    thick = max(int(2 * scale), 1)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(img, text, org, font, 0.7 * scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
    cv2.putText(img, text, org, font, 0.7 * scale, colour, thick, cv2.LINE_AA)


def draw_prediction(
    image: np.ndarray,
    pred: dict[str, Any] | None,
    flags: list[str],
    zones: Sequence[Any] = (),
) -> bytes:
    """JPEG of ``image`` with the camera's zones (cyan outlines, named), the regions of the last
    prediction that held a pet (a box per region with its label and confidence), and a band with
    the frame's label (a pet, ``none`` or ``abstain``), ``IR`` for a night frame, and the integrity
    flags. Zones are ``edge.perception.regions.Zone`` (``name``, ``points`` in frame pixels)."""
    img = np.ascontiguousarray(image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)).copy()
    w = img.shape[1]
    scale = max(w / 640, 0.5)
    line = max(int(2 * scale), 1)
    band = int(36 * scale)
    below_band = band + int(24 * scale)  # labels of boxes at the top edge go under the band
    for z in zones:
        pts = np.array([[round(x), round(y)] for x, y in z.points], dtype=np.int32)
        cv2.polylines(img, [pts], isClosed=True, color=ZONE_COLOUR, thickness=line, lineType=cv2.LINE_AA)
        x0, y0 = int(pts[:, 0].min()), int(pts[:, 1].min())
        _text(img, f"zone {z.name}", (x0 + 4, max(y0 + int(22 * scale), below_band)), scale, ZONE_COLOUR)
    for r in (pred or {}).get("regions") or []:
        x, y, bw, bh = (int(v) for v in r["box"])
        colour = LABEL_COLOURS.get(r["label"], (80, 220, 80))
        cv2.rectangle(img, (x, y), (x + bw - 1, y + bh - 1), colour, line + 1)
        label = f"{r['label']} {r['confidence'] * 100:.0f}%"
        _text(img, label, (x + 4, max(y + int(24 * scale), below_band)), scale, colour)
    cv2.rectangle(img, (0, 0), (w, band), (0, 0, 0), -1)
    if pred is None:
        text, colour = "no prediction (no model?)", (200, 200, 200)
    else:
        text = f"{pred['label']} {pred['confidence'] * 100:.0f}%"
        if pred.get("abstain"):
            colour = (0, 200, 255)
        elif pred["label"] == "none":
            colour = (200, 200, 200)
        else:
            colour = (80, 220, 80)
        if pred.get("ir"):
            text += "  IR"
    if flags:
        text += "  [" + ", ".join(flags) + "]"
        colour = (0, 140, 255)
    cv2.putText(
        img,
        text,
        (int(8 * scale), int(band * 0.72)),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.8 * scale,
        colour,
        max(int(2 * scale), 1),
        cv2.LINE_AA,
    )
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return buf.tobytes() if ok else b""


def create_app(source: StatusSource, token: str) -> FastAPI:
    if not token:
        raise ValueError("the status page needs a non-empty token")
    app = FastAPI(title="parkwatch edge status", docs_url=None, redoc_url=None, openapi_url=None)
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]))
    env.filters["ago"] = _ago
    env.filters["clock"] = _clock
    template = env.get_template("index.html")

    def presented(request: Request) -> str | None:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return request.query_params.get("token") or request.cookies.get(COOKIE)

    @app.middleware("http")
    async def require_token(request: Request, call_next: Any) -> Response:
        if request.url.path == "/healthz":
            return await call_next(request)
        got = presented(request)
        if got is None or not hmac.compare_digest(got.encode(), token.encode()):
            msg = (
                "missing or wrong token: open /?token=<token> once, or send 'Authorization: Bearer "
                "<token>'; the token is in the file named by [status_page] token in the edge config "
                "(install-edge.sh writes /etc/parkwatch/status-token), or, when the config names "
                "none, in status-token under the box's state_dir"
            )
            if "text/html" in request.headers.get("accept", ""):
                body = (
                    "<!doctype html><title>parkwatch: token needed</title><h1>Token needed</h1>"
                    f"<p>{html.escape(msg)}</p>"
                )
                return HTMLResponse(body, status_code=401)
            return JSONResponse({"ok": False, "error": msg}, status_code=401)
        wants_html = "text/html" in request.headers.get("accept", "")
        if "token" in request.query_params and request.method == "GET" and wants_html:
            # Move the token from the URL (history, logs) into an HttpOnly cookie.
            url = request.url.remove_query_params("token")
            resp = RedirectResponse(url.path + (f"?{url.query}" if url.query else ""), status_code=303)
            resp.set_cookie(COOKIE, got, httponly=True, samesite="strict")
            return resp
        response: Response = await call_next(request)
        return response

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        failing = health_failures(source.snapshot())
        if not failing:
            return JSONResponse({"ok": True})
        return JSONResponse({"ok": False, "failing": failing}, status_code=503)

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        snap = source.snapshot()
        return HTMLResponse(template.render(s=snap, verdict=verdict(snap), now=time.time()))

    @app.get("/api/status")
    def api_status() -> JSONResponse:
        snap = source.snapshot()
        snap["verdict"] = verdict(snap)
        return JSONResponse(snap)

    @app.get("/cameras/{camera_id}/frame.jpg")
    def frame(camera_id: str) -> Response:
        view = source.camera_view(camera_id)
        if view is None:
            return PlainTextResponse(f"no frame from camera {camera_id} yet", status_code=404)
        jpg = draw_prediction(view.frame.image, view.prediction, view.flags, getattr(view, "zones", ()))
        return Response(jpg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    @app.post("/cameras/{camera_id}/retry")
    def retry(camera_id: str, request: Request) -> Response:
        """Try a failing camera again now instead of after its backoff (a power-cycled camera
        waited 54 s). Token-protected like every route but /healthz; the cookie is SameSite."""
        fn = getattr(source, "retry_camera", None)
        result = fn(camera_id) if fn is not None else None
        if result is None:
            return JSONResponse({"ok": False, "error": f"no camera {camera_id!r}"}, status_code=404)
        if "text/html" in request.headers.get("accept", ""):
            return RedirectResponse("/", status_code=303)
        return JSONResponse({"ok": True, "retrying": result})

    @app.get("/metrics")
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(render_metrics(source.snapshot()), media_type=CONTENT_TYPE)

    return app


def health_failures(snap: dict[str, Any]) -> list[str]:
    """What makes the quick check fail: a box classifies nothing without its loop, a model, or
    one camera giving frames. Names only (``/healthz`` needs no token)."""
    failing = []
    if not snap.get("healthy"):
        failing.append("inference-loop")
    if snap.get("model") is None:
        failing.append("model")
    cams = snap.get("cameras", [])
    if not any(c["state"] in ("streaming", "stalled") for c in cams):
        failing.append("cameras")
    return failing


def verdict(snap: dict[str, Any]) -> dict[str, Any]:
    """The one line a person reads first: all good, or the most urgent problems in plain words."""
    problems: list[str] = []
    warnings: list[str] = []
    if not snap.get("healthy"):
        problems.append("the inference loop is not running: restart the service (see docs/technician.md)")
    if snap.get("model") is None:
        problems.append("no model is loaded: predictions cannot be made")
    if not snap["broker"]["connected"]:
        why = snap["broker"].get("last_error")
        warnings.append(
            "not connected to the cloud broker"
            + (f" ({why})" if why else "")
            + ": predictions are kept in the outbox"
        )
    for cam in snap.get("cameras", []):
        if cam["state"] in ("offline", "reconnecting"):
            problems.append(f"camera {cam['id']} is {cam['state']}")
        elif cam["state"] == "stalled":
            warnings.append(f"camera {cam['id']} is stalled (no frames)")
        for f in cam.get("flags") or []:
            warnings.append(f"camera {cam['id']}: {f}")
    # Counters only ever grow: warn on what happened lately (snap["recent"]), so the banner
    # returns to green once the cause is gone; the lifetime totals stay in the tables below.
    ob = snap["outbox"]
    und = ob.get("undelivered")
    if und and snap["broker"]["connected"]:
        what = (
            "broker has no subscriber for predictions"
            if und["no_subscriber"]
            else f"broker does not accept predictions ({und['reason']})"
        )
        warnings.append(f"{what}; {ob['backlog']} waiting, retrying in {und['retry_in_s']:.0f} s")
    recent = snap.get("recent") or {}
    minutes = f"{recent.get('window_s', 600) / 60:.0f} min"
    if recent.get("write_errors"):
        problems.append(
            f"{recent['write_errors']} outbox write error(s) in the last {minutes} "
            f"({ob.get('last_error') or ''})"
        )
    if recent.get("lost_predictions"):
        problems.append(f"{recent['lost_predictions']} prediction(s) lost in the last {minutes} (disk full?)")
    if recent.get("evicted"):
        warnings.append(
            f"{recent['evicted']} prediction(s) evicted by the outbox bound in the last {minutes}"
        )
    level = "bad" if problems else "warn" if warnings else "ok"
    return {
        "level": level,
        "problems": problems,
        "warnings": warnings,
        "text": "All good" if level == "ok" else (problems + warnings)[0],
    }
