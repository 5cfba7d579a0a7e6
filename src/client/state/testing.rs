//! Helpers for the state machine's tests (in tests.rs and in its submodules): a started
//! state, the packets it wrote, and small extractors.
//!
//! Its own file so the helpers are shared by every test module of the state machine
//! without living in the code they test.

use super::*;
use crate::codec::Decoder;

pub(crate) fn state(max_inflight: usize, clean_session: bool) -> State {
    let mut st = State::new(
        Limits {
            max_inflight,
            max_buffered: 1 << 20,
            max_incoming: 100,
            clean_session,
            persist: false,
        },
        Instant::now(),
    );
    st.started = true;
    st
}

/// Takes the write buffer and decodes it.
pub(crate) fn written(st: &mut State) -> Vec<Packet> {
    let decoder = Decoder::new(1 << 20);
    let mut buf = st.out.split();
    let mut out = Vec::new();
    while let Some(p) = decoder.decode(&mut buf).expect("valid packets") {
        out.push(p);
    }
    out
}

pub(crate) fn token(s: Submitted) -> u64 {
    match s {
        Submitted::Token(t) => t,
        other => panic!("expected a token, got {other:?}"),
    }
}

pub(crate) fn payloads(packets: &[Packet]) -> Vec<Vec<u8>> {
    packets
        .iter()
        .map(|p| match p {
            Packet::Publish(p) => p.payload.to_vec(),
            other => panic!("expected PUBLISH, got {other:?}"),
        })
        .collect()
}
