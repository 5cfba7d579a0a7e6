//! The connection's side of MQTT 5.0 Will Delay Intervals: at the close, a will with a
//! delay whose session outlives the connection is handed to the broker's waiting wills
//! (broker/session/will.rs) instead of being published at once.

use std::sync::Arc;

use tracing::info;

use crate::broker::metrics;
use crate::broker::router::Session;
use crate::broker::session::Message;
use crate::codec::{Connect, Protocol};

use super::{flow, Connection};

impl Connection {
    /// Publishes the will now, or (5.0, a Will Delay Interval, a session that stays)
    /// after the delay or the session's expiry, whichever is first [MQTT-3.1.2-8], unless
    /// the client comes back first [MQTT-3.1.3-9].
    pub(super) async fn publish_or_delay_will(
        &mut self,
        connect: &Connect,
        session: &Arc<Session>,
    ) {
        let wait = if self.protocol == Protocol::V5 {
            let expiry = {
                let state = session.state.lock();
                if session.clean {
                    None
                } else {
                    state.expiry
                }
            };
            flow::will_wait(connect, expiry)
        } else {
            None
        };
        let (Some(wait), Some(will)) = (wait, connect.will.as_ref()) else {
            return self.publish_will(connect).await;
        };
        // Checked now, as an immediate will would be: the hooks see this connection.
        if metrics::is_reserved(&will.topic) {
            info!(client_id = %self.client_id, topic = %will.topic,
                "will dropped: $SYS topics are the broker's own (MQTT 4.7.2)");
            return;
        }
        if !self.may_publish(&will.topic).await {
            info!(client_id = %self.client_id, topic = %will.topic, "will not authorized: dropped");
            return;
        }
        let msg = Arc::new(Message {
            topic: will.topic.clone(),
            payload: will.payload.clone(),
            qos: will.qos,
            retain: will.retain,
            publisher: self.client_id.clone(),
            properties: Self::will_properties_v5(connect),
        });
        self.router
            .wills()
            .schedule(self.router.clone(), self.client_info(), msg, wait);
    }
}
