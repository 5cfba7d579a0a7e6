//! How the bridge's task, on the broker's runtime, learns that its client (whose tasks
//! run on the client runtime) has events: the client's wake socket, registered with the
//! broker's reactor.

use std::time::Duration;

use crate::client::Client;

/// Readiness of a client's wake socket on the broker's runtime: the client's tasks run
/// on the client runtime and tell the application through that socket.
#[cfg(unix)]
pub(super) struct Wake(tokio::io::unix::AsyncFd<WakeFd>);

#[cfg(unix)]
struct WakeFd(std::os::fd::RawFd);

#[cfg(unix)]
impl std::os::fd::AsRawFd for WakeFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

#[cfg(unix)]
impl Wake {
    pub(super) fn new(client: &Client) -> std::io::Result<Wake> {
        let fd = std::os::fd::RawFd::try_from(client.wake_fd())
            .map_err(|_| std::io::Error::other("wake descriptor out of range"))?;
        // SAFETY: the descriptor is the client's wake socket, which the client keeps open
        // as long as it exists; `Remote` drops this registration before the client.
        unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(
                WakeFd(fd),
                tokio::io::Interest::READABLE,
            )
        }
        .map(Wake)
        .map_err(|e| e.into_parts().1)
    }

    /// Waits for the socket to become readable and clears the readiness before the
    /// caller drains: the drain empties the socket, and anything queued after it writes
    /// a new byte, which is a new readiness event, so nothing is missed.
    pub(super) async fn wait(&self) {
        match self.0.readable().await {
            Ok(mut guard) => guard.clear_ready(),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Elsewhere the client is polled.
#[cfg(not(unix))]
pub(super) struct Wake;

#[cfg(not(unix))]
impl Wake {
    pub(super) fn new(_client: &Client) -> std::io::Result<Wake> {
        Ok(Wake)
    }

    pub(super) async fn wait(&self) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
