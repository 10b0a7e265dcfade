"""The hub's own WebSocket framing matches websockets' byte for byte."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode

from innkt_analytics.server._ws_protocol import text_frame_header


@given(st.integers(min_value=0, max_value=300_000))
@example(125)
@example(126)
@example(65_535)
@example(65_536)
def test_text_frame_header_is_rfc6455_as_websockets_writes_it(length: int) -> None:
    payload = b"x" * length
    expected = Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])
    assert text_frame_header(length) + payload == expected
