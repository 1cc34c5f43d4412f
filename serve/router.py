"""Ray Serve's request router for the session replicas: a new session goes to the replica with the fewest
ongoing requests (its live sessions) among all of them, not among two random ones (Serve's default
power-of-two choices), so a session is refused `server_full` only when every replica is full.
Loaded by path ("serve.router:LeastSessionsRouter") in the processes that route (the HTTP proxy)."""
from __future__ import annotations

from ray.serve.request_router import FIFOMixin, RequestRouter


class LeastSessionsRouter(FIFOMixin, RequestRouter):
    async def choose_replicas(self, candidate_replicas, pending_request=None):
        """One rank holding every replica: Serve probes their queue lengths and takes the shortest
        below its max_ongoing_requests."""
        return [list(candidate_replicas)]
