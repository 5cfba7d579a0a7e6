//! The connection's side of MQTT 5.0 Will Delay Intervals: at the close, a will with a
//! delay whose session outlives the connection is handed to the broker's waiting wills
//! (broker/router/will.rs) instead of being published at once.

use std::sync::Arc;

use crate::broker::router::Session;
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
        let wait = if self.protocol == Protocol::V5 && !session.clean {
            let expiry = session.state.lock().expiry;
            flow::will_wait(connect, expiry)
        } else {
            None
        };
        let Some(wait) = wait else {
            return self.publish_will(connect).await;
        };
        // Authorized now, as an immediate will would be: the hooks see this connection.
        if let Some(msg) = self.will_message(connect).await {
            self.router
                .wills()
                .schedule(self.router.clone(), self.client_info(), msg, wait);
        }
    }
}
