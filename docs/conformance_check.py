#!/usr/bin/env python3
"""Checks docs/conformance.md against the list of MQTT 3.1.1 statements and the test tree,
and docs/conformance_v5.md against the MQTT 5.0 statements.

    python docs/conformance_check.py            # exit 1 on a missing/bad row or test reference
    python docs/conformance_check.py --strict   # ...and also exit 1 while any GAP row remains
    python docs/conformance_check.py --ids PATH # read the ID list from mqtt-3.1.1-ids.tsv
    python docs/conformance_check.py --doc PATH # check another copy of the document
    python docs/conformance_check.py --v5-complete  # also require a row for every 5.0
                                                # Server/both statement (the final form)

What it verifies:

* every one of the 141 statement IDs has exactly one table row, and its Binds column matches
  the ID list (the list is embedded below and compared with docs/spec/mqtt-3.1.1-ids.tsv,
  the in-repository copy of the team's list);
* a row for a Server/both ID cites at least one test, or says "Not applicable: <reason>",
  or is an explicit "GAP: ..." row (reported, and fatal with --strict);
* a row for a Client ID says "Client library (pyo3mq.Client) ..." (then tests/test_client.py
  must exist and the Notes must name one of its tests) or "Client rule: not applicable to
  the broker" (a warning when tests/test_client.py exists and the Notes do not mention it);
* every test cited anywhere in the document exists: `tests/test_x.py::test_name[param-id]`
  needs `def test_name(` in that file (and `id="param-id"` when a bracket is given);
  `tests/x.rs::name` and `src/x.rs::tests::name` need `fn name(` in that file;
* the counts in the document's summary table equal the counts computed from the rows.

The MQTT 5.0 table (docs/conformance_v5.md, 251 statements, embedded below as
`EMBEDDED_IDS_V5`) is checked the same way: the Binds value matches, a Server/both row
cites existing tests or says "Not applicable: <reason>", and the counts in its summary
table equal the rows'. A Client row says either "Client library (pyo3mq.Client) ..." and
then cites at least one test of the client library (`tests/test_client*.py::test_x`,
`src/client/...rs::tests::x`), or "Not applicable to the client library: <reason>". The
client side of a "both" row may be shown in its Notes as "Client library: <tests>" (the
tests must be client-library tests; counted, not required). While 5.0 support is being
built, a Server/both row may say "Not yet: <feature>" for one of the features of issue 13
still under way (`NOT_YET_FEATURES`); it counts as unmapped, never as proven, and so do
statements without a row. `--v5-complete` makes every missing or "Not yet" Server/both row
an error, which is the check's final form.

Standard library only; it imports nothing from the project and runs no test.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "conformance.md"

# The 141 statements of MQTT 3.1.1 (OASIS Standard + Errata 01) and whom they bind,
# as in docs/spec/mqtt-3.1.1-ids.tsv (statement texts: docs/spec/mqtt-3.1.1-checklist.md).
EMBEDDED_IDS = """
1.5.3-1 both|1.5.3-2 both|1.5.3-3 both|2.2.2-1 both|2.2.2-2 both|2.3.1-1 both|2.3.1-2 Client
2.3.1-3 Client|2.3.1-4 Server|2.3.1-5 both|2.3.1-6 both|2.3.1-7 Server|3.1.0-1 Client
3.1.0-2 Server|3.1.2-1 Server|3.1.2-2 Server|3.1.2-3 Server|3.1.2-4 both|3.1.2-5 Server
3.1.2-6 both|3.1.2-7 Server|3.1.2-8 Server|3.1.2-9 Client|3.1.2-10 Server|3.1.2-11 Client
3.1.2-12 Server|3.1.2-13 Client|3.1.2-14 Client|3.1.2-15 Client|3.1.2-16 Server
3.1.2-17 Server|3.1.2-18 Client|3.1.2-19 Client|3.1.2-20 Client|3.1.2-21 Client
3.1.2-22 Client|3.1.2-23 Client|3.1.2-24 Server|3.1.3-1 Client|3.1.3-2 both|3.1.3-3 Client
3.1.3-4 Client|3.1.3-5 Server|3.1.3-6 Server|3.1.3-7 Client|3.1.3-8 Server|3.1.3-9 Server
3.1.3-10 Client|3.1.3-11 Client|3.1.4-1 Server|3.1.4-2 Server|3.1.4-3 Server|3.1.4-4 Server
3.1.4-5 Server|3.2.0-1 Server|3.2.2-1 Server|3.2.2-2 Server|3.2.2-3 Server|3.2.2-4 Server
3.2.2-5 Server|3.2.2-6 Server|3.3.1-1 both|3.3.1-2 both|3.3.1-3 Server|3.3.1-4 both
3.3.1-5 Server|3.3.1-6 Server|3.3.1-7 Server|3.3.1-8 Server|3.3.1-9 Server|3.3.1-10 Server
3.3.1-11 Server|3.3.1-12 Server|3.3.2-1 both|3.3.2-2 both|3.3.2-3 Server|3.3.4-1 both
3.3.5-1 Server|3.3.5-2 Server|3.6.1-1 both|3.8.1-1 both|3.8.3-1 Client|3.8.3-2 Server
3.8.3-3 both|3.8.3-4 Server|3.8.4-1 Server|3.8.4-2 Server|3.8.4-3 Server|3.8.4-4 Server
3.8.4-5 Server|3.8.4-6 Server|3.9.3-1 Server|3.9.3-2 Server|3.10.1-1 both|3.10.3-1 Client
3.10.3-2 both|3.10.4-1 Server|3.10.4-2 Server|3.10.4-3 Server|3.10.4-4 Server
3.10.4-5 Server|3.10.4-6 Server|3.12.4-1 Server|3.14.1-1 Server|3.14.4-1 Client
3.14.4-2 Client|3.14.4-3 Server|4.1.0-1 both|4.1.0-2 both|4.3.1-1 both|4.3.2-1 both
4.3.2-2 both|4.3.3-1 both|4.3.3-2 both|4.4.0-1 both|4.5.0-1 Server|4.5.0-2 Client
4.6.0-1 both|4.6.0-2 both|4.6.0-3 both|4.6.0-4 both|4.6.0-5 Server|4.6.0-6 Server
4.7.1-1 both|4.7.1-2 both|4.7.1-3 both|4.7.2-1 Server|4.7.3-1 both|4.7.3-2 both|4.7.3-3 both
4.7.3-4 Server|4.8.0-1 both|4.8.0-2 both|6.0.0-1 both|6.0.0-2 both|6.0.0-3 Client
6.0.0-4 Server|7.0.0-1 Server|7.0.0-2 both|7.1.1-1 Server|7.1.2-1 Client
"""

# The 251 statements of MQTT 5.0 (OASIS Standard, 7 March 2019) and whom they bind, as in
# shared/spec/mqtt-5.0-ids.tsv.
EMBEDDED_IDS_V5 = """
1.5.4-1 both|1.5.4-2 both|1.5.4-3 both|1.5.5-1 both|1.5.7-1 both|2.1.3-1 both
2.2.1-2 both|2.2.1-3 Client|2.2.1-4 Server|2.2.1-5 both|2.2.1-6 Server|2.2.2-1 both
3.1.0-1 Client|3.1.0-2 Server|3.1.2-1 both|3.1.2-2 Server|3.1.2-3 Server|3.1.2-4 both
3.1.2-5 Server|3.1.2-6 Server|3.1.2-7 Server|3.1.2-8 Server|3.1.2-9 Client
3.1.2-10 Server|3.1.2-11 Client|3.1.2-12 Client|3.1.2-13 Client|3.1.2-14 Server
3.1.2-15 Server|3.1.2-16 Client|3.1.2-17 Client|3.1.2-18 Client|3.1.2-19 Client
3.1.2-20 Client|3.1.2-21 Client|3.1.2-22 Server|3.1.2-23 both|3.1.2-24 Server
3.1.2-25 Server|3.1.2-26 Server|3.1.2-27 Server|3.1.2-28 Server|3.1.2-29 Server
3.1.2-30 Client|3.1.3-1 Client|3.1.3-2 both|3.1.3-3 Client|3.1.3-4 Client|3.1.3-5 Server
3.1.3-6 Server|3.1.3-7 Server|3.1.3-8 Server|3.1.3-9 Server|3.1.3-10 Server
3.1.3-11 Client|3.1.3-12 Client|3.1.4-1 Server|3.1.4-2 Server|3.1.4-3 Server
3.1.4-4 Server|3.1.4-5 Server|3.1.4-6 Server|3.2.0-1 Server|3.2.0-2 Server
3.2.2-1 Server|3.2.2-2 Server|3.2.2-3 Server|3.2.2-4 Client|3.2.2-5 Client
3.2.2-6 Server|3.2.2-7 Server|3.2.2-8 Server|3.2.2-9 Server|3.2.2-10 Server
3.2.2-11 Client|3.2.2-12 Server|3.2.2-13 Server|3.2.2-14 Client|3.2.2-15 Client
3.2.2-16 Server|3.2.2-17 Client|3.2.2-18 Client|3.2.2-19 Server|3.2.2-20 Server
3.2.2-21 Client|3.2.2-22 Server|3.3.1-1 both|3.3.1-2 both|3.3.1-3 Server|3.3.1-4 both
3.3.1-5 Server|3.3.1-6 Server|3.3.1-7 Server|3.3.1-8 Server|3.3.1-9 Server
3.3.1-10 Server|3.3.1-11 Server|3.3.1-12 Server|3.3.1-13 Server|3.3.2-1 both
3.3.2-2 both|3.3.2-3 Server|3.3.2-4 Server|3.3.2-5 Server|3.3.2-6 Server|3.3.2-7 both
3.3.2-8 both|3.3.2-9 Client|3.3.2-10 Client|3.3.2-11 Server|3.3.2-12 Server
3.3.2-13 both|3.3.2-14 both|3.3.2-15 Server|3.3.2-16 Server|3.3.2-17 Server
3.3.2-18 Server|3.3.2-19 both|3.3.2-20 Server|3.3.4-1 both|3.3.4-2 Server|3.3.4-3 Server
3.3.4-4 Server|3.3.4-5 Server|3.3.4-6 Client|3.3.4-7 Client|3.3.4-8 Client
3.3.4-9 Server|3.3.4-10 Server|3.4.2-1 both|3.4.2-2 both|3.4.2-3 both|3.5.2-1 both
3.5.2-2 both|3.5.2-3 both|3.6.1-1 both|3.6.2-1 both|3.6.2-2 both|3.6.2-3 both
3.7.2-1 both|3.7.2-2 both|3.7.2-3 both|3.8.1-1 both|3.8.3-1 Client|3.8.3-2 Client
3.8.3-3 Server|3.8.3-4 Client|3.8.3-5 Server|3.8.4-1 Server|3.8.4-2 Server
3.8.4-3 Server|3.8.4-4 Server|3.8.4-5 Server|3.8.4-6 Server|3.8.4-7 Server
3.8.4-8 Server|3.9.2-1 Server|3.9.2-2 Server|3.9.3-1 Server|3.9.3-2 Server|3.10.1-1 both
3.10.3-1 Client|3.10.3-2 Client|3.10.4-1 Server|3.10.4-2 Server|3.10.4-3 Server
3.10.4-4 Server|3.10.4-5 Server|3.10.4-6 Server|3.11.2-1 Server|3.11.2-2 Server
3.11.3-1 Server|3.11.3-2 Server|3.12.4-1 Server|3.14.0-1 Server|3.14.1-1 both
3.14.2-1 both|3.14.2-2 Server|3.14.2-3 both|3.14.2-4 both|3.14.4-1 both|3.14.4-2 both
3.14.4-3 Server|3.15.1-1 both|3.15.2-1 both|3.15.2-2 both|3.15.2-3 both|4.1.0-1 both
4.1.0-2 Server|4.2.0-1 both|4.3.1-1 both|4.3.2-1 both|4.3.2-2 both|4.3.2-3 both
4.3.2-4 both|4.3.2-5 both|4.3.3-1 both|4.3.3-2 both|4.3.3-3 both|4.3.3-4 both
4.3.3-5 both|4.3.3-6 both|4.3.3-7 both|4.3.3-8 both|4.3.3-9 both|4.3.3-10 both
4.3.3-11 both|4.3.3-12 both|4.3.3-13 both|4.4.0-1 both|4.4.0-2 both|4.5.0-1 Server
4.5.0-2 Client|4.6.0-1 Client|4.6.0-2 Client|4.6.0-3 Client|4.6.0-4 Client
4.6.0-5 Server|4.6.0-6 Server|4.7.0-1 both|4.7.1-1 both|4.7.1-2 both|4.7.2-1 Server
4.7.3-1 both|4.7.3-2 both|4.7.3-3 both|4.7.3-4 Server|4.8.2-1 both|4.8.2-2 both
4.8.2-3 Server|4.8.2-4 Server|4.8.2-5 Server|4.8.2-6 Server|4.9.0-1 both|4.9.0-2 both
4.9.0-3 both|4.12.0-1 Server|4.12.0-2 Server|4.12.0-3 Client|4.12.0-4 Server
4.12.0-5 both|4.12.0-6 Server|4.12.0-7 Client|4.12.1-1 Client|4.12.1-2 both
4.13.1-1 Server|4.13.2-1 both|6.0.0-1 both|6.0.0-2 both|6.0.0-3 Client|6.0.0-4 Server
"""

DOC_V5 = ROOT / "docs" / "conformance_v5.md"

TSV_CANDIDATES = [
    ROOT / "docs" / "spec" / "mqtt-3.1.1-ids.tsv",
    ROOT / "shared" / "spec" / "mqtt-3.1.1-ids.tsv",
    ROOT.parent / "shared" / "spec" / "mqtt-3.1.1-ids.tsv",
]

CLIENT_LIBRARY = "Client library (pyo3mq.Client)"
CLIENT_NA = "Client rule: not applicable to the broker"
NOT_APPLICABLE = "Not applicable:"
GAP = "GAP"
# 5.0 Client rows: proven through the client library, or a reason it does not apply to it.
CLIENT_LIBRARY_NA = "Not applicable to the client library:"
# The client side of a 5.0 "both" row, in its Notes: "Client library: <tests>".
CLIENT_SIDE = "Client library:"
# What counts as a test of the client library.
CLIENT_TEST = re.compile(r"tests/test_client[\w]*\.py::test_\w+|src/client/[\w/]+\.rs::")
# A 5.0 Server/both row whose feature is still being built: "Not yet: <feature> ...". It is
# counted with the statements that have no row (unmapped), never as proven, and
# --v5-complete rejects it like a missing row.
NOT_YET = "Not yet:"
NOT_YET_FEATURES = (
    "Receive Maximum",
    "Topic Alias",
    "Will Delay Interval",
    "Session Expiry",
    "Server Keep Alive",
    "Request Problem Information",
)

PY_REF = re.compile(r"(tests/[\w/]+\.py)::(test_\w+)(?:\[([^\]\s]+)\])?")
RS_REF = re.compile(r"((?:tests|src)/[\w/]+\.rs)::(?:tests::)?(\w+)")
ROW = re.compile(r"^\|\s*`?(MQTT-[0-9.-]+)`?\s*\|")


def canonical(raw: str) -> str:
    """Accepts the spec's two irregular spellings (MQTT-3.1.2.7, MQTT-3-8.3-4)."""
    fixed = {"MQTT-3.1.2.7": "MQTT-3.1.2-7", "MQTT-3-8.3-4": "MQTT-3.8.3-4"}
    return fixed.get(raw, raw)


def read_tsv(path: Path) -> dict[str, str]:
    """ID -> Binds from a shared/spec/*-ids.tsv file."""
    ids = {}
    for line in path.read_text().splitlines():
        if line.strip():
            ident, binds = line.split("\t")[:2]
            ids[canonical(ident.strip())] = binds.strip()
    return ids


def load_ids(path: Path | None) -> dict[str, str]:
    embedded = {}
    for item in EMBEDDED_IDS.replace("\n", "|").split("|"):
        if item.strip():
            number, binds = item.split()
            embedded[f"MQTT-{number}"] = binds
    assert len(embedded) == 141, len(embedded)
    candidates = [path] if path else TSV_CANDIDATES
    for candidate in candidates:
        if candidate and candidate.is_file():
            from_tsv = read_tsv(candidate)
            if from_tsv != embedded:
                print(f"note: {candidate} differs from the embedded list; using the TSV")
            return from_tsv
    if path:
        sys.exit(f"error: {path} not found")
    return embedded


def parse_rows(text: str) -> tuple[dict[str, list[str]], list[str]]:
    rows: dict[str, list[str]] = {}
    errors = []
    for n, line in enumerate(text.splitlines(), 1):
        m = ROW.match(line)
        if not m:
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        ident = canonical(m.group(1))
        if len(cells) != 5:
            errors.append(f"line {n}: {ident}: expected 5 cells, found {len(cells)}")
            continue
        if ident in rows:
            errors.append(f"line {n}: {ident}: second row for this ID")
            continue
        rows[ident] = cells
    return rows, errors


def check_refs(text: str) -> tuple[int, list[str]]:
    """Every test reference anywhere in the document must exist."""
    errors = []
    seen: set[tuple[str, ...]] = set()
    cache: dict[Path, str] = {}

    def source(rel: str) -> str | None:
        p = ROOT / rel
        if p not in cache:
            cache[p] = p.read_text() if p.is_file() else ""
        return cache[p] or None

    for m in PY_REF.finditer(text):
        rel, name, param = m.groups()
        if (rel, name, param) in seen:
            continue
        seen.add((rel, name, param))
        src = source(rel)
        if src is None:
            errors.append(f"{m.group(0)}: no file {rel}")
        elif not re.search(rf"^(?:async )?def {name}\(", src, re.M):
            errors.append(f"{m.group(0)}: no `def {name}(` in {rel}")
        elif param and f'id="{param}"' not in src and param not in src:
            errors.append(f"{m.group(0)}: no parameter id {param!r} in {rel}")
    for m in RS_REF.finditer(text):
        rel, name = m.groups()
        if (rel, name) in seen:
            continue
        seen.add((rel, name))
        src = source(rel)
        if src is None:
            errors.append(f"{m.group(0)}: no file {rel}")
        elif not re.search(rf"\bfn {name}\s*\(", src):
            errors.append(f"{m.group(0)}: no `fn {name}(` in {rel}")
    return len(seen), errors


def has_ref(cell: str) -> bool:
    return bool(PY_REF.search(cell) or RS_REF.search(cell))


# Summary-table labels -> count keys, for each document.
SUMMARY_LABELS = {
    "Server/both IDs": "total",
    "Proven by tests": "proven",
    "Not applicable": "na",
    "Gaps": "gap",
    "Client-only IDs": "client",
    "Client rows covered by tests/test_client.py": "client_lib",
}
SUMMARY_LABELS_V5 = {
    "Server/both IDs": "total",
    "Proven by tests": "proven",
    "Not applicable": "na",
    "Not yet": "not_yet",
    "Client-only IDs": "client",
    "Client rows proven by client-library tests": "client_lib",
    "Client rows not applicable to the client library": "client_na",
    "both rows with client-library tests": "both_client",
}


def summary_counts(text: str, labels: dict[str, str] = SUMMARY_LABELS) -> dict[str, int]:
    """The `| Label | N |` rows of a document's summary table, by count key."""
    found = {}
    for line in text.splitlines():
        m = re.match(r"^\|\s*\*{0,2}([^|*]+?)\*{0,2}\s*\|\s*\*{0,2}(\d+)\*{0,2}\s*\|", line)
        if m and m.group(1) in labels:
            found[labels[m.group(1)]] = int(m.group(2))
    return found


def load_ids_v5() -> dict[str, str]:
    ids = {}
    for item in EMBEDDED_IDS_V5.replace("\n", "|").split("|"):
        if item.strip():
            number, binds = item.split()
            ids[f"MQTT-{number}"] = binds
    assert len(ids) == 251, len(ids)
    for base in (ROOT / "shared" / "spec", ROOT.parent / "shared" / "spec"):
        tsv = base / "mqtt-5.0-ids.tsv"
        if tsv.is_file():
            from_tsv = read_tsv(tsv)
            if from_tsv != ids:
                print(f"note: {tsv} differs from the embedded 5.0 list; using the TSV")
                return from_tsv
    return ids


def check_v5(doc: Path, complete: bool) -> tuple[list[str], str]:
    """Checks the 5.0 table: (errors, one-line report)."""
    ids = load_ids_v5()
    if not doc.is_file():
        return [f"{doc}: missing"], ""
    text = doc.read_text()
    rows, errors = parse_rows(text)
    counts = {
        "total": 0,
        "proven": 0,
        "na": 0,
        "not_yet": 0,
        "client": 0,
        "client_lib": 0,
        "client_na": 0,
        "both_client": 0,
    }
    missing = []
    not_yet: list[str] = []
    for ident, binds in ids.items():
        if binds != "Client":
            counts["total"] += 1
        row = rows.get(ident)
        if row is None:
            if binds != "Client":
                missing.append(ident)
            else:
                errors.append(f"5.0 {ident} (Client): no row")
            continue
        _, row_binds, requirement, proof, notes = row
        if row_binds != binds:
            errors.append(f"5.0 {ident}: Binds is {row_binds!r}, the ID list says {binds!r}")
        if not requirement:
            errors.append(f"5.0 {ident}: empty Requirement")
        if binds == "Client":
            counts["client"] += 1
            if proof.startswith(CLIENT_LIBRARY):
                counts["client_lib"] += 1
                if not CLIENT_TEST.search(proof + " " + notes):
                    errors.append(f"5.0 {ident}: cites no test of the client library")
            elif proof.startswith(CLIENT_LIBRARY_NA):
                counts["client_na"] += 1
                if len(proof) <= len(CLIENT_LIBRARY_NA) + 10:
                    errors.append(f"5.0 {ident}: {CLIENT_LIBRARY_NA!r} without a reason")
            else:
                errors.append(
                    f"5.0 {ident}: a Client row must start with {CLIENT_LIBRARY!r} "
                    f"or {CLIENT_LIBRARY_NA!r}"
                )
            continue
        if CLIENT_SIDE in notes:
            if CLIENT_TEST.search(notes.split(CLIENT_SIDE, 1)[1]):
                counts["both_client"] += 1
            else:
                errors.append(f"5.0 {ident}: {CLIENT_SIDE!r} in Notes names no client test")
        if proof.startswith(NOT_YET):
            feature = proof[len(NOT_YET) :].strip()
            if not feature.startswith(NOT_YET_FEATURES):
                errors.append(
                    f"5.0 {ident}: 'Not yet:' names none of the features under way "
                    f"{NOT_YET_FEATURES}: {proof[:50]!r}"
                )
            not_yet.append(ident)
            counts["not_yet"] += 1
        elif proof.startswith(NOT_APPLICABLE):
            if len(proof) <= len(NOT_APPLICABLE) + 3:
                errors.append(f"5.0 {ident}: 'Not applicable:' without a reason")
            counts["na"] += 1
        elif has_ref(proof):
            counts["proven"] += 1
        else:
            errors.append(f"5.0 {ident}: Proof cites no test, nor 'Not applicable:'/'Not yet:'")
    for ident in rows:
        if ident not in ids:
            errors.append(f"5.0 {ident}: row for an ID that is not in MQTT 5.0")
    _, ref_errors = check_refs(text)
    errors += [f"5.0 {e}" for e in ref_errors]
    stated = summary_counts(text, SUMMARY_LABELS_V5)
    for key, value in counts.items():
        if key not in stated:
            errors.append(f"5.0 summary table: no count for {key!r}")
        elif stated[key] != value:
            errors.append(f"5.0 summary table says {key}={stated[key]}, the rows give {value}")
    if complete:
        errors += [f"5.0 {ident}: no row (Server/both)" for ident in missing]
        errors += [f"5.0 {ident}: still 'Not yet' (Server/both)" for ident in not_yet]
    report = (
        f"MQTT 5.0: {len(rows)} rows; Server/both {counts['total']}: proven "
        f"{counts['proven']}, not applicable {counts['na']}, unmapped "
        f"{len(missing) + len(not_yet)} ({len(not_yet)} 'Not yet', {len(missing)} without a "
        f"row); Client {counts['client']}: {counts['client_lib']} via client-library tests, "
        f"{counts['client_na']} not applicable to the client library; both rows with "
        f"client-library tests {counts['both_client']}"
    )
    return errors, report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ids", type=Path, help="path of mqtt-3.1.1-ids.tsv")
    parser.add_argument("--strict", action="store_true", help="fail while GAP rows remain")
    parser.add_argument("--doc", type=Path, default=DOC, help="document to check")
    parser.add_argument("--doc-v5", type=Path, default=DOC_V5, help="the 5.0 document")
    parser.add_argument(
        "--v5-complete", action="store_true", help="require a row for every 5.0 Server/both ID"
    )
    args = parser.parse_args()

    ids = load_ids(args.ids)
    text = args.doc.read_text()
    rows, errors = parse_rows(text)
    client_tests = (ROOT / "tests" / "test_client.py").is_file()
    warnings = []
    counts = {"total": 0, "proven": 0, "na": 0, "gap": 0, "client": 0, "client_lib": 0}
    gaps = []

    for ident, binds in ids.items():
        row = rows.get(ident)
        if row is None:
            errors.append(f"{ident} ({binds}): no row")
            continue
        _, row_binds, requirement, proof, notes = row
        if row_binds != binds:
            errors.append(f"{ident}: Binds is {row_binds!r}, the ID list says {binds!r}")
        if not requirement:
            errors.append(f"{ident}: empty Requirement")
        if binds == "Client":
            counts["client"] += 1
            if proof.startswith(CLIENT_LIBRARY):
                counts["client_lib"] += 1
                if not client_tests:
                    errors.append(f"{ident}: cites tests/test_client.py, which does not exist")
                elif "tests/test_client.py::" not in notes:
                    errors.append(f"{ident}: names no test of tests/test_client.py in Notes")
            elif proof.startswith(CLIENT_NA):
                if client_tests and "test_client.py" not in notes:
                    warnings.append(f"{ident}: tests/test_client.py exists; re-check this row")
            else:
                errors.append(
                    f"{ident}: a Client row must start with {CLIENT_LIBRARY!r} or {CLIENT_NA!r}"
                )
            continue
        counts["total"] += 1
        if proof.startswith(NOT_APPLICABLE):
            if len(proof) <= len(NOT_APPLICABLE) + 3:
                errors.append(f"{ident}: 'Not applicable:' without a reason")
            counts["na"] += 1
        elif proof.startswith(GAP):
            counts["gap"] += 1
            gaps.append(ident)
        elif has_ref(proof):
            counts["proven"] += 1
        else:
            errors.append(
                f"{ident}: Proof cites no test and is neither 'Not applicable:' nor 'GAP'"
            )

    for ident in rows:
        if ident not in ids:
            errors.append(f"{ident}: row for an ID that is not in MQTT 3.1.1")

    nrefs, ref_errors = check_refs(text)
    errors += ref_errors

    stated = summary_counts(text)
    for key, value in counts.items():
        if key not in stated:
            errors.append(f"summary table: no count for {key!r}")
        elif stated[key] != value:
            errors.append(f"summary table says {key}={stated[key]}, the rows give {value}")

    v5_errors, v5_report = check_v5(args.doc_v5, args.v5_complete)
    errors += v5_errors

    for w in warnings:
        print(f"warning: {w}")
    for e in errors:
        print(f"error: {e}")
    print(
        f"{len(ids)} IDs, {len(rows)} rows, {nrefs} test references checked; "
        f"Server/both {counts['total']}: proven {counts['proven']}, "
        f"not applicable {counts['na']}, gaps {counts['gap']}"
        + (f" ({', '.join(gaps)})" if gaps else "")
        + f"; Client {counts['client']} ({counts['client_lib']} via tests/test_client.py)"
    )
    if v5_report:
        print(v5_report)
    if errors:
        return 1
    if args.strict and gaps:
        print("strict: gaps remain")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
