"""Serving many live sessions: the WebSocket protocol (docs/PROTOCOL.md), the replica that
advances all its sessions in one batched call per stage every 160 ms, the Ray Serve application around
it, its metrics, a Python client and the browser page (`static/`).

    wire.py      the binary framing: 8-byte prefix, JSON header, raw sections (no pickle)
    protocol.py  the messages of protocol 1 and their checks against the preset (typed errors)
    rows.py      a batched runtime, or B solo sessions behind the same interface (the unbatched side)
    hub.py       one replica's sessions: slots, bounded inboxes, filler, one batched step per tick
    pacer.py     the tick thread: one tick per 160 ms of wall time
    connection.py one WebSocket session on a replica (asyncio)
    metrics.py   recent-window percentiles and the Prometheus text
    app.py       the Ray Serve deployments (FastAPI ingress, the metrics board) and `launch`
    router.py    the request router: a new session goes to the replica with the most free slots
    client.py    the asyncio client (`streamer client`, bench/serve_load.py)

Imports only unitio and runtime from the project (tests/test_layout.py); never torch or model_src.
"""
