"""MQTT 5.0 request/response with the responder inside the broker: a client publishes a
request with a Response Topic and Correlation Data; the in-process responder answers on
that Response Topic with the same Correlation Data, so the client can match answers to
requests. No socket of the responder's own, no client library.

    python examples/request_response.py --port 1883
    mosquitto_rr -V 5 -p 1883 -t service/sum -e replies/me -m '[1, 2, 3.5]'
    {"result": 6.5}

Services, on `service/<name>`:
- `sum`: a JSON array of numbers; answers `{"result": <their sum>}` (application/json).
- `upper`: UTF-8 text; answers it in upper case (text/plain, Payload Format Indicator 1).

A request the responder cannot serve (an unknown service, a payload it cannot read) is
answered too, with an empty payload and a user property `("error", why)`. A request
without a Response Topic (a 3.1.1 client's, say) cannot be answered: it is counted in
`Responder.ignored`. The request's user properties are sent back with the answer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import signal
import sys
from collections.abc import Callable, Sequence
from types import TracebackType

import pyo3mq
from pyo3mq import MessageProperties

logger = logging.getLogger(__name__)

SERVICES = ("sum", "upper")


class BadRequest(ValueError):
    """A request the service cannot read; the message goes back to the client."""


def serve_sum(payload: bytes) -> tuple[bytes, MessageProperties]:
    try:
        numbers = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("the payload is not JSON") from None
    if not isinstance(numbers, list) or not all(
        isinstance(n, (int, float)) and not isinstance(n, bool) for n in numbers
    ):
        raise BadRequest("sum takes a JSON array of numbers")
    total = math.fsum(numbers)
    result = int(total) if total.is_integer() and abs(total) < 2**53 else total
    body = json.dumps({"result": result}).encode()
    return body, MessageProperties(content_type="application/json", payload_format_indicator=1)


def serve_upper(payload: bytes) -> tuple[bytes, MessageProperties]:
    try:
        text = payload.decode()
    except UnicodeDecodeError:
        raise BadRequest("upper takes UTF-8 text") from None
    return text.upper().encode(), MessageProperties(
        content_type="text/plain", payload_format_indicator=1
    )


class Responder:
    """Answers requests on `<prefix>/<service>`. Use as an async context manager on a
    running broker: entering subscribes (no request published afterwards is missed),
    leaving stops answering."""

    def __init__(self, broker: pyo3mq.Broker, *, prefix: str = "service") -> None:
        self.broker = broker
        self.prefix = prefix
        #: Requests answered (errors included), and requests without a Response Topic.
        self.answered = 0
        self.ignored = 0
        self._requests: pyo3mq.Subscription | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Responder:
        self._requests = self.broker.subscribe(f"{self.prefix}/+", qos=1)
        self._task = asyncio.create_task(self._serve(self._requests))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._requests is not None:
            self._requests.close()
            self._requests = None

    async def _serve(self, requests: pyo3mq.Subscription) -> None:
        async for request in requests:
            try:
                await self.handle(request)
            except Exception:  # one bad request must not stop the service
                logger.exception("request on %s failed", request.topic)

    async def handle(self, request: pyo3mq.Message) -> None:
        """Answers one request on its Response Topic, with its Correlation Data."""
        props = request.properties
        if props is None or props.response_topic is None:
            self.ignored += 1
            return
        service = request.topic[len(self.prefix) + 1 :]
        try:
            if service == "sum":
                body, answer = serve_sum(request.payload)
            elif service == "upper":
                body, answer = serve_upper(request.payload)
            else:
                raise BadRequest(f"no service {service!r}; there are {', '.join(SERVICES)}")
            extra: list[tuple[str, str]] = []
        except BadRequest as exc:
            body, answer, extra = b"", MessageProperties(), [("error", str(exc))]
        answer = answer.replace(
            correlation_data=props.correlation_data,
            user_properties=[*props.user_properties, *extra],
        )
        await self.broker.publish(props.response_topic, body, qos=request.qos, properties=answer)
        self.answered += 1


async def wait_for_stop(duration: float | None, handle_signals: bool) -> None:
    """Returns after `duration` seconds (never, if None) or on SIGINT/SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM) if handle_signals else ()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), duration)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


async def run(
    host: str = "127.0.0.1",
    port: int = 1883,
    *,
    prefix: str = "service",
    duration: float | None = None,
    ready: Callable[[Responder], object] | None = None,
    handle_signals: bool = False,
) -> None:
    """Runs a broker with the responder inside until `duration` elapses, a signal (with
    `handle_signals`) or cancellation. `ready(responder)` is called once it listens and
    answers (port 0 picks a free port; `responder.broker.addresses` has it)."""
    broker = pyo3mq.Broker(listeners=[f"tcp://{host}:{port}"])
    async with broker, Responder(broker, prefix=prefix) as responder:
        for bound_host, bound_port in broker.addresses:
            # One write, newline included: the logging thread writes lines of its own
            # to the same terminal or pipe.
            print(f"listening on {bound_host}:{bound_port}\n", end="", flush=True)
        if ready is not None:
            ready(responder)
        await wait_for_stop(duration, handle_signals)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="MQTT 5.0 broker answering requests itself.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=1883, help="TCP port; 0 picks a free one")
    parser.add_argument("--prefix", default="service", help="requests go to PREFIX/<service>")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    pyo3mq.enable_logging("info")
    try:
        asyncio.run(
            run(
                args.host,
                args.port,
                prefix=args.prefix,
                duration=args.duration,
                handle_signals=True,
            )
        )
    except ValueError as exc:
        print(f"request_response: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
