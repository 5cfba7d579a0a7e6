#!/usr/bin/env python3
"""Load benchmark: pyo3mq and Mosquitto side by side (`make bench`; benches/README.md).

Builds the Rust load generator (`cargo bench --bench load --no-run`), then, for every
repetition, starts fresh brokers on free loopback ports and runs each cell of the matrix
against each broker in turn (the order alternates between repetitions), so that both
brokers see the same background noise. Then the idle-connection benchmark, with a fresh
broker per measurement. Writes results.jsonl and summary.md to the output directory and
prints the summary.

    python3 benches/run_load.py            # full matrix, 3 repetitions (< 15 min)
    python3 benches/run_load.py --quick    # a ~2 minute subset
    python3 benches/run_load.py --only transports,handshakes   # TLS and WebSocket rows
    python3 benches/run_load.py --quick --only v5   # MQTT 5.0 rows beside their 3.1.1 rows
    python3 benches/run_load.py --quick --baseline ../base/.venv/bin/pyo3mq  # A/B two builds

With --baseline, a second pyo3mq build (an older commit, say) runs in the same rotation on
the TCP throughput and paced cells and the idle-connection test, so the two builds are
compared under the same noise.

The MQTT 5.0 rows (`--only v5`, part of the default) run the four scenarios at QoS 0 and 1,
64 B, with the generator speaking 5.0 (`--protocol 5`) to both brokers, each right after
the same cell in 3.1.1, so the summary can set 5.0 beside 3.1.1 for each broker.

Both brokers also listen for TLS and WebSocket (a self-signed certificate made with the
openssl command for each run), so the transport rows compare them over the same stream.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "benches" / "load"
SCENARIOS = ("1:1", "fanin", "fanout", "mesh")
SCENARIO_TITLES = {
    "1:1": "1:1",
    "fanin": "fan-in 20:1",
    "fanout": "fan-out 1:20",
    "mesh": "mesh 20",
}
# Median ratio pyo3mq / Mosquitto wanted, by QoS (issue 6).
THROUGHPUT_TARGETS = {0: 3.0, 1: 2.0, 2: 1.0}
RSS_TARGET = 1.5
PACED_RATE = 2000
DASH = "\u2013"  # en dash, for ranges in the tables
# Descriptors for each broker: 100,000 idle connections plus headroom. Above the hard
# limit this needs root (CAP_SYS_RESOURCE); otherwise the hard limit is used.
NOFILE = 110_000
# Loopback source addresses for the idle test: one has about 28,000 ephemeral ports
# towards the broker's port (net.ipv4.ip_local_port_range 32768-60999).
IDLE_SOURCES = 8
# The transport rows: over TLS and over WebSocket, 64 B, QoS 0 and 1.
TRANSPORTS = ("tls", "ws")
TRANSPORT_TITLES = {"tcp": "TCP", "tls": "TLS", "ws": "WebSocket", "wss": "secure WebSocket"}
# The MQTT 5.0 rows: the four scenarios, 64 B, at these QoS levels, beside their 3.1.1 cells.
V5_QOS = (0, 1)
# pyo3mq at 5.0 should be within 10% of its own 3.1.1 rate (issue 13, item 10).
V5_TARGET = 0.9
PROTOCOL_TITLES = {4: "3.1.1", 5: "5.0"}
# Connections opened (each a full TLS handshake) to measure the handshake rate.
HANDSHAKE_CONNECTIONS = 2000
Result = dict[str, Any]
# The broker name (and results' label) of the --baseline build.
BASELINE = "pyo3mq-baseline"


@dataclass(frozen=True)
class Cell:
    """One measurement of the matrix."""

    kind: str  # "sat" (as fast as possible) or "paced" (PACED_RATE msgs/s in total)
    scenario: str
    qos: int
    size: int
    wildcard: bool = False
    transport: str = "tcp"
    protocol: int = 4  # the CONNECT protocol level: 4 = MQTT 3.1.1, 5 = MQTT 5.0

    @property
    def key(self) -> str:
        wild = "+wild" if self.wildcard else ""
        over = "" if self.transport == "tcp" else f"/{self.transport}"
        v5 = "/v5" if self.protocol == 5 else ""
        return f"{self.kind}/{self.scenario}{wild}/q{self.qos}/{self.size}{over}{v5}"

    @property
    def title(self) -> str:
        name = SCENARIO_TITLES[self.scenario]
        return f"{name}, wildcard" if self.wildcard else name


# Deliveries per saturated run, by broker and QoS, then payload size. Chosen so that a run
# takes about 1-3 s on the 2-core reference machine: pyo3mq is much faster, so it gets
# larger runs (rates are per second, so sizes need not match; see the README).
RUN_SIZES: dict[str, dict[int, dict[int, int]]] = {
    "mosquitto": {
        0: {64: 400_000, 1024: 300_000},
        1: {64: 150_000, 1024: 100_000},
        2: {64: 60_000, 1024: 50_000},
    },
    "pyo3mq": {
        0: {64: 3_000_000, 1024: 1_000_000},
        1: {64: 1_500_000, 1024: 800_000},
        2: {64: 1_000_000, 1024: 600_000},
    },
}


def deliveries_for(broker: str, cell: Cell, scale: float) -> int:
    ours = broker.startswith("pyo3mq")
    sizes = RUN_SIZES["pyo3mq" if ours else "mosquitto"][cell.qos]
    base = sizes.get(cell.size) or sizes[64]
    if ours and cell.scenario in ("fanout", "mesh"):
        base = base * 5 // 2  # it delivers 2-4x faster there than in 1:1 and fan-in
    # Every publisher sends the same count: round to a multiple of 400 (20 x 20).
    return max(400, int(base * scale) // 400 * 400)


def build_matrix(quick: bool, only: set[str], wild_sizes: Sequence[int]) -> list[Cell]:
    cells: list[Cell] = []
    if "throughput" in only:
        sizes = (64,) if quick else (64, 1024)
        for size in sizes:
            for qos in (0, 1, 2):
                cells += [Cell("sat", s, qos, size) for s in SCENARIOS]
        for size in () if quick else wild_sizes:
            for qos in (0, 1, 2):
                cells += [Cell("sat", s, qos, size, wildcard=True) for s in SCENARIOS]
        if quick:
            cells += [Cell("sat", "fanout", 1, 64, wildcard=True)]
    if "paced" in only:
        scenarios = ("1:1", "fanin") if quick else SCENARIOS
        for qos in (0, 1, 2):
            cells += [Cell("paced", s, qos, 64) for s in scenarios]
    if "transports" in only:
        for transport in ("tcp", *TRANSPORTS):
            for qos in (0, 1):
                for scenario in ("1:1", "fanout"):
                    cell = Cell("sat", scenario, qos, 64, transport=transport)
                    if cell not in cells:  # the TCP cells, for comparison in the same run
                        cells.append(cell)
    if "v5" in only:
        for qos in V5_QOS:
            for scenario in SCENARIOS:
                v311 = Cell("sat", scenario, qos, 64)
                if v311 not in cells:  # the 3.1.1 peer, in the same run
                    cells.append(v311)
                # Right after its 3.1.1 peer, so the two see about the same background load.
                cells.insert(cells.index(v311) + 1, Cell("sat", scenario, qos, 64, protocol=5))
    return cells


def make_certificate(out: Path) -> tuple[Path, Path]:
    """A self-signed certificate for `localhost` (the generator checks that name), made
    with the openssl command; the key is readable by Mosquitto's unprivileged user."""
    cert, key = out / "bench-cert.pem", out / "bench-key.pem"
    if not cert.exists():
        command = [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt"),
            *("ec_paramgen_curve:prime256v1", "-nodes", "-days", "30", "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
            # Not a CA: rustls (the generator) refuses a CA certificate as a server's.
            *("-addext", "basicConstraints=critical,CA:FALSE"),
            *("-keyout", str(key), "-out", str(cert)),
        ]
        subprocess.run(command, check=True, capture_output=True, timeout=60)
        key.chmod(0o644)  # a throwaway key for loopback runs
    return cert, key


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def raise_nofile() -> None:
    """preexec_fn for brokers: a descriptor limit that fits the idle-connection test."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < NOFILE:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))
            return
        except (ValueError, OSError):
            pass  # not root: use the hard limit we have
    want = NOFILE if hard == resource.RLIM_INFINITY else min(hard, NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))


@dataclass
class Broker:
    """A broker process on a free loopback port."""

    # "pyo3mq", "pyo3mq-baseline" (--baseline), "mosquitto", or "mosquitto-nodelay" (paced)
    name: str
    exe: str
    out: Path
    port: int = 0
    tls_port: int = 0
    ws_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.out / f"{self.name}.log"

    @property
    def label(self) -> str:
        return "mosquitto" if self.name.startswith("mosquitto") else self.name

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def port_for(self, transport: str) -> int:
        return {"tcp": self.port, "tls": self.tls_port, "ws": self.ws_port}[transport]

    def fill(self, template: str) -> str:
        cert, key = make_certificate(self.out)
        for name, value in (
            ("@PORT@", self.port),
            ("@TLS_PORT@", self.tls_port),
            ("@WS_PORT@", self.ws_port),
            ("@CERT@", cert),
            ("@KEY@", key),
        ):
            template = template.replace(name, str(value))
        return template

    def command(self) -> list[str]:
        if self.name.startswith("pyo3mq"):
            conf = self.out / f"{self.name}.toml"
            text = self.fill((HERE / "pyo3mq.toml").read_text())
            if self.name == BASELINE:
                # The baseline runs only TCP cells and may predate TLS and WebSocket
                # listeners: it gets the TCP listener and the same limits.
                text = "\n".join(
                    f'listeners = ["tcp://127.0.0.1:{self.port}"]'
                    if line.startswith("listeners")
                    else line
                    for line in text.splitlines()
                    if not line.startswith(("certfile", "keyfile"))
                )
            conf.write_text(text)
            return [self.exe, "--config", str(conf), "--log-level", "warn"]
        conf = self.out / f"{self.name}.conf"
        text = self.fill((HERE / "mosquitto.conf").read_text())
        if self.name == "mosquitto-nodelay":
            # Mosquitto leaves Nagle on by default: good for its throughput, but then a
            # second message behind an unacknowledged one waits for the peer's delayed
            # ACK (~40 ms on Linux). For latency it gets its best setting, as pyo3mq has.
            text += "set_tcp_nodelay true\n"
        conf.write_text(text)
        return [self.exe, "-c", str(conf)]

    def start(self) -> None:
        self.stop()
        self.port, self.tls_port, self.ws_port = free_port(), free_port(), free_port()
        self.starts += 1
        with self.log.open("ab") as log:
            log.write(f"--- start {self.starts} on port {self.port}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=raise_nofile,
                cwd=self.out,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start; see {self.log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    time.sleep(0.2)
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not open port {self.port}; see {self.log}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def build_generator() -> str:
    """Builds the bench target (bench profile) and returns the executable's path."""
    cmd = [
        "cargo",
        "bench",
        "--bench",
        "load",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, check=True, timeout=1800)
    exe = None
    for line in done.stdout.decode().splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == "load":
            exe = msg.get("executable") or exe
    if not exe:
        raise RuntimeError("cargo did not report the load bench executable")
    return str(exe)


def loadavg() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


def run_generator(exe: str, args: list[str], limit: float) -> tuple[Result | None, str]:
    try:
        done = subprocess.run([exe, *args], capture_output=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return None, f"generator did not finish within {limit:.0f} s"
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    err = done.stderr.decode(errors="replace").strip()
    if not lines:
        return None, err or f"generator exited {done.returncode} with no output"
    try:
        result: Result = json.loads(lines[-1])
    except ValueError:
        return None, f"unparsable generator output: {lines[-1][:200]}"
    return result, err


def failure_reason(r: Result) -> str:
    """Why a run does not count as a rate ('' when it is complete)."""
    if r.get("complete"):
        return ""
    parts = []
    for key in ("lost", "duplicates", "out_of_order", "corrupt", "foreign", "bad_acks"):
        if r.get(key):
            parts.append(f"{key.replace('_', ' ')} {r[key]}")
    if r.get("timed_out"):
        parts.append("stalled")
    if r.get("error"):
        parts.append(str(r["error"]))
    return ", ".join(parts) or "incomplete"


def run_cell(exe: str, broker: Broker, cell: Cell, args: argparse.Namespace) -> Result:
    common = [
        "--port",
        str(broker.port),
        "--broker-pid",
        str(broker.pid),
        "--label",
        broker.label,
        "--scenario",
        cell.scenario,
        "--qos",
        str(cell.qos),
        "--size",
        str(cell.size),
        "--threads",
        str(args.threads),
    ]
    if cell.wildcard:
        common.append("--wildcard")
    if cell.protocol != 4:
        common += ["--protocol", str(cell.protocol)]
    if cell.transport != "tcp":
        cert, _ = make_certificate(broker.out)
        common[1] = str(broker.port_for(cell.transport))
        common += ["--transport", cell.transport, "--cafile", str(cert)]
    if cell.kind == "paced":
        gen_args = ["run", *common, "--rate", str(PACED_RATE), "--seconds", str(args.paced_seconds)]
    else:
        n = deliveries_for(broker.name, cell, args.scale)
        gen_args = [
            "run",
            *common,
            "--deliveries",
            str(n),
            "--timeout",
            "10",
            "--max-seconds",
            "120",
        ]
    before = loadavg()
    result, err = run_generator(exe, gen_args, limit=200)
    if result is None:
        result = {"complete": False, "error": err}
    result.update(cell=cell.key, broker=broker.label, broker_process=broker.name, loadavg=before)
    reason = failure_reason(result)
    if reason:
        result["failure"] = reason
        dropped = "dropp" in broker.log_tail()
        if dropped:
            result["failure"] += " (broker log reports dropped messages)"
    return result


def run_idle(exe: str, broker: Broker, args: argparse.Namespace, transport: str = "tcp") -> Result:
    """Idle connections (RSS per connection, connects/s); over TLS, the connect rate is
    the TLS handshake rate (TCP, full handshake, CONNECT/CONNACK each)."""
    broker.start()
    try:
        time.sleep(0.5)
        connections = args.idle_connections if transport == "tcp" else HANDSHAKE_CONNECTIONS
        gen_args = [
            "idle",
            "--port",
            str(broker.port_for(transport)),
            "--broker-pid",
            str(broker.pid),
            "--label",
            broker.label,
            "--connections",
            str(connections),
            "--concurrency",
            str(args.idle_concurrency),
            "--settle",
            str(args.idle_settle if transport == "tcp" else 1.0),
        ]
        if transport == "tcp":
            gen_args += ["--sources", str(IDLE_SOURCES), "--storm"]
        if transport != "tcp":
            cert, _ = make_certificate(broker.out)
            gen_args += ["--transport", transport, "--cafile", str(cert)]
        result, err = run_generator(exe, gen_args, limit=600)
    finally:
        broker.stop()
    if result is None:
        result = {"complete": False, "error": err}
    cell = "idle" if transport == "tcp" else f"handshakes/{transport}"
    result.update(cell=cell, broker=broker.label, broker_process=broker.name)
    if not result.get("complete"):
        result["failure"] = str(result.get("error") or "not every connection was accepted")
    return result


# --------------------------------------------------------------------------- summary


def fmt_rate(v: float) -> str:
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e4:
        return f"{v / 1e3:.0f}k"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k"
    return f"{v:.0f}"


def fmt_us(v: float) -> str:
    if v >= 1e6:
        return f"{v / 1e6:.2f} s"
    if v >= 1e3:
        return f"{v / 1e3:.1f} ms"
    return f"{v:.0f} µs"


def fmt_bytes(v: float) -> str:
    return f"{v / 1024:.1f} KiB" if v >= 1024 else f"{v:.0f} B"


def spread(values: list[float], fmt: Callable[[float], str]) -> str:
    if not values:
        return DASH
    med = statistics.median(values)
    if len(values) == 1:
        return fmt(med)
    return f"{fmt(med)} ({fmt(min(values))}{DASH}{fmt(max(values))})"


@dataclass
class Side:
    """One broker's runs of one cell."""

    ok: list[Result] = field(default_factory=list)
    failed: list[Result] = field(default_factory=list)

    def values(self, key: str) -> list[float]:
        return [float(r[key]) for r in self.ok if r.get(key) is not None]

    def median(self, key: str) -> float | None:
        v = self.values(key)
        return statistics.median(v) if v else None

    def cpu_per_delivery(self, key: str) -> float | None:
        """Median µs of CPU (`broker_cpu_s` or `gen_cpu_s`) per delivery."""
        v = [
            float(r[key]) * 1e6 / r["delivered"]
            for r in self.ok
            if r.get(key) is not None and r.get("delivered")
        ]
        return statistics.median(v) if v else None

    def show(self, key: str, fmt: Callable[[float], str]) -> str:
        text = spread(self.values(key), fmt)
        if self.failed:
            n = len(self.ok) + len(self.failed)
            why = "; ".join(sorted({str(r.get("failure", "?")) for r in self.failed}))[:120]
            text = (
                f"**FAILED {len(self.failed)}/{n}** ({why})"
                if not self.ok
                else f"{text} **{len(self.failed)}/{n} failed** ({why})"
            )
        return text


def group(results: Iterable[Result]) -> dict[str, dict[str, Side]]:
    cells: dict[str, dict[str, Side]] = {}
    for r in results:
        side = cells.setdefault(r["cell"], {}).setdefault(r["broker"], Side())
        (side.failed if r.get("failure") else side.ok).append(r)
    return cells


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def verdict(met: bool | None) -> str:
    return DASH if met is None else ("yes" if met else "**no**")


def machine() -> list[str]:
    def cmd(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "?"

    model = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in cmd("lscpu").splitlines()
            if ln.startswith("Model name")
        ),
        "?",
    )
    mem = cmd("sh", "-c", "free -g | awk '/Mem:/ {print $2}'")
    return [
        f"nproc {cmd('nproc')}",
        f"CPU {model}",
        f"kernel {platform.release()}",
        f"{mem} GiB memory",
    ]


def paired_ratios(results: list[Result], broker: str, a: str, b: str) -> list[float]:
    """Per repetition, `broker`'s rate in cell `a` over its rate in cell `b` (both runs
    complete): the two cells run back to back, so each ratio sees one background load."""
    by_rep: dict[tuple[int, str], float] = {}
    for r in results:
        if r["broker"] == broker and not r.get("failure") and r.get("deliveries_per_s"):
            by_rep[(int(r.get("rep", 0)), r["cell"])] = float(r["deliveries_per_s"])
    reps = sorted({rep for rep, _ in by_rep})
    return [by_rep[(n, a)] / by_rep[(n, b)] for n in reps if (n, a) in by_rep and (n, b) in by_rep]


def summarize_v5(
    cells: dict[str, dict[str, Side]], v5: list[Cell], results: list[Result]
) -> list[str]:
    """The MQTT 5.0 table: each broker's 5.0 rate beside its 3.1.1 rate from the same run."""
    out = [
        f"**MQTT 5.0 beside 3.1.1** (deliveries/s at saturation, 64 B, median (min{DASH}max);"
        " each 5.0 run right after the same cell in 3.1.1 on the same broker process; "
        "5.0/3.1.1 = ratio of the medians, [min"
        f"{DASH}max of the per-repetition ratios]; target: pyo3mq 5.0 ≥ "
        f"{V5_TARGET:g}x its 3.1.1 rate)",
        "",
        "| scenario | QoS | pyo3mq 3.1.1 | pyo3mq 5.0 | pyo3mq 5.0/3.1.1 | met | "
        "Mosquitto 3.1.1 | Mosquitto 5.0 | Mosquitto 5.0/3.1.1 | pyo3mq/Mosquitto at 5.0 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in v5:
        peer = Cell(c.kind, c.scenario, c.qos, c.size, c.wildcard, c.transport)
        new, old = cells.get(c.key, {}), cells.get(peer.key, {})
        row = [c.title, str(c.qos)]
        for broker in ("pyo3mq", "mosquitto"):
            s5, s4 = new.get(broker, Side()), old.get(broker, Side())
            r = ratio(s5.median("deliveries_per_s"), s4.median("deliveries_per_s"))
            paired = paired_ratios(results, broker, c.key, peer.key)
            span = f" [{min(paired):.2f}{DASH}{max(paired):.2f}]" if len(paired) > 1 else ""
            row += [
                s4.show("deliveries_per_s", fmt_rate),
                s5.show("deliveries_per_s", fmt_rate),
                DASH if r is None else f"{r:.2f}x{span}",
            ]
            if broker == "pyo3mq":
                met = None if r is None else (r >= V5_TARGET and not s5.failed)
                row.append(verdict(met))
        p5, m5 = new.get("pyo3mq", Side()), new.get("mosquitto", Side())
        r = ratio(p5.median("deliveries_per_s"), m5.median("deliveries_per_s"))
        row.append(DASH if r is None else f"{r:.1f}x")
        out.append("| " + " | ".join(row) + " |")
    rm = sorted(
        {
            f"{r['broker']} {r.get('receive_maximum')}"
            for r in results
            if r["cell"].endswith("/v5") and r.get("receive_maximum") is not None
        }
    )
    out += ["", f"Receive Maximum in the brokers' 5.0 CONNACKs (0: none): {', '.join(rm)}", ""]
    return out


def summarize(results: list[Result], meta: dict[str, Any], matrix: list[Cell]) -> str:
    cells = group(results)
    out: list[str] = []
    out.append(f"Command: `{meta['command']}`  ")
    out.append(f"Machine: {', '.join(meta['machine'])}  ")
    out.append(f"{meta['pyo3mq_version']} (git {meta['git']}), {meta['mosquitto_version']}  ")
    out.append(
        f"{meta['reps']} repetitions, {meta['started']}, {meta['minutes']:.1f} min; "
        f"load average {meta['load_start']:.2f} at start, {meta['load_end']:.2f} at end; "
        f"other processes' CPU during runs: median {meta['other_cpu']}  "
    )
    out.append("")
    met_count = [0, 0]

    sat = [c for c in matrix if c.kind == "sat" and c.transport == "tcp" and c.protocol == 4]
    if sat:
        out.append(
            f"**Deliveries/s at saturation** (median (min{DASH}max) over repetitions; "
            "ratio = pyo3mq median / Mosquitto median)"
        )
        out.append("")
        out.append("| scenario | payload | QoS | pyo3mq | Mosquitto | ratio | target | met |")
        out.append("|---|---|---|---|---|---|---|---|")
        for c in sat:
            sides = cells.get(c.key, {})
            p, m = sides.get("pyo3mq", Side()), sides.get("mosquitto", Side())
            r = ratio(p.median("deliveries_per_s"), m.median("deliveries_per_s"))
            target = THROUGHPUT_TARGETS[c.qos]
            met = None if r is None else (r >= target and not p.failed)
            if met is not None:
                met_count[0 if met else 1] += 1
            out.append(
                f"| {c.title} | {c.size} B | {c.qos} | "
                f"{p.show('deliveries_per_s', fmt_rate)} | "
                f"{m.show('deliveries_per_s', fmt_rate)} | "
                f"{DASH if r is None else f'{r:.1f}x'} | ≥ {target:g}x | {verdict(met)} |"
            )
        out.append("")
        out.append(
            "**CPU per delivery at saturation** (median µs of CPU per delivery: broker "
            "process / generator process)"
        )
        out.append("")
        out.append(
            "| scenario | payload | QoS | pyo3mq broker | pyo3mq gen | "
            "Mosquitto broker | Mosquitto gen |"
        )
        out.append("|---|---|---|---|---|---|---|")
        for c in sat:
            sides = cells.get(c.key, {})
            row = [c.title, f"{c.size} B", str(c.qos)]
            for b in ("pyo3mq", "mosquitto"):
                s = sides.get(b, Side())
                for key in ("broker_cpu_s", "gen_cpu_s"):
                    v = s.cpu_per_delivery(key)
                    row.append(DASH if v is None else f"{v:.2f}")
            out.append("| " + " | ".join(row) + " |")
        out.append("")

    if sat and any(r["broker"] == BASELINE for r in results):
        out.append(
            "**Against the baseline build** (`--baseline`, same rotation; deliveries/s and "
            "broker µs of CPU per delivery, medians; ratio = pyo3mq / baseline)"
        )
        out.append("")
        out.append(
            "| scenario | payload | QoS | pyo3mq | baseline | ratio | "
            "pyo3mq CPU | baseline CPU | CPU ratio |"
        )
        out.append("|---|---|---|---|---|---|---|---|---|")
        for c in sat:
            sides = cells.get(c.key, {})
            new, old = sides.get("pyo3mq", Side()), sides.get(BASELINE, Side())
            med = [new.cpu_per_delivery("broker_cpu_s"), old.cpu_per_delivery("broker_cpu_s")]
            r = ratio(new.median("deliveries_per_s"), old.median("deliveries_per_s"))
            rc = ratio(med[0], med[1])
            out.append(
                f"| {c.title} | {c.size} B | {c.qos} | "
                f"{new.show('deliveries_per_s', fmt_rate)} | "
                f"{old.show('deliveries_per_s', fmt_rate)} | "
                f"{DASH if r is None else f'{r:.2f}x'} | "
                + " | ".join(DASH if v is None else f"{v:.3f}" for v in med)
                + f" | {DASH if rc is None else f'{rc:.2f}x'} |"
            )
        out.append("")

    paced = [c for c in matrix if c.kind == "paced"]
    if paced:
        out.append(
            f"**Latency below saturation** ({PACED_RATE} msgs/s published in total, "
            f"spread over the publishers, {meta['paced_seconds']} s, 64 B; two runs per "
            f"repetition (ABBA); median of the runs' p50 and p99, min{DASH}max of p99; "
            "Mosquitto with set_tcp_nodelay)"
        )
        out.append("")
        out.append(
            "| scenario | QoS | pyo3mq p50 | pyo3mq p99 | Mosquitto p50 | "
            "Mosquitto p99 | p99 ratio | met (≤ 1x) |"
        )
        out.append("|---|---|---|---|---|---|---|---|")
        for c in paced:
            sides = cells.get(c.key, {})
            p, m = sides.get("pyo3mq", Side()), sides.get("mosquitto", Side())
            r = ratio(p.median("p99_us"), m.median("p99_us"))
            met = None if r is None else (r <= 1.0 and not p.failed)
            if met is not None:
                met_count[0 if met else 1] += 1
            p50p = spread(p.values("p50_us"), fmt_us).split(" (")[0]
            p50m = spread(m.values("p50_us"), fmt_us).split(" (")[0]
            out.append(
                f"| {c.title} | {c.qos} | {p50p} | {p.show('p99_us', fmt_us)} | {p50m} | "
                f"{m.show('p99_us', fmt_us)} | {DASH if r is None else f'{r:.2f}x'} | "
                f"{verdict(met)} |"
            )
        out.append("")

    v5 = [c for c in matrix if c.protocol == 5]
    if v5:
        out.extend(summarize_v5(cells, v5, results))

    over = [c for c in matrix if c.transport != "tcp"]
    if over:
        out.append(
            f"**Deliveries/s at saturation over TLS and WebSocket** (median (min{DASH}max); "
            "both brokers listen on every transport in the same run; TCP = the same cell over "
            "plain TCP, when it ran)"
        )
        out.append("")
        out.append(
            "| transport | scenario | payload | QoS | pyo3mq | Mosquitto | ratio | "
            "pyo3mq over TCP | Mosquitto over TCP |"
        )
        out.append("|---|---|---|---|---|---|---|---|---|")
        for c in over:
            sides = cells.get(c.key, {})
            tcp = cells.get(Cell(c.kind, c.scenario, c.qos, c.size, c.wildcard).key, {})
            p, m = sides.get("pyo3mq", Side()), sides.get("mosquitto", Side())
            r = ratio(p.median("deliveries_per_s"), m.median("deliveries_per_s"))
            out.append(
                f"| {TRANSPORT_TITLES[c.transport]} | {c.title} | {c.size} B | {c.qos} | "
                f"{p.show('deliveries_per_s', fmt_rate)} | "
                f"{m.show('deliveries_per_s', fmt_rate)} | "
                f"{DASH if r is None else f'{r:.1f}x'} | "
                f"{tcp.get('pyo3mq', Side()).show('deliveries_per_s', fmt_rate)} | "
                f"{tcp.get('mosquitto', Side()).show('deliveries_per_s', fmt_rate)} |"
            )
        out.append("")

    shakes = cells.get("handshakes/tls")
    if shakes:
        p, m = shakes.get("pyo3mq", Side()), shakes.get("mosquitto", Side())
        cr = ratio(p.median("connects_per_s"), m.median("connects_per_s"))
        out.append(
            f"**TLS handshake rate** ({HANDSHAKE_CONNECTIONS:,} connections, 50 in flight; "
            "each is TCP connect, a full TLS handshake (P-256 certificate, no resumption) "
            "and CONNECT/CONNACK; fresh broker each time)"
        )
        out.append("")
        out.append("| broker | connects/s | RSS per connection |")
        out.append("|---|---|---|")
        for name, side in (("pyo3mq", p), ("Mosquitto", m)):
            out.append(
                f"| {name} | {side.show('connects_per_s', fmt_rate)} | "
                f"{side.show('rss_per_conn_bytes', fmt_bytes)} |"
            )
        out.append("")
        out.append(f"Handshake rate ratio pyo3mq/Mosquitto: {DASH if cr is None else f'{cr:.2f}x'}")
        out.append("")

    idle = cells.get("idle")
    if idle:
        p, m = idle.get("pyo3mq", Side()), idle.get("mosquitto", Side())
        n = meta["idle_connections"]
        out.append(
            f"**{n:,} idle connections** (fresh broker each time; RSS after minus RSS "
            "before, divided by connections; connects/s with "
            f"{meta.get('idle_concurrency', 500)} handshakes in flight; reconnect storm: "
            "all dropped at once, then all reconnect with the same ids, timed from the drop "
            "to the last CONNACK)"
        )
        out.append("")
        out.append(
            "| broker | RSS per connection | connects/s | RSS before → after "
            "| reconnect storm | refused or failed |"
        )
        out.append("|---|---|---|---|---|---|")
        rows = [("pyo3mq", p)]
        if BASELINE in idle:
            rows.append(("pyo3mq baseline", idle[BASELINE]))
        rows.append(("Mosquitto", m))
        for name, s in rows:
            before = s.median("rss_before_kib")
            after = s.median("rss_after_kib")
            span = (
                DASH
                if before is None or after is None
                else (f"{before / 1024:.1f} → {after / 1024:.1f} MiB")
            )
            storm = s.median("storm_s")
            refused = s.median("storm_errors")
            out.append(
                f"| {name} | {s.show('rss_per_conn_bytes', fmt_bytes)} | "
                f"{s.show('connects_per_s', fmt_rate)} | {span} | "
                f"{DASH if storm is None else f'{storm:.1f} s'} | "
                f"{DASH if refused is None else f'{refused:.0f}'} |"
            )
        r = ratio(p.median("rss_per_conn_bytes"), m.median("rss_per_conn_bytes"))
        cr = ratio(p.median("connects_per_s"), m.median("connects_per_s"))
        met = None if r is None else (r <= RSS_TARGET and not p.failed)
        if met is not None:
            met_count[0 if met else 1] += 1
        out.append("")
        out.append(
            f"RSS per connection ratio pyo3mq/Mosquitto: "
            f"{DASH if r is None else f'{r:.1f}x'} (target ≤ {RSS_TARGET}x: {verdict(met)});"
            f" connect rate ratio: {DASH if cr is None else f'{cr:.2f}x'}"
        )
        out.append("")

    failures = [r for r in results if r.get("failure")]
    out.append(
        f"Targets met: {met_count[0]} of {met_count[0] + met_count[1]}. "
        f"Failed runs: {len(failures)} of {len(results)}."
    )
    for f in failures:
        out.append(f"- {f['broker']} {f['cell']} rep {f.get('rep')}: {f['failure']}")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- main


def version_of(argv: list[str], prefix: str) -> str:
    """The first output line of `argv` that starts with `prefix` ('?' if none)."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "?"
    lines = (done.stdout + done.stderr).splitlines()
    return next((ln.strip() for ln in lines if ln.startswith(prefix)), "?")


def git_describe() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src", "python"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return f"{head}{' + uncommitted changes in src/python' if dirty else ''}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="a ~2 minute subset: 64 B only, smaller runs, fewer paced cells",
    )
    ap.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    ap.add_argument(
        "--only",
        default="throughput,paced,idle,transports,handshakes,v5",
        help="comma-separated parts: throughput, paced, idle, transports (TLS and WebSocket "
        "rows), handshakes (TLS handshake rate), v5 (MQTT 5.0 rows beside their 3.1.1 "
        "cells) (default: all)",
    )
    ap.add_argument("--filter", default="", help="run only cells whose key contains this")
    ap.add_argument(
        "--scale",
        type=float,
        default=None,
        help="multiply run sizes (default 1, or 0.4 with --quick)",
    )
    ap.add_argument(
        "--wildcard-sizes", default="64", help="payload sizes of the wildcard variant (default 64)"
    )
    ap.add_argument(
        "--paced-seconds",
        type=float,
        default=None,
        help="length of a paced run (default 2, or 1 with --quick)",
    )
    ap.add_argument("--idle-connections", type=int, default=100_000)
    ap.add_argument(
        "--idle-concurrency",
        type=int,
        default=500,
        help="handshakes in flight in the idle test and its reconnect storm (default 500)",
    )
    ap.add_argument(
        "--idle-settle",
        type=float,
        default=7.0,
        help="seconds both brokers' connections stay idle before RSS is read (default 7: "
        "longer than pyo3mq's idle_park_after, 5, so its connections are parked)",
    )
    ap.add_argument(
        "--idle-reps",
        type=int,
        default=None,
        help="idle-connection repetitions (default: --reps, or 1 with --quick)",
    )
    ap.add_argument("--threads", type=int, default=1, help="generator threads (default 1)")
    ap.add_argument(
        "--pyo3mq", default=None, help="pyo3mq command (default .venv/bin/pyo3mq, else on PATH)"
    )
    ap.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    ap.add_argument(
        "--baseline",
        default=None,
        help="another pyo3mq command (an older build) run in the same rotation on the TCP "
        "throughput and paced cells and the idle test; the summary compares throughput and "
        "CPU per delivery, and RSS per idle connection",
    )
    ap.add_argument(
        "--generator", default=None, help="prebuilt load generator (default: build it with cargo)"
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory (default target/bench-load/DATE-TIME)",
    )
    args = ap.parse_args(argv)
    if args.scale is None:
        args.scale = 0.4 if args.quick else 1.0
    if args.paced_seconds is None:
        args.paced_seconds = 1.0 if args.quick else 2.0
    if args.idle_reps is None:
        args.idle_reps = 1 if args.quick else args.reps
    if args.pyo3mq is None:
        venv = ROOT / ".venv" / "bin" / "pyo3mq"
        args.pyo3mq = str(venv) if venv.exists() else (shutil.which("pyo3mq") or "pyo3mq")
    if args.reps < 1 or args.idle_reps < 0 or args.idle_connections < 1:
        ap.error("--reps must be at least 1")
    args.idle_connections = fit_idle_connections(args.idle_connections)
    return args


def fit_idle_connections(wanted: int) -> int:
    """The idle test's connection count, within the descriptor limit this machine lets
    a process raise itself to: the broker needs one descriptor per connection, and
    raising the hard limit (`ulimit -Hn`) needs root with CAP_SYS_RESOURCE. Fewer
    connections than asked, with a warning, rather than a run that fails at the limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard >= wanted + 1000:
        return wanted
    try:
        # Succeeds only with CAP_SYS_RESOURCE; the brokers inherit nothing from it (each
        # raises its own limit in raise_nofile), it only tells whether they can.
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, wanted + 1000))
        return wanted
    except (ValueError, OSError):
        pass
    fitted = max(1000, (hard - 1000) // 1000 * 1000)
    print(
        f"run_load: the descriptor hard limit is {hard} and cannot be raised here (needs "
        f"root with CAP_SYS_RESOURCE, or `ulimit -Hn {wanted + 1000}` before starting): "
        f"{fitted:,} idle connections instead of {wanted:,}",
        file=sys.stderr,
    )
    return fitted


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    only = {p.strip() for p in args.only.split(",") if p.strip()}
    wild_sizes = [int(s) for s in args.wildcard_sizes.split(",") if s.strip()]
    matrix = [c for c in build_matrix(args.quick, only, wild_sizes) if args.filter in c.key]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    # Absolute: the brokers run with the output directory as their working directory.
    out: Path = (args.out or ROOT / "target" / "bench-load" / stamp).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for exe in (args.pyo3mq, args.mosquitto, *([args.baseline] if args.baseline else [])):
        if not (Path(exe).exists() or shutil.which(exe)):
            print(
                f"run_load: {exe} not found (make build; apt-get install mosquitto)",
                file=sys.stderr,
            )
            return 2
    exe = args.generator or build_generator()
    started = time.monotonic()
    load_start = loadavg()
    command = "python3 benches/run_load.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(
        f"run_load: {len(matrix)} cells x 2 brokers x {args.reps} repetitions"
        f"{', idle connections' if 'idle' in only else ''}; output in {out}",
        file=sys.stderr,
    )

    brokers = {
        name: Broker(name, args.pyo3mq if name == "pyo3mq" else args.mosquitto, out)
        for name in ("pyo3mq", "mosquitto", "mosquitto-nodelay")
    }
    if args.baseline:
        brokers[BASELINE] = Broker(BASELINE, args.baseline, out)
    results: list[Result] = []
    jsonl = (out / "results.jsonl").open("a")

    def record(r: Result, rep: int) -> None:
        r["rep"] = rep
        results.append(r)
        jsonl.write(json.dumps(r) + "\n")
        jsonl.flush()
        shown = fmt_rate(r["deliveries_per_s"]) + "/s" if r.get("deliveries_per_s") else ""
        if r["cell"].startswith("paced") and r.get("p99_us") is not None:
            shown = f"p50 {fmt_us(r['p50_us'])} p99 {fmt_us(r['p99_us'])}"
        if r["cell"] == "handshakes/tls" and r.get("connects_per_s") is not None:
            shown = f"{fmt_rate(r['connects_per_s'])} TLS handshakes/s"
        elif r["cell"] == "idle" and r.get("rss_per_conn_bytes") is not None:
            shown = (
                f"{fmt_bytes(r['rss_per_conn_bytes'])}/conn, "
                f"{fmt_rate(r['connects_per_s'])} connects/s"
            )
        status = f"FAILED: {r['failure']}" if r.get("failure") else shown
        print(f"  rep {rep} {r['broker']:<9} {r['cell']:<28} {status}", file=sys.stderr, flush=True)

    try:
        for rep in range(1, args.reps + 1):
            if not matrix:
                break
            order = ["pyo3mq", *([BASELINE] if args.baseline else []), "mosquitto"]
            order = order if rep % 2 else order[::-1]
            needed = (
                {"pyo3mq"}
                | (
                    {BASELINE}
                    if args.baseline and any(c.transport == "tcp" for c in matrix)
                    else set()
                )
                | {"mosquitto" for c in matrix if c.kind == "sat"}
                | {"mosquitto-nodelay" for c in matrix if c.kind == "paced"}
            )
            for name in sorted(needed):
                brokers[name].start()
            for cell in matrix:
                # Paced runs are short and their tails sensitive to whatever else runs:
                # two per broker per repetition, in ABBA order.
                for label in order + order[::-1] if cell.kind == "paced" else order:
                    if label == BASELINE and cell.transport != "tcp":
                        continue
                    name = (
                        "mosquitto-nodelay"
                        if (label == "mosquitto" and cell.kind == "paced")
                        else label
                    )
                    broker = brokers[name]
                    r = run_cell(exe, broker, cell, args)
                    record(r, rep)
                    if r.get("failure") or broker.proc is None or broker.proc.poll() is not None:
                        broker.start()  # never carry a failed run's backlog into the next
                    else:
                        time.sleep(0.1)
            for b in brokers.values():
                b.stop()
        if "idle" in only:
            for rep in range(1, args.idle_reps + 1):
                # With --baseline, the older build's idle memory in the same rotation.
                order = ["pyo3mq", *([BASELINE] if args.baseline else []), "mosquitto"]
                order = order if rep % 2 else order[::-1]
                for name in order:
                    record(run_idle(exe, brokers[name], args), rep)
        if "handshakes" in only:
            for rep in range(1, args.idle_reps + 1):
                order = ["pyo3mq", "mosquitto"] if rep % 2 else ["mosquitto", "pyo3mq"]
                for name in order:
                    record(run_idle(exe, brokers[name], args, transport="tls"), rep)
    except KeyboardInterrupt:
        print("run_load: interrupted; summarizing what ran", file=sys.stderr)
    finally:
        for b in brokers.values():
            b.stop()
        jsonl.close()

    others = [
        float(r["other_cpu_s"]) / max(float(r.get("wall_s") or 1e-9), 1e-9)
        for r in results
        if r.get("other_cpu_s") is not None and r.get("wall_s")
    ]
    meta = {
        "command": command.strip(),
        "machine": machine(),
        "pyo3mq_version": version_of([args.pyo3mq, "--version"], "pyo3mq "),
        "mosquitto_version": version_of([args.mosquitto, "-h"], "mosquitto version"),
        "git": git_describe(),
        "reps": args.reps,
        "started": time.strftime("%Y-%m-%d %H:%M"),
        "minutes": (time.monotonic() - started) / 60,
        "load_start": load_start,
        "load_end": loadavg(),
        "other_cpu": f"{statistics.median(others) * 100:.0f}% of a core" if others else "?",
        "paced_seconds": args.paced_seconds,
        "idle_connections": args.idle_connections,
        "idle_concurrency": args.idle_concurrency,
        "idle_settle": args.idle_settle,
    }
    summary = summarize(results, meta, matrix)
    (out / "summary.md").write_text(summary)
    print(summary)
    print(f"run_load: results in {out}/results.jsonl, summary in {out}/summary.md", file=sys.stderr)
    return 1 if any(r.get("failure") for r in results) else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
