"""The Ray Serve application of `streamer serve`: `Replica` (FastAPI ingress: the WebSocket sessions,
the page, /health, /metrics, /info), one per GPU or CPU engine set, each holding one batched runtime
paced every 160 ms; and `Board`, which every replica reports to once a second so /metrics and /health
cover them all. A session's WebSocket is one request to one replica: it stays there for its life;
`serve.router.LeastSessionsRouter` sends a new one to the replica with the most free slots.
"""
import logging  # no `from __future__ import annotations`: FastAPI reads the handlers' annotations
import threading
import time
from importlib import resources

from fastapi import FastAPI, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from ray import serve as ray_serve

from .connection import serve_session
from .hub import SessionHub
from .metrics import FORGET_S, prometheus_text
from .metrics import health as health_summary
from .pacer import Pacer
from .protocol import PATH, Limits, spec_info
from .raynet import loopback_replica_grpc
from .rows import open_rows
from .words import text_words

APP_NAME = "av-streamer"
ROUTER = "serve.router:LeastSessionsRouter"
STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "capture-worklet.js": "text/javascript; charset=utf-8"}
REPORT_S = 1.0
log = logging.getLogger("av_streamer.serve")

api = FastAPI(title="av-streamer", docs_url=None, redoc_url=None, openapi_url=None)


def static_file(name: str) -> bytes | None:
    """A file of serve/static by name, if it is one of the page's files (no paths are taken from requests)."""
    if name not in STATIC:
        return None
    return resources.files("serve").joinpath("static", name).read_bytes()


@ray_serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
class Board:
    """Every replica's last snapshot (serve/metrics.py); a replica that stops reporting shows as down."""

    def __init__(self) -> None:
        loopback_replica_grpc()
        self.snapshots: dict[str, dict] = {}

    def report(self, snapshot: dict) -> None:
        now = time.time()
        self.snapshots[snapshot["replica"]] = snapshot
        for r in [r for r, s in self.snapshots.items() if now - s["time"] > FORGET_S]:
            del self.snapshots[r]

    def text(self) -> str:
        return prometheus_text(self.snapshots)

    def health(self) -> dict:
        return health_summary(self.snapshots)

    def all(self) -> dict:
        return self.snapshots


@ray_serve.deployment
@ray_serve.ingress(api)
class Replica:
    """One batched runtime and its sessions. config: engines (a path every node can read), slots,
    threads, trust, rows ("auto" | "batched" | "unbatched"), grace_ms, limits (Limits' fields)."""

    def __init__(self, config: dict, board) -> None:
        loopback_replica_grpc()  # before Serve opens this replica's own gRPC port (after __init__)
        context = ray_serve.get_replica_context()
        self.replica = context.replica_id.unique_id
        rows, self.kind, slots = open_rows(config["engines"], config.get("slots"), config.get("threads"),
                                           config.get("trust"), config.get("rows", "auto"))
        self.spec = rows.spec
        self.hub = SessionHub(rows, slots, rows.spec, Limits(**config.get("limits", {})),
                              config.get("grace_ms", 40) / 1000.0, self.replica, self.kind)
        self.pacer = Pacer(self.hub).start()
        self.board, self._stop = board, threading.Event()
        self.reporter = threading.Thread(target=self._report, name="avs-report", daemon=True)
        self.reporter.start()

    def _report(self) -> None:
        """Send this replica's snapshot to the board once a second (its own thread: never the pacer's)."""
        while True:  # the first report at once: /health answers ok as soon as the replica is up
            with self.hub.lock:
                snapshot = self.hub.metrics.snapshot()
            snapshot["ok"] = self.pacer.alive() and not self.hub.failed
            try:
                self.board.report.remote(snapshot).result(timeout_s=5)
            except Exception as e:  # the board restarts with the application; the next report goes through
                log.warning("metrics report failed: %s", e)
            if self._stop.wait(REPORT_S):
                return

    @api.websocket(PATH)
    async def session(self, websocket: WebSocket) -> None:
        await serve_session(websocket, self.hub, self.replica, self.kind)

    @api.get("/")
    def index(self) -> HTMLResponse:
        return HTMLResponse(static_file("index.html"))

    @api.get("/static/{name}")
    def static(self, name: str) -> Response:
        data = static_file(name)
        if data is None:
            return PlainTextResponse(f"no such file: expected one of {sorted(STATIC)}", status_code=404)
        return Response(data, media_type=STATIC[name], headers={"Cache-Control": "no-cache"})

    @api.get("/info")
    def info(self) -> dict:
        return {"protocol": 1, "path": PATH, "spec": spec_info(self.spec), "limits": self.hub.limits.as_dict(self.spec),
                "rows": self.kind, "slots": self.hub.slots, "words": text_words()}

    @api.get("/health")
    async def health(self) -> JSONResponse:
        """200 with every replica's totals while this replica ticks; 503 when it cannot run sessions."""
        ok = self.pacer.alive() and not self.hub.failed
        try:
            summary = await self.board.health.remote()
        except Exception as e:
            summary = {"board": f"unreachable: {e}"}
        return JSONResponse({"ok": ok, "replica": self.replica, **summary}, status_code=200 if ok else 503)

    @api.get("/metrics")
    async def metrics(self) -> PlainTextResponse:
        return PlainTextResponse(await self.board.text.remote(), media_type="text/plain; version=0.0.4; charset=utf-8")

    def check_health(self) -> None:
        """Ray Serve's health check: a replica whose clock stopped or whose runtime failed is replaced."""
        if not self.pacer.alive() or self.hub.failed:
            raise RuntimeError(f"replica {self.replica}: {self.hub.failed or self.pacer.error or 'its clock stopped'}")

    def __del__(self) -> None:
        self._stop.set()
        self.pacer.stop()
        self.hub.close()
        self.hub.rows.close()


def build_app(config: dict, replicas: int, slots: int, gpus_per_replica: float = 0.0, cpus_per_replica: float = 1.0):
    """The bound application: `replicas` replicas of `slots` sessions each, and the board."""
    from ray.serve.config import RequestRouterConfig

    spare = max(8, slots)  # requests beyond the sessions: /health, /metrics, the page, refusals (server_full)
    return Replica.options(
        num_replicas=replicas, max_ongoing_requests=slots + spare, max_queued_requests=4 * (slots + spare),
        ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica},
        request_router_config=RequestRouterConfig(request_router_class=ROUTER),
        health_check_period_s=2.0, health_check_timeout_s=30.0, graceful_shutdown_timeout_s=5.0,
        logging_config={"log_level": "WARNING", "enable_access_log": False},
    ).bind({**config, "slots": slots}, Board.options(logging_config={"log_level": "WARNING",
                                                                      "enable_access_log": False}).bind())
