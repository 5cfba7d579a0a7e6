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
                "use crate::codec::get;\n"
            ),
            # A module and its own child use each other (decode.rs dispatches to
            # decode/v5.rs, which reads with decode's helpers): a subtree's business.
            "codec.rs": "mod decode;\nmod wire;\npub use decode::get;\n",
            "codec/decode.rs": (
                "mod v5;\nuse super::wire::put;\n"
                "pub fn get() { v5::parse() }\npub(super) fn helper() {}\n"
                # Not dependencies (the router uses the codec; and the codec may not use
                # the broker at all): a comment, a string.
                "/// [`crate::broker::router::Router`] in a comment.\n"
                'const S: &str = "crate::broker::router::Router";\n'
            ),
            "codec/decode/v5.rs": "use super::helper;\npub(super) fn parse() {}\n",
            "codec/wire.rs": "pub fn put() {}\n",
        },
    )
    result = run(src)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no cycles" in result.stdout


def test_two_deeper_siblings_that_use_each_other_fail(tmp_path):
    # Inside one second-level subtree (broker::router), two of its modules import each
    # other: not visible when the subtree counts whole, still a cycle.
    src = tree(
        tmp_path,
        {
            "lib.rs": "pub mod broker;\n",
            "broker.rs": "pub mod router;\n",
            "broker/router.rs": "mod a;\nmod b;\n",
            "broker/router/a.rs": "use super::b::B;\npub struct A;\n",
            "broker/router/b.rs": "use crate::broker::router::a::A;\npub struct B;\n",
        },
    )
    result = run(src)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "cycle: broker::router::a, broker::router::b" in result.stdout


def test_two_top_level_parts_that_use_each_other_fail(tmp_path):
    # broker::bridge uses the client core and client::transport a loader under
    # broker::transport: at depth 2 these are four different modules with no cycle,
    # the parts as wholes import each other.
    src = tree(
        tmp_path,
        {
            "lib.rs": "pub mod broker;\npub mod client;\n",
            "broker.rs": "pub mod bridge;\npub mod transport;\n",
            "broker/bridge.rs": "use crate::client::handle::Client;\n",
            "broker/transport.rs": "pub fn load_certs() {}\n",
            "client.rs": "pub mod handle;\npub mod transport;\n",
            "client/handle.rs": "pub struct Client;\n",
            "client/transport.rs": "use crate::broker::transport::load_certs;\n",
        },
    )
    result = run(src)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "cycle: broker, client" in result.stdout
    assert "client -> broker  src/client/transport.rs:1" in result.stdout


def test_a_lower_part_using_a_higher_one_fails_without_a_cycle(tmp_path):
    # No cycle: nothing in the broker uses the client or the codec. The client (and the
    # codec, a shared piece) still may not reach up into the broker, nor the broker into
    # the Python bindings.
    src = tree(
        tmp_path,
        {
            "lib.rs": "pub mod broker;\npub mod client;\npub mod codec;\nmod python;\n",
            "broker.rs": "pub struct Config;\npub fn f(_: &crate::python::Core) {}\n",
            "client.rs": "use crate::broker::Config;\n",
            "codec.rs": "pub fn get(_: &crate::client::Options) {}\n",
            "python.rs": "pub struct Core;\n",
        },
    )
    result = run(src)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "cycle:" not in result.stdout
    assert "upward: client -> broker  src/client.rs:1" in result.stdout
    assert "upward: codec -> client  src/codec.rs:1" in result.stdout
    assert "upward: broker -> python  src/broker.rs:2" in result.stdout


def test_uses_down_the_layers_pass(tmp_path):
    # The broker on the client (bridges), both on the shared pieces, the bindings on
    # everything, and a shared piece on another (the codec validates with topic's check).
    src = tree(
        tmp_path,
        {
            "lib.rs": (
                "pub mod broker;\npub mod client;\npub mod codec;\nmod python;\n"
                "mod qos;\nmod tls;\npub mod topic;\n"
            ),
            "broker.rs": (
                "use crate::client::Client;\nuse crate::qos::InboundQos2;\n"
                "use crate::tls::load_certs;\npub struct Config;\n"
            ),
            "client.rs": "use crate::codec::get;\nuse crate::tls::load_key;\npub struct Client;\n",
            "codec.rs": "use crate::topic::validate;\npub fn get() {}\n",
            "python.rs": "use crate::broker::Config;\nuse crate::client::Client;\n",
            "qos.rs": "pub struct InboundQos2;\n",
            "tls.rs": "pub fn load_certs() {}\npub fn load_key() {}\n",
            "topic.rs": "pub fn validate() {}\n",
        },
    )
    result = run(src)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no cycles" in result.stdout
