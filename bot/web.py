"""The HTTP listener: Slack events (HTTP mode), liveness and readiness probes, Prometheus metrics."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.health import Readiness
from bot.metrics import Metrics
from bot.slack.envelope import MalformedBody, parse_slack_body

log = logging.getLogger(__name__)


class WebServer:
    """aiohttp app; `accepting` turns False at shutdown (draining) so new events go to another replica."""

    def __init__(self, engine: AsyncEngine, metrics: Metrics, bolt: AsyncApp | None) -> None:
        self._metrics = metrics
        self._bolt = bolt
        self.readiness = Readiness(engine)
        self.accepting = True
        self.app = web.Application(client_max_size=1024**2)
        self.app.router.add_get("/livez", self.livez)
        self.app.router.add_get("/readyz", self.readyz)
        self.app.router.add_get("/healthz", self.readyz)  # older name, kept for existing probes
        self.app.router.add_get("/metrics", self.metrics)
        if bolt is not None:
            self.app.router.add_post("/slack/events", self.slack_events)
        self._runner: web.AppRunner | None = None

    async def slack_events(self, request: web.Request) -> web.Response:
        assert self._bolt is not None
        if not self.accepting and request.content_type == "application/json":
            # Draining: an Events API delivery (JSON) is refused, Slack retries it and the balancer
            # (readiness says 503 too) sends the retry to another replica, which takes the turn.
            # Commands and interactions (form data) are not retried by Slack: they are still served,
            # so a Stop pressed on an answer that finishes here during the grace period works.
            return web.json_response({"error": "shutting down"}, status=503)
        # aiohttp answers 413 itself past client_max_size (1 MiB; Slack's events are far smaller).
        raw = await request.read()
        headers: dict[str, str | Sequence[str]] = {
            name: request.headers.getall(name) for name in request.headers
        }
        content_type = request.headers.get("Content-Type", "").split(";")[0] or None  # as Bolt reads it
        try:
            body = parse_slack_body(raw, content_type)
        except MalformedBody as exc:
            log.warning("rejected a malformed Slack request body: %s", exc)
            # The same body would fail again: ask Slack not to retry it.
            return web.json_response(
                {"error": "malformed request body"}, status=400, headers={"X-Slack-No-Retry": "1"}
            )
        bolt_request = AsyncBoltRequest(body=body, query=request.query_string, headers=headers)
        bolt_response = await self._bolt.async_dispatch(bolt_request)
        return await to_aiohttp_response(bolt_response)

    async def livez(self, _request: web.Request) -> web.Response:
        """The event loop serves requests: never depends on the database, so an outage is no restart."""
        return web.json_response({"status": "ok"})

    async def readyz(self, _request: web.Request) -> web.Response:
        """200 when the database answers and the process takes events; the reason stays in the log."""
        database_ok = await self.readiness.database_ok()
        ready = database_ok and self.accepting
        body = {
            "status": "ok" if ready else "unavailable",
            "database": "ok" if database_ok else "unavailable",
        }
        return web.json_response(body, status=200 if ready else 503)

    async def metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=self._metrics.render(), content_type="text/plain", charset="utf-8")

    async def start(self, host: str, port: int) -> int:
        """Start listening; returns the bound port (port 0 picks a free one)."""
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server  # aiohttp exposes no public accessor for the bound socket
        sockets = getattr(server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
