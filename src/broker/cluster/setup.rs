//! The start's JetStream steps (streams, buckets, the node's consumer, its first
//! liveness key), each tried again while the engine cannot answer yet.
//!
//! Apart from cluster.rs's `start` because a step is retried, not just run: with
//! `cluster_replicas` above 1, a stream or bucket just created (by this node or another
//! starting with it) has no leader until its replicas elected one, and one whose leader's
//! NATS server was lost has none until the others elect a new one (seconds either way).
//! Meanwhile JetStream answers "no stream found for given subject", "JetStream system
//! temporarily unavailable" or nothing, which is no reason for a node not to start.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use tokio::time::Instant;
use tracing::debug;

use super::ClusterError;

/// Pause between two tries of a step.
const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// Runs `step` until it succeeds or `limit` has passed since the first try; the last
/// failure is then the start's error (`what: reason`).
pub(super) async fn retrying<T, E: Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    limit: Duration,
    mut step: impl FnMut() -> F,
) -> Result<T, ClusterError> {
    let deadline = Instant::now() + limit;
    let mut tries = 0u32;
    loop {
        tries += 1;
        let failed = match tokio::time::timeout_at(deadline, step()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {limit:?}"),
        };
        if Instant::now() + RETRY_PAUSE >= deadline {
            return Err(ClusterError::Stream(format!(
                "{what}: {failed} (tried {tries} time(s) in {limit:?})"
            )));
        }
        debug!("cluster: {what}: {failed}; trying again (JetStream may be electing a leader)");
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// A key-value bucket, made with `config` if there is none. Two nodes starting at once
/// may both find none: creating one with the same settings again is no error.
pub(super) async fn bucket(
    js: &jetstream::Context,
    config: kv::Config,
    limit: Duration,
) -> Result<kv::Store, ClusterError> {
    let what = format!("bucket {}", config.bucket);
    retrying(&what, limit, || async {
        match js.get_key_value(&config.bucket).await {
            Ok(store) => Ok(store),
            Err(_) => js
                .create_key_value(config.clone())
                .await
                .map_err(|e| e.to_string()),
        }
    })
    .await
}
