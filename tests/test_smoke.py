from __future__ import annotations

import httpx

from tests._server import ServerProcess


def test_server_starts_and_ingests(server: ServerProcess) -> None:
    r = httpx.post(
        server.url + "/v1/events/batch",
        headers=server.headers("write"),
        json={
            "events": [
                {
                    "eventId": "e1",
                    "eventType": "login",
                    "sessionId": "s1",
                    "timestamp": "2026-01-01T00:00:00+00:00",
                }
            ]
        },
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    assert server.event_ids() == ["e1"]
