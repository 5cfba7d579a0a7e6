//! The process-wide tokio runtime of all clients, and the wake socket through which a
//! client's connection task tells the application's event loop that events are queued.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use parking_lot::Mutex;
use tokio::runtime::Runtime;

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
static RUNTIME_INIT: Mutex<()> = Mutex::new(());

/// The process-wide runtime shared by all clients, built on first use (never at import).
pub(crate) fn runtime() -> io::Result<&'static Runtime> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let _guard = RUNTIME_INIT.lock();
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    // One worker by default: a client's I/O is light, and a second worker mostly adds
    // futex wake-ups and work stealing between the reader and writer of one connection
    // (measured: no throughput gain, more CPU per message). PYO3MQ_CLIENT_THREADS
    // raises it for processes with many busy clients.
    let workers = std::env::var("PYO3MQ_CLIENT_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("pyo3mq-client")
        .enable_all()
        .build()?;
    Ok(RUNTIME.get_or_init(|| rt))
}

/// A random number for ids and jitter: good enough for neither to collide in practice,
/// not for anything secret.
pub(crate) fn random_u64() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now())
}

#[cfg(unix)]
type PipeEnd = std::os::unix::net::UnixStream;
#[cfg(not(unix))]
type PipeEnd = std::net::TcpStream;

#[cfg(unix)]
fn pipe_pair() -> io::Result<(PipeEnd, PipeEnd)> {
    PipeEnd::pair()
}

#[cfg(not(unix))]
fn pipe_pair() -> io::Result<(PipeEnd, PipeEnd)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let a = PipeEnd::connect(listener.local_addr()?)?;
    let (b, _) = listener.accept()?;
    Ok((a, b))
}

#[cfg(unix)]
fn raw_handle(end: &PipeEnd) -> i64 {
    use std::os::fd::AsRawFd;
    i64::from(end.as_raw_fd())
}

#[cfg(windows)]
fn raw_handle(end: &PipeEnd) -> i64 {
    use std::os::windows::io::AsRawSocket;
    end.as_raw_socket() as i64
}

#[cfg(not(any(unix, windows)))]
fn raw_handle(_end: &PipeEnd) -> i64 {
    -1
}

/// A socket pair: tokio tasks write one byte to wake the application's event loop, which
/// watches the other end. `pending` coalesces wakes: at most one byte is in flight until
/// the application drains.
pub(crate) struct WakePipe {
    pending: AtomicBool,
    tx: PipeEnd,
    rx: PipeEnd,
}

impl WakePipe {
    pub(crate) fn new() -> io::Result<WakePipe> {
        let (tx, rx) = pipe_pair()?;
        tx.set_nonblocking(true)?;
        rx.set_nonblocking(true)?;
        Ok(WakePipe {
            pending: AtomicBool::new(false),
            tx,
            rx,
        })
    }

    /// The descriptor (socket on Windows) the application's loop watches.
    pub(crate) fn fd(&self) -> i64 {
        raw_handle(&self.rx)
    }

    /// A wake byte is in flight and the application has not drained since.
    pub(crate) fn is_pending(&self) -> bool {
        self.pending.load(Ordering::SeqCst)
    }

    pub(crate) fn wake(&self) {
        if !self.pending.swap(true, Ordering::SeqCst) {
            // WouldBlock means bytes are already waiting: the loop will wake anyway.
            let _ = (&self.tx).write(&[1]);
        }
    }

    /// Called before draining: any event queued after this wakes the loop again.
    ///
    /// The byte is read *before* the flag is cleared. The other order loses wakes: a
    /// `wake()` landing between the two would set the flag and write a byte that the read
    /// then swallows, leaving the flag set with no byte in the pipe.
    pub(crate) fn reset(&self) {
        let mut sink = [0u8; 64];
        while matches!((&self.rx).read(&mut sink), Ok(n) if n > 0) {}
        self.pending.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakes_coalesce_until_reset() {
        let pipe = WakePipe::new().unwrap();
        pipe.wake();
        pipe.wake();
        assert!(pipe.is_pending());
        let mut buf = [0u8; 8];
        assert_eq!(
            (&pipe.rx).read(&mut buf).unwrap(),
            1,
            "one byte for two wakes"
        );
        pipe.reset();
        assert!(!pipe.is_pending());
        pipe.wake();
        pipe.reset();
        assert!(
            (&pipe.rx).read(&mut buf).is_err(),
            "reset drained the byte (WouldBlock)"
        );
    }
}
