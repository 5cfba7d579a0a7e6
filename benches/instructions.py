"""Instructions per delivery, counted by Valgrind's callgrind: a noise-free comparison of
two pyo3mq builds (or of one build over time) on a machine too busy for wall-clock figures.

For each build and scenario the broker runs under `valgrind --tool=callgrind` twice, once
with N and once with 2N deliveries from the repo's load generator; the difference of the two
program totals divided by the difference of the deliveries is the marginal cost of one
delivery, with the interpreter's start-up and the broker's set-up cancelled out. Counts of
executed instructions do not depend on what else the machine runs, so two builds compare
exactly; they do not see cache misses, lock contention or scheduling, which the wall-clock
benchmark (`run_load.py`) measures (see benches/README.md, "Instructions per delivery").

    python benches/instructions.py --baseline /path/to/old/.venv/bin/pyo3mq \
        --scenario 1:1 --qos 0 --deliveries 300000

needs `valgrind` (Debian: `apt-get install -y valgrind`). Under Valgrind's slowdown the
default queue limit (1,000 messages) drops part of a fan-out, and a dropped message costs
routing work too, so the figure depends on how many each run drops; `--config` with a TOML
file holding `max_queued_messages = 10000000` delivers every message (benches/README.md,
"Session 7"). `--keep DIR` keeps the callgrind files for `callgrind_annotate`.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster_bench import wait_port
from run_load import build_generator, free_port


@dataclass(frozen=True)
class Count:
    instructions: int
    delivered: int
    published: int


def program_total(out: Path) -> int:
    """The `summary:` line of callgrind's output file (all threads' instructions)."""
    m = re.search(r"^summary:\s+(\d+)", out.read_text(errors="replace"), re.MULTILINE)
    if not m:
        raise RuntimeError(f"no instruction total in {out}")
    return int(m.group(1))


def count(broker: str, gen: str, args: argparse.Namespace, deliveries: int, tmp: Path) -> Count:
    port = free_port()
    out = tmp / f"callgrind-{port}.out"
    proc = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            broker,
            "--port",
            str(port),
            *(["--config", args.config] if args.config else []),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, proc, "the broker under callgrind", limit=120)
        run = subprocess.run(
            [
                gen,
                "run",
                *("--port", str(port), "--label", "callgrind"),
                *("--scenario", args.scenario, "--qos", str(args.qos)),
                *("--size", str(args.size), "--threads", "1"),
                *("--deliveries", str(deliveries), "--timeout", "60", "--max-seconds", "900"),
                *(["--protocol", "5"] if args.protocol == 5 else []),
            ],
            capture_output=True,
            text=True,
            timeout=1200,
        )
        result = json.loads(run.stdout.strip().splitlines()[-1])
    finally:
        proc.send_signal(2)  # SIGINT: the broker stops, callgrind writes its file
        proc.wait(timeout=120)
    return Count(program_total(out), int(result["delivered"]), int(result["published"]))


def keep(tmp: Path, dest: Path, name: str, counts: tuple[Count, ...]) -> None:
    """Moves the callgrind files of one build's runs to `dest` as NAME-DELIVERED.out."""
    dest.mkdir(parents=True, exist_ok=True)
    for out in tmp.glob("callgrind-*.out"):
        total = program_total(out)
        for c in counts:
            if c.instructions == total:
                out.rename(dest / f"{name}-{c.delivered}.out")


def marginal(small: Count, large: Count) -> float:
    delivered = large.delivered - small.delivered
    if delivered <= 0:
        raise RuntimeError("the larger run delivered no more than the smaller one")
    return (large.instructions - small.instructions) / delivered


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--broker", default=shutil.which("pyo3mq") or "pyo3mq", help="the build to measure"
    )
    p.add_argument("--baseline", default=None, help="another pyo3mq command to compare with")
    p.add_argument("--scenario", default="1:1", choices=("1:1", "fanin", "fanout", "mesh"))
    p.add_argument("--qos", type=int, default=0, choices=(0, 1, 2))
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--protocol", type=int, default=4, choices=(4, 5))
    p.add_argument("--deliveries", type=int, default=300_000, help="N (the second run has 2N)")
    p.add_argument("--generator", default=None, help="prebuilt load generator")
    p.add_argument("--config", default=None, help="broker config file given to both builds")
    p.add_argument(
        "--keep", default=None, help="directory to keep the callgrind files in (NAME-N.out)"
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not shutil.which("valgrind"):
        print("valgrind is not installed (Debian: apt-get install -y valgrind)", file=sys.stderr)
        return 2
    gen = args.generator or build_generator()
    builds = [("broker", args.broker)] + ([("baseline", args.baseline)] if args.baseline else [])
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, command in builds:
            small = count(command, gen, args, args.deliveries, Path(tmp))
            large = count(command, gen, args, 2 * args.deliveries, Path(tmp))
            if args.keep:
                keep(Path(tmp), Path(args.keep), name, (small, large))
            figures[name] = marginal(small, large)
            print(
                f"{name}: {figures[name]:.0f} instructions per delivery "
                f"({small.delivered} and {large.delivered} delivered of "
                f"{small.published} and {large.published} published) [{command}]"
            )
    if "baseline" in figures:
        print(f"broker / baseline: {figures['broker'] / figures['baseline']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
