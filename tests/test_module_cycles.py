"""tools/module_cycles.py (issue 9): no two modules of the crate import each other.

Runs the checker as `make lint` does, on the real tree and on small made-up trees."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "module_cycles.py"


def run(src: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(TOOL), str(src)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def tree(root: Path, files: dict[str, str]) -> Path:
    src = root / "src"
    for name, text in files.items():
        path = src / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return src


def test_the_crate_has_no_cycles():
    result = run(ROOT / "src")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no cycles" in result.stdout


def test_two_siblings_that_use_each_other_fail(tmp_path):
    src = tree(
        tmp_path,
        {
            "lib.rs": "pub mod broker;\n",
            "broker.rs": "pub mod router;\npub mod session;\n",
            # One way in a `use` line, the other in a path in code: both count.
            "broker/router.rs": "use crate::broker::session::State;\npub struct Router;\n",
            "broker/session.rs": (
                "pub struct State;\npub fn f(_: &crate::broker::router::Router) {}\n"
            ),
        },
    )
    result = run(src)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "cycle: broker::router, broker::session" in result.stdout
    assert "src/broker/session.rs:2" in result.stdout


def test_a_cycle_through_a_third_module_and_super_paths_fails(tmp_path):
    src = tree(
        tmp_path,
        {
            "lib.rs": "pub mod broker;\npub mod codec;\n",
            "broker.rs": "pub mod a;\npub mod b;\npub mod c;\n",
            "broker/a.rs": "use super::b::B;\npub struct A;\n",
            # A deeper module counts as its second-level ancestor.
            "broker/b.rs": "mod inner;\npub struct B;\n",
            "broker/b/inner.rs": "use super::super::c::C;\n",
            # Inside an inline test module, `super::super` is broker (then broker::a).
            "broker/c.rs": (
                "pub struct C;\n#[cfg(test)]\nmod tests {\n    use super::super::a::A;\n}\n"
            ),
            "codec.rs": "",
        },
    )
    result = run(src)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "cycle: broker::a, broker::b, broker::c" in result.stdout


def test_parents_children_and_comments_are_not_cycles(tmp_path):
    src = tree(
        tmp_path,
        {
            "lib.rs": "pub mod broker;\npub mod codec;\n",
            # A parent re-exports its child; the child uses the parent's items.
            "broker.rs": "pub mod router;\npub use router::Router;\npub struct Config;\n",
            "broker/router.rs": (
                "use crate::broker::Config;\nuse super::Config as C;\npub struct Router;\n"
                # Not dependencies (codec uses the router): a comment, a string.
                "/// [`crate::codec::get`] in a comment.\n"
                'const S: &str = "crate::codec::get";\n'
            ),
            # A module and its own child use each other (decode.rs dispatches to
            # decode/v5.rs, which reads with decode's helpers): a subtree's business.
            "codec.rs": "mod decode;\nmod wire;\npub use decode::get;\n",
            "codec/decode.rs": (
                "mod v5;\nuse super::wire::put;\nuse crate::broker::router::Router;\n"
                "pub fn get() { v5::parse() }\npub(super) fn helper() {}\n"
            ),
            "codec/decode/v5.rs": "use super::helper;\npub(super) fn parse() {}\n",
            "codec/wire.rs": "pub fn put() {}\n",
        },
    )
    result = run(src)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no cycles" in result.stdout
