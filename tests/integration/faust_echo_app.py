"""A minimal faust-streaming worker for the stack test: echoes one topic into another."""

from __future__ import annotations

import os

import faust

app = faust.App(
    os.environ["ECHO_APP_ID"],
    broker=f"kafka://{os.environ['ECHO_BOOTSTRAP']}",
    web_enabled=False,
    topic_partitions=1,
    # Tansu makes a group's first join wait half the session timeout: keep it short.
    broker_session_timeout=6.0,
    broker_heartbeat_interval=1.0,
    consumer_auto_offset_reset="earliest",
)
source = app.topic(os.environ["ECHO_IN"], value_serializer="raw")
sink = app.topic(os.environ["ECHO_OUT"], value_serializer="raw")


@app.agent(source)
async def echo(stream: faust.StreamT[bytes]) -> None:
    async for value in stream:
        await sink.send(value=b"echo:" + value)


if __name__ == "__main__":
    app.main()
