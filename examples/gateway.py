"""An embedded gateway: devices publish readings over MQTT, Python aggregates them in the
broker's own process and publishes the results back, without a socket of its own.

    python examples/gateway.py --port 1883 --every 10 --interval 5
    mosquitto_sub -p 1883 -t 'aggregates/#' -v &
    for t in 20 21 22; do mosquitto_pub -p 1883 -t sensors/kitchen -m $t; done

A reading is a number, as text, on `sensors/<sensor>` (the sensor name may span several
levels: `sensors/floor1/room2`). For each sensor the gateway publishes to
`aggregates/<sensor>` a JSON object `{"sensor", "count", "avg", "min", "max"}`, retained
and at QoS 1, every `every` readings of that sensor and/or every `interval` seconds for
each sensor that had readings since. Payloads that are not finite numbers are counted in
`Gateway.rejected` and skipped.
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
from dataclasses import dataclass
from types import TracebackType

import pyo3mq

logger = logging.getLogger(__name__)


@dataclass
class Window:
    """Readings of one sensor since its last aggregate."""

    count: int = 0
    total: float = 0.0
    low: float = math.inf
    high: float = -math.inf

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.low = min(self.low, value)
        self.high = max(self.high, value)

    def summary(self, sensor: str) -> dict[str, object]:
        return {
            "sensor": sensor,
            "count": self.count,
            "avg": self.total / self.count,
            "min": self.low,
            "max": self.high,
        }


class Gateway:
    """Aggregates `<source>/#` readings into `<target>/<sensor>` summaries.

    Use as an async context manager on a running broker: entering subscribes (so no
    reading published afterwards is missed) and starts the work, leaving stops it.
    """

    def __init__(
        self,
        broker: pyo3mq.Broker,
        *,
        every: int | None = 10,
        interval: float | None = None,
        source: str = "sensors",
        target: str = "aggregates",
    ) -> None:
        if every is None and interval is None:
            raise ValueError("set every, interval or both")
        if every is not None and every < 1:
            raise ValueError(f"every must be at least 1, not {every}")
        if interval is not None and not interval > 0:
            raise ValueError(f"interval must be a positive number of seconds, not {interval}")
        self.broker = broker
        self.every = every
        self.interval = interval
        self.source = source
        self.target = target
        self.windows: dict[str, Window] = {}
        #: Readings used, payloads skipped, aggregates published.
        self.received = 0
        self.rejected = 0
        self.published = 0
        self._readings: pyo3mq.Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Gateway:
        readings = self.broker.subscribe(f"{self.source}/#", qos=1)
        self._readings = readings
        self._tasks = [asyncio.create_task(self._consume(readings))]
        if self.interval is not None:
            self._tasks.append(asyncio.create_task(self._tick(self.interval)))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in self._tasks:
            task.cancel()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                logger.error("gateway task failed", exc_info=result)
        self._tasks = []
        if self._readings is not None:
            self._readings.close()
            self._readings = None

    async def _consume(self, readings: pyo3mq.Subscription) -> None:
        async for message in readings:
            await self.handle(message)

    async def _tick(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.flush_all()

    async def handle(self, message: pyo3mq.Message) -> None:
        """Adds one reading; publishes the sensor's aggregate when `every` is reached."""
        prefix = self.source + "/"
        sensor = message.topic[len(prefix) :] if message.topic.startswith(prefix) else ""
        try:
            value = float(message.payload.decode())
        except (UnicodeDecodeError, ValueError):
            value = math.nan
        if not sensor or not math.isfinite(value):
            self.rejected += 1
            return
        self.received += 1
        window = self.windows.setdefault(sensor, Window())
        window.add(value)
        if self.every is not None and window.count >= self.every:
            await self.flush(sensor)

    async def flush(self, sensor: str) -> None:
        """Publishes and resets one sensor's window (nothing if it is empty)."""
        window = self.windows.pop(sensor, None)
        if window is None or window.count == 0:
            return
        payload = json.dumps(window.summary(sensor))
        await self.broker.publish(f"{self.target}/{sensor}", payload, qos=1, retain=True)
        self.published += 1

    async def flush_all(self) -> None:
        for sensor in list(self.windows):
            await self.flush(sensor)


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
    every: int | None = 10,
    interval: float | None = None,
    duration: float | None = None,
    ready: Callable[[Gateway], object] | None = None,
    handle_signals: bool = False,
) -> None:
    """Runs a broker with the gateway inside until `duration` elapses, a signal (with
    `handle_signals`) or cancellation. `ready(gateway)` is called once it listens and
    consumes (port 0 picks a free port; `gateway.broker.addresses` has it)."""
    broker = pyo3mq.Broker(listeners=[f"tcp://{host}:{port}"])
    async with broker, Gateway(broker, every=every, interval=interval) as gateway:
        for bound_host, bound_port in broker.addresses:
            # One write, newline included: the logging thread writes lines of its own
            # to the same terminal or pipe.
            print(f"listening on {bound_host}:{bound_port}\n", end="", flush=True)
        if ready is not None:
            ready(gateway)
        await wait_for_stop(duration, handle_signals)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="MQTT broker aggregating sensor readings.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=1883, help="TCP port; 0 picks a free one")
    parser.add_argument(
        "--every", type=int, default=10, help="readings per aggregate (0: time only)"
    )
    parser.add_argument(
        "--interval", type=float, default=None, help="also publish every this many seconds"
    )
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    args = parser.parse_args(argv)
    every = args.every or None
    # The broker's own log lines (connections, closes with the rule broken, queue
    # overflows) join this program's on Python's logging.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    pyo3mq.enable_logging("info")
    try:
        asyncio.run(
            run(
                args.host,
                args.port,
                every=every,
                interval=args.interval,
                duration=args.duration,
                handle_signals=True,
            )
        )
    except ValueError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
