//! The packets the server sends: messages, acknowledgements of the client's publishes and
//! requests, PINGRESP, and the packets a server must never send.

use bytes::Bytes;

use crate::codec::{Packet, QoS, SubscribeReturnCode};

use super::{Change, ClientError, Incoming, Outcome, Request, Stage, State};

impl State {
    /// Handles one packet from the server.
    pub(crate) fn on_packet(&mut self, packet: Packet) -> Result<(), ClientError> {
        match packet {
            Packet::Publish(mut p) => {
                if self.v5.is_some() {
                    self.on_publish_v5(&mut p)?;
                }
                let packet_id = p.pkid.unwrap_or(0);
                let fresh = match p.qos {
                    QoS::AtMostOnce => true,
                    QoS::AtLeastOnce => {
                        self.encode(&Packet::PubAck(packet_id))?;
                        true
                    }
                    QoS::ExactlyOnce => {
                        self.encode(&Packet::PubRec(packet_id))?;
                        // A resent PUBLISH whose PUBREL has not come is not delivered twice.
                        let fresh = self.inbound_qos2.receive(packet_id);
                        if fresh {
                            self.record(|| Change::InboundAdd(packet_id));
                        }
                        fresh
                    }
                };
                if fresh {
                    self.incoming.push_back(Incoming {
                        topic: p.topic,
                        payload: p.payload,
                        qos: p.qos,
                        retain: p.retain,
                        dup: p.dup,
                        packet_id,
                        properties: p.properties,
                    });
                    self.dirty = true;
                }
            }
            Packet::PubAck(id) => {
                if let Some(i) = self.inflight.iter().position(|f| {
                    f.packet_id == id && f.qos == QoS::AtLeastOnce && f.stage == Stage::AwaitAck
                }) {
                    self.finish_flight(i);
                } else {
                    tracing::debug!(
                        packet_id = id,
                        "client: PUBACK for an unknown packet id ignored"
                    );
                }
            }
            Packet::PubRec(id) => {
                match self
                    .inflight
                    .iter_mut()
                    .find(|f| f.packet_id == id && f.qos == QoS::ExactlyOnce)
                {
                    Some(f) => {
                        f.stage = Stage::AwaitComp;
                        f.payload = Bytes::new();
                        let stored = f.stored();
                        self.record(|| stored);
                        self.encode(&Packet::PubRel(id))?;
                    }
                    None => tracing::debug!(
                        packet_id = id,
                        "client: PUBREC for an unknown packet id ignored"
                    ),
                }
            }
            Packet::PubRel(id) => {
                if self.inbound_qos2.release(id) {
                    self.record(|| Change::InboundRemove(id));
                }
                // Answered even for an unknown id: the PUBCOMP may have been lost.
                self.encode(&Packet::PubComp(id))?;
            }
            Packet::PubComp(id) => {
                if let Some(i) = self
                    .inflight
                    .iter()
                    .position(|f| f.packet_id == id && f.stage == Stage::AwaitComp)
                {
                    self.finish_flight(i);
                } else {
                    tracing::debug!(
                        packet_id = id,
                        "client: PUBCOMP for an unknown packet id ignored"
                    );
                }
            }
            Packet::SubAck(ack) => match self.requests.remove(&ack.pkid) {
                Some(Request::Subscribe { token, filters }) => {
                    self.ids.free(ack.pkid);
                    if ack.codes.len() != filters.len() {
                        return Err(ClientError::Protocol(format!(
                            "[MQTT-3.9.3-1] SUBACK has {} return codes for {} topic filters",
                            ack.codes.len(),
                            filters.len()
                        )));
                    }
                    let mut codes = Vec::with_capacity(filters.len());
                    for ((filter, qos), code) in filters.into_iter().zip(&ack.codes) {
                        match code {
                            SubscribeReturnCode::Success(granted) => {
                                self.subscriptions.insert(filter, qos);
                                codes.push(*granted as u8);
                            }
                            SubscribeReturnCode::Failure => codes.push(0x80),
                        }
                    }
                    self.complete(token, Outcome::Granted(codes));
                }
                Some(Request::Resubscribe) => {
                    self.ids.free(ack.pkid);
                    if ack.codes.contains(&SubscribeReturnCode::Failure) {
                        tracing::warn!("client: the server refused a restored subscription");
                    }
                    self.restored();
                }
                other => {
                    Request::stray_ack("SUBACK", ack.pkid, other).map_err(ClientError::Protocol)?
                }
            },
            Packet::UnsubAck(id) => match self.requests.remove(&id) {
                Some(Request::Unsubscribe { token, filters }) => {
                    self.ids.free(id);
                    for f in &filters {
                        self.subscriptions.remove(f);
                    }
                    self.complete(token, Outcome::Done);
                }
                other => {
                    Request::stray_ack("UNSUBACK", id, other).map_err(ClientError::Protocol)?
                }
            },
            Packet::PingResp => self.ping_outstanding = None,
            // 5.0's short DISCONNECT: the server closes with Normal disconnection.
            Packet::Disconnect if self.v5.is_some() => {
                return Err(self.server_disconnect(None));
            }
            Packet::ConnAck(_) => {
                return Err(ClientError::Protocol(
                    "[MQTT-3.2.0-1] a second CONNACK on the same connection".into(),
                ))
            }
            other @ (Packet::Connect(_)
            | Packet::Subscribe(_)
            | Packet::Unsubscribe(_)
            | Packet::PingReq
            | Packet::Disconnect) => {
                return Err(ClientError::Protocol(format!(
                    "a server must not send {}",
                    other.name()
                )))
            }
            v5 @ (Packet::PubAckV5(_)
            | Packet::PubRecV5(_)
            | Packet::PubRelV5(_)
            | Packet::PubCompV5(_)
            | Packet::SubAckV5(_)
            | Packet::UnsubAckV5(_)
            | Packet::DisconnectV5(_)
            | Packet::Auth(_))
                if self.v5.is_some() =>
            {
                return self.on_packet_v5(v5);
            }
            // A 3.1.1 client's decoder never yields 5.0's forms.
            other @ (Packet::ConnAckV5(_)
            | Packet::PubAckV5(_)
            | Packet::PubRecV5(_)
            | Packet::PubRelV5(_)
            | Packet::PubCompV5(_)
            | Packet::SubscribeV5(_)
            | Packet::SubAckV5(_)
            | Packet::UnsubscribeV5(_)
            | Packet::UnsubAckV5(_)
            | Packet::DisconnectV5(_)
            | Packet::Auth(_)) => {
                return Err(ClientError::Protocol(format!(
                    "an MQTT 5.0 {} on a 3.1.1 connection",
                    other.name()
                )))
            }
        }
        Ok(())
    }

    fn finish_flight(&mut self, index: usize) {
        self.end_flight(index, Outcome::Done);
    }

    /// Ends the flight at `index` with `outcome` and lets the window fill.
    pub(super) fn end_flight(&mut self, index: usize, outcome: Outcome) {
        if let Some(f) = self.inflight.remove(index) {
            self.ids.free(f.packet_id);
            self.record(|| Change::Delete(f.seq));
            self.complete(f.token, outcome);
        }
        if let Err(e) = self.fill_window() {
            tracing::error!("client: could not encode a queued publish: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use bytestring::ByteString;
    use tokio::time::Instant;

    use super::super::testing::*;
    use super::*;
    use crate::codec;

    fn publish(packet_id: u16, dup: bool) -> Packet {
        Packet::Publish(codec::Publish {
            dup,
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: ByteString::from_static("t"),
            pkid: Some(packet_id),
            payload: Bytes::from_static(b"x"),
            properties: None,
        })
    }

    #[test]
    fn inbound_qos2_is_delivered_once() {
        let mut st = state(1, false);
        st.on_packet(publish(7, false)).unwrap();
        st.on_packet(publish(7, true)).unwrap();
        assert_eq!(st.incoming.len(), 1);
        st.on_packet(Packet::PubRel(7)).unwrap();
        assert_eq!(
            written(&mut st),
            vec![Packet::PubRec(7), Packet::PubRec(7), Packet::PubComp(7)]
        );
        st.on_packet(publish(7, false)).unwrap();
        assert_eq!(
            st.incoming.len(),
            2,
            "after PUBREL the id carries a new message"
        );
    }

    #[test]
    fn suback_codes_and_mismatch() {
        let mut st = state(1, true);
        let t = token(
            st.subscribe(vec![
                (ByteString::from_static("a"), QoS::AtLeastOnce),
                (ByteString::from_static("b"), QoS::ExactlyOnce),
            ])
            .unwrap(),
        );
        let Packet::Subscribe(s) = &written(&mut st)[0] else {
            panic!()
        };
        st.on_packet(Packet::SubAck(codec::SubAck {
            pkid: s.pkid,
            codes: vec![
                SubscribeReturnCode::Success(QoS::AtLeastOnce),
                SubscribeReturnCode::Failure,
            ],
        }))
        .unwrap();
        assert_eq!(st.completions, vec![(t, Outcome::Granted(vec![1, 0x80]))]);
        assert_eq!(st.subscriptions.len(), 1);

        token(
            st.subscribe(vec![(ByteString::from_static("c"), QoS::AtMostOnce)])
                .unwrap(),
        );
        let Packet::Subscribe(s) = &written(&mut st)[0] else {
            panic!()
        };
        let err = st
            .on_packet(Packet::SubAck(codec::SubAck {
                pkid: s.pkid,
                codes: vec![],
            }))
            .unwrap_err();
        assert!(matches!(err, ClientError::Protocol(m) if m.contains("[MQTT-3.9.3-1]")));
    }

    #[test]
    fn unsuback_forgets_the_filters_and_frees_the_id() {
        let mut st = state(1, true);
        st.subscriptions
            .insert(ByteString::from_static("a"), QoS::AtLeastOnce);
        let t = token(st.unsubscribe(vec![ByteString::from_static("a")]).unwrap());
        let Packet::Unsubscribe(u) = &written(&mut st)[0] else {
            panic!()
        };
        assert!(matches!(
            st.on_packet(Packet::SubAck(codec::SubAck {
                pkid: u.pkid,
                codes: vec![SubscribeReturnCode::Success(QoS::AtMostOnce)],
            })),
            Err(ClientError::Protocol(m)) if m.contains("UNSUBSCRIBE")
        ));
        let t2 = token(st.unsubscribe(vec![ByteString::from_static("a")]).unwrap());
        let Packet::Unsubscribe(u) = &written(&mut st)[0] else {
            panic!()
        };
        st.on_packet(Packet::UnsubAck(u.pkid)).unwrap();
        assert_eq!(st.completions, vec![(t2, Outcome::Done)]);
        assert!(st.subscriptions.is_empty());
        assert!(!st.completions.iter().any(|(x, _)| *x == t));
        assert!(!st.ids.contains(u.pkid));
    }

    #[test]
    fn acks_for_unknown_ids_are_ignored() {
        let mut st = state(2, true);
        st.on_connected(false, None, Instant::now());
        let t = token(st.publish("t", b"a", QoS::AtLeastOnce, false).unwrap());
        let _ = written(&mut st);
        st.on_packet(Packet::PubAck(999)).unwrap();
        st.on_packet(Packet::PubComp(1)).unwrap();
        st.on_packet(Packet::PubRec(1)).unwrap();
        assert!(st.completions.is_empty(), "PUBREC/PUBCOMP do not end QoS 1");
        st.on_packet(Packet::PubAck(1)).unwrap();
        assert_eq!(st.completions, vec![(t, Outcome::Done)]);
    }

    #[test]
    fn server_only_packets_are_protocol_errors() {
        let mut st = state(1, true);
        assert!(matches!(
            st.on_packet(Packet::PingReq),
            Err(ClientError::Protocol(_))
        ));
        assert!(matches!(
            st.on_packet(Packet::ConnAck(codec::ConnAck {
                session_present: false,
                code: codec::ConnectReturnCode::Accepted,
            })),
            Err(ClientError::Protocol(m)) if m.contains("[MQTT-3.2.0-1]")
        ));
    }
}
