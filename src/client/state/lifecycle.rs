//! A connection coming up, being lost, and the client finishing.
//!
//! When a connection comes up the order of what is written matters: with a resumed session
//! the server already has the client's subscriptions, and unacknowledged publishes are
//! resent at once. Without one, the client restores its subscriptions first and holds
//! every publish (resends, and what was published while reconnecting) until the SUBACK,
//! so a message it publishes to one of its own subscriptions is routed back to it.

use bytes::BytesMut;
use tokio::time::Instant;

use crate::codec::{self, Packet};

use super::{encode_publish, Change, ClientError, ConnectionState, Outcome, Request, Stage, State};

impl State {
    /// A CONNACK accepted the connection: resend what is unacknowledged, restore
    /// subscriptions if the server has no session, then let the buffer flow.
    pub(crate) fn on_connected(&mut self, session_present: bool, token: Option<u64>, now: Instant) {
        // Resumed only if the server has the session too: with Session Present 0 the
        // client's session state is discarded [MQTT-3.2.2-5] (no DUP resends, no PUBREL
        // for ids the server does not know).
        let resume = !self.limits.clean_session && session_present;
        if !resume {
            if !self.inbound_qos2.is_empty() {
                self.record(|| Change::InboundClear);
            }
            self.inbound_qos2.clear();
        }
        let mut resends = BytesMut::new();
        let mut finished = Vec::new();
        let mut now_sent = Vec::new();
        for f in self.inflight.iter_mut() {
            let result = match f.stage {
                Stage::AwaitAck => {
                    // [MQTT-4.4.0-1]: same ids, DUP=1 on a resumed session. A new session
                    // gets the message again as a new one.
                    let dup = resume && f.sent;
                    if !f.sent {
                        now_sent.push(f.stored_sent());
                    }
                    f.sent = true;
                    encode_publish(
                        &mut resends,
                        &f.topic,
                        f.qos,
                        f.retain,
                        dup,
                        Some(f.packet_id),
                        f.props.as_deref(),
                        &f.payload,
                    )
                }
                Stage::AwaitComp if resume => Packet::PubRel(f.packet_id).encode(&mut resends),
                // The server had the message (it sent PUBREC); a new session has no id to
                // release, so the delivery is complete from here.
                Stage::AwaitComp => {
                    finished.push(f.packet_id);
                    Ok(())
                }
            };
            if let Err(e) = result {
                tracing::error!("client: could not re-encode an inflight message: {e}");
            }
        }
        for change in now_sent {
            self.record(|| change);
        }
        for packet_id in finished {
            if let Some(i) = self.inflight.iter().position(|f| f.packet_id == packet_id) {
                if let Some(f) = self.inflight.remove(i) {
                    self.ids.free(f.packet_id);
                    self.record(|| Change::Delete(f.seq));
                    self.complete(f.token, Outcome::Done);
                }
            }
        }
        // What was buffered while disconnected (QoS 0 publishes, requests) follows the
        // resends, as it was made after them.
        resends.extend_from_slice(&self.out);
        self.out.clear();
        self.held = None;
        let restore = if self.v5.is_some() {
            self.has_v5_subscriptions()
        } else {
            !self.subscriptions.is_empty()
        };
        if !session_present && self.ever_connected && restore {
            let subscribe = if self.v5.is_some() {
                self.resubscribe_v5()
            } else {
                self.resubscribe()
            };
            match subscribe {
                Some(subscribe) => {
                    self.out = subscribe;
                    self.held = Some(resends);
                }
                None => self.out = resends,
            }
        } else {
            self.out = resends;
        }
        self.status = ConnectionState::Connected;
        self.session_present = session_present;
        self.ever_connected = true;
        self.ping_outstanding = None;
        self.last_read = now;
        self.last_write = now;
        self.writer_waiting = false;
        self.reader_waiting = false;
        if let Some(token) = token {
            self.complete(token, Outcome::Connected(session_present));
        }
        self.push_state(ConnectionState::Connected, None);
        if let Err(e) = self.fill_window() {
            tracing::error!("client: could not encode a queued publish: {e}");
        }
    }

    /// A SUBSCRIBE for every filter the client had, under a fresh packet id; `None` if it
    /// cannot be sent (no id free, or it does not encode).
    fn resubscribe(&mut self) -> Option<BytesMut> {
        let Some(pkid) = self.ids.alloc() else {
            tracing::warn!("client: no packet id free to restore the subscriptions");
            return None;
        };
        let filters = self
            .subscriptions
            .iter()
            .map(|(f, q)| (f.clone(), *q))
            .collect();
        let mut buf = BytesMut::new();
        match Packet::Subscribe(codec::Subscribe { pkid, filters }).encode(&mut buf) {
            Ok(()) => {
                self.requests.insert(pkid, Request::Resubscribe);
                Some(buf)
            }
            Err(e) => {
                self.ids.free(pkid);
                tracing::error!("client: could not restore subscriptions: {e}");
                None
            }
        }
    }

    /// The connection broke and a reconnect will follow.
    pub(crate) fn on_lost(&mut self, error: &ClientError) {
        self.status = ConnectionState::Reconnecting;
        // Whole packets of the dead connection: QoS 0 publishes (lost, as QoS 0 may be),
        // acknowledgements (the server resends what they acknowledged) and requests
        // (failed below). QoS 1/2 publishes live on in `inflight`.
        self.out.clear();
        self.held = None;
        self.ping_outstanding = None;
        if let Some(v5) = self.v5.as_deref_mut() {
            // Topic aliases live as long as a connection [MQTT-3.3.2-7].
            v5.reset_aliases();
        }
        self.end_auth(error);
        let requests: Vec<(u16, Request)> = self.requests.drain().collect();
        for (packet_id, request) in requests {
            self.ids.free(packet_id);
            match request {
                Request::Subscribe { token, .. }
                | Request::SubscribeV5 { token, .. }
                | Request::Unsubscribe { token, .. } => {
                    self.complete(token, Outcome::Failed(error.clone()));
                }
                Request::Resubscribe => {}
            }
        }
        self.push_state(ConnectionState::Reconnecting, Some(error.clone()));
        self.check_room();
    }

    /// The client is done: fail everything still waiting.
    pub(crate) fn finish(&mut self, error: Option<ClientError>) {
        self.status = ConnectionState::Closed;
        self.out.clear();
        self.held = None;
        let failure = error.clone().unwrap_or(ClientError::Closed);
        self.end_auth(&failure);
        let tokens: Vec<u64> = self
            .inflight
            .drain(..)
            .map(|f| f.token)
            .chain(self.pending.drain(..).map(|p| p.token))
            .chain(self.requests.drain().filter_map(|(_, r)| match r {
                Request::Subscribe { token, .. }
                | Request::SubscribeV5 { token, .. }
                | Request::Unsubscribe { token, .. } => Some(token),
                Request::Resubscribe => None,
            }))
            .collect();
        for token in tokens {
            self.complete(token, Outcome::Failed(failure.clone()));
        }
        self.pending_bytes = 0;
        self.ids.clear();
        for token in std::mem::take(&mut self.close_tokens) {
            self.complete(token, Outcome::Done);
        }
        self.last_error = error.clone();
        self.push_state(ConnectionState::Closed, error);
    }
}

#[cfg(test)]
mod tests {
    use bytestring::ByteString;

    use super::super::testing::*;
    use super::super::Submitted;
    use super::*;
    use crate::codec::{QoS, SubscribeReturnCode};

    fn lost() -> ClientError {
        ClientError::ConnectionLost("x".into())
    }

    #[test]
    fn qos2_flow_and_resend_on_resume() {
        let mut st = state(4, false);
        st.on_connected(false, None, Instant::now());
        let a = token(st.publish("t", b"a", QoS::ExactlyOnce, false).unwrap());
        let _b = token(st.publish("t", b"b", QoS::ExactlyOnce, false).unwrap());
        let sent = written(&mut st);
        let ids: Vec<u16> = sent
            .iter()
            .map(|p| match p {
                Packet::Publish(p) => p.pkid.unwrap(),
                _ => panic!(),
            })
            .collect();
        st.on_packet(Packet::PubRec(ids[0])).unwrap();
        assert_eq!(written(&mut st), vec![Packet::PubRel(ids[0])]);
        st.on_lost(&lost());
        st.on_connected(true, None, Instant::now());
        let resent = written(&mut st);
        assert_eq!(resent[0], Packet::PubRel(ids[0]));
        let Packet::Publish(p) = &resent[1] else {
            panic!()
        };
        assert!(p.dup && p.pkid == Some(ids[1]));
        st.on_packet(Packet::PubComp(ids[0])).unwrap();
        assert!(st.completions.contains(&(a, Outcome::Done)));
    }

    #[test]
    fn clean_session_reconnect_sends_again_without_dup() {
        let mut st = state(4, true);
        st.on_connected(false, None, Instant::now());
        token(st.publish("t", b"a", QoS::AtLeastOnce, false).unwrap());
        let _ = written(&mut st);
        st.on_lost(&lost());
        st.on_connected(false, None, Instant::now());
        let resent = written(&mut st);
        assert!(matches!(&resent[..], [Packet::Publish(p)] if !p.dup));
    }

    /// [MQTT-3.2.2-5] Clean Start 0 but Session Present 0: the server has no session, so
    /// none is resumed. The QoS 1 message goes again as a new one (DUP=0), and the QoS 2
    /// one past PUBREC is complete (the server had it): no PUBREL for its id.
    #[test]
    fn session_present_0_discards_the_session() {
        let mut st = state(4, false);
        st.on_connected(false, None, Instant::now());
        token(st.publish("t", b"a", QoS::AtLeastOnce, false).unwrap());
        let b = token(st.publish("t", b"b", QoS::ExactlyOnce, false).unwrap());
        let sent = written(&mut st);
        let Packet::Publish(qos2) = &sent[1] else {
            panic!("{sent:?}")
        };
        st.on_packet(Packet::PubRec(qos2.pkid.unwrap())).unwrap();
        let _ = written(&mut st);
        st.on_lost(&lost());
        st.on_connected(false, None, Instant::now());
        let again = written(&mut st);
        assert!(
            matches!(&again[..], [Packet::Publish(p)] if !p.dup && &p.payload[..] == b"a"),
            "{again:?}"
        );
        assert!(st.completions.contains(&(b, Outcome::Done)));
    }

    /// A connection without a session: SUBSCRIBE first, and every publish (a resend, one
    /// made while reconnecting, one made before the SUBACK) waits for its SUBACK.
    #[test]
    fn publishes_wait_for_the_restored_subscriptions() {
        let mut st = state(4, true);
        st.on_connected(false, None, Instant::now());
        let t = token(
            st.subscribe(vec![(ByteString::from_static("own/#"), QoS::AtLeastOnce)])
                .unwrap(),
        );
        let Packet::Subscribe(s) = &written(&mut st)[0] else {
            panic!()
        };
        st.on_packet(Packet::SubAck(codec::SubAck {
            pkid: s.pkid,
            codes: vec![SubscribeReturnCode::Success(QoS::AtLeastOnce)],
        }))
        .unwrap();
        assert!(st.completions.contains(&(t, Outcome::Granted(vec![1]))));
        token(st.publish("own/a", b"1", QoS::AtLeastOnce, false).unwrap());
        let _ = written(&mut st);

        st.on_lost(&lost());
        token(st.publish("own/b", b"2", QoS::AtLeastOnce, false).unwrap());
        assert_eq!(
            st.publish("own/c", b"3", QoS::AtMostOnce, false).unwrap(),
            Submitted::Sent
        );
        st.on_connected(false, None, Instant::now());
        token(st.publish("own/d", b"4", QoS::AtLeastOnce, false).unwrap());
        let first = written(&mut st);
        let [Packet::Subscribe(resub)] = &first[..] else {
            panic!("only the SUBSCRIBE goes before its SUBACK: {first:?}")
        };
        assert_eq!(
            resub.filters,
            vec![(ByteString::from_static("own/#"), QoS::AtLeastOnce)]
        );
        // Acknowledgements still flow while publishes wait.
        st.on_packet(Packet::PubRel(9)).unwrap();
        assert_eq!(written(&mut st), vec![Packet::PubComp(9)]);

        st.on_packet(Packet::SubAck(codec::SubAck {
            pkid: resub.pkid,
            codes: vec![SubscribeReturnCode::Success(QoS::AtLeastOnce)],
        }))
        .unwrap();
        assert_eq!(
            payloads(&written(&mut st)),
            vec![b"1".to_vec(), b"2".to_vec(), b"3".to_vec(), b"4".to_vec()],
            "released in publish order after the SUBACK"
        );
        let _ = st.publish("own/e", b"5", QoS::AtMostOnce, false).unwrap();
        assert_eq!(payloads(&written(&mut st)), vec![b"5".to_vec()]);
    }

    #[test]
    fn a_resumed_session_holds_nothing() {
        let mut st = state(4, false);
        st.on_connected(false, None, Instant::now());
        st.subscriptions
            .insert(ByteString::from_static("own/#"), QoS::AtLeastOnce);
        st.on_lost(&lost());
        token(st.publish("own/a", b"1", QoS::AtLeastOnce, false).unwrap());
        st.on_connected(true, None, Instant::now());
        assert_eq!(payloads(&written(&mut st)), vec![b"1".to_vec()]);
    }

    #[test]
    fn losing_the_connection_while_holding_keeps_qos1_for_the_next() {
        let mut st = state(4, true);
        st.on_connected(false, None, Instant::now());
        st.subscriptions
            .insert(ByteString::from_static("own/#"), QoS::AtLeastOnce);
        st.on_lost(&lost());
        let t = token(st.publish("own/a", b"1", QoS::AtLeastOnce, false).unwrap());
        st.on_connected(false, None, Instant::now());
        assert!(matches!(&written(&mut st)[..], [Packet::Subscribe(_)]));
        st.on_lost(&lost());
        st.on_connected(false, None, Instant::now());
        let again = written(&mut st);
        let [Packet::Subscribe(resub)] = &again[..] else {
            panic!("{again:?}")
        };
        st.on_packet(Packet::SubAck(codec::SubAck {
            pkid: resub.pkid,
            codes: vec![SubscribeReturnCode::Success(QoS::AtLeastOnce)],
        }))
        .unwrap();
        let [Packet::Publish(p)] = &written(&mut st)[..] else {
            panic!()
        };
        st.on_packet(Packet::PubAck(p.pkid.unwrap())).unwrap();
        assert!(st.completions.contains(&(t, Outcome::Done)));
    }

    #[test]
    fn finish_fails_everything() {
        let mut st = state(1, true);
        st.on_connected(false, None, Instant::now());
        let a = token(st.publish("t", b"a", QoS::AtLeastOnce, false).unwrap());
        let b = token(st.publish("t", b"b", QoS::AtLeastOnce, false).unwrap());
        st.finish(Some(ClientError::Timeout("gone".into())));
        let failed: Vec<u64> = st
            .completions
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Failed(ClientError::Timeout(_))))
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(failed, vec![a, b]);
        assert_eq!(
            st.publish("t", b"c", QoS::AtMostOnce, false).unwrap(),
            Submitted::Closed
        );
        assert_eq!(st.last_error, Some(ClientError::Timeout("gone".into())));
        assert_eq!(
            st.states.last().map(|s| s.state),
            Some(ConnectionState::Closed)
        );
    }
}
