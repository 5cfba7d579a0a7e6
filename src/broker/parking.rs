//! Sockets of parked connections, held without a tokio task or a tokio registration.
//!
//! A parked connection (connection/park.rs) used to be a small task waiting on its
//! socket, its session's wake-up and its takeover signal: a 640-byte task cell plus the
//! socket's 256-byte registration in tokio's driver, for every idle connection
//! (benches/README.md, "Idle connection breakdown"). Here a parked plain TCP connection
//! is one slot of a table (its socket, and a boxed closure holding the rest of its
//! state), and its socket sits in one epoll set watched by one thread. Whatever ends the
//! park calls [`wake`] with the slot's key: the socket becoming readable (this thread),
//! a delivery (`Session::deliver`), a takeover, shutdown or keepalive kick
//! (`Takeover::kick_now`). [`wake`] takes the slot out, takes the socket out of the epoll
//! set and calls the closure, which spawns the full connection again on its runtime.
//!
//! Keys carry a generation: a key kept after its slot was emptied (a session's or a
//! takeover signal's, cleared only once the resumed connection runs) wakes nothing, even
//! when the slot holds another connection by then.
//!
//! Knows nothing of connections or sessions (no module cycle: the router calls [`wake`],
//! the connection calls [`park`]).

use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};

/// What resumes a parked connection, given its socket back.
pub type Resume = Box<dyn FnOnce(TcpStream) + Send>;

/// A key that names no slot: what a session or takeover signal holds while nothing of
/// theirs is parked.
pub const NONE: u64 = 0;

struct Slot {
    /// Odd while the slot holds a parked connection; bumped when it is emptied, so old
    /// keys of this slot stop matching.
    generation: u32,
    parked: Option<(TcpStream, Resume)>,
}

#[derive(Default)]
struct Table {
    slots: Vec<Slot>,
    free: Vec<u32>,
}

struct Parking {
    table: Mutex<Table>,
    registry: Registry,
}

/// The process's table and epoll set, with the thread that waits on it; `None` if the
/// epoll set or the thread could not be made (connections then park as tasks).
static PARKING: OnceLock<Option<Parking>> = OnceLock::new();
/// The process whose thread waits on the epoll set. After a `fork` the child has no such
/// thread (and shares the parent's epoll set): it parks connections as tasks.
static PID: OnceLock<u32> = OnceLock::new();

fn parking() -> Option<&'static Parking> {
    let parking = PARKING.get_or_init(start).as_ref()?;
    (PID.get() == Some(&std::process::id())).then_some(parking)
}

fn start() -> Option<Parking> {
    let poll = Poll::new()
        .inspect_err(|err| {
            tracing::error!("cannot create the parked connections' epoll set: {err}")
        })
        .ok()?;
    let registry = poll
        .registry()
        .try_clone()
        .inspect_err(|err| tracing::error!("cannot share the parked connections' epoll set: {err}"))
        .ok()?;
    std::thread::Builder::new()
        .name("pyo3mq-parked".into())
        .spawn(move || wait_readable(poll))
        .inspect_err(|err| tracing::error!("cannot start the parked connections' thread: {err}"))
        .ok()?;
    let _ = PID.set(std::process::id());
    Some(Parking {
        table: Mutex::new(Table::default()),
        registry,
    })
}

impl Parking {
    fn table(&self) -> MutexGuard<'_, Table> {
        // Nothing panics while holding the lock; a poisoned table is still consistent.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether [`park`] can take sockets in this process.
pub fn available() -> bool {
    parking().is_some()
}

/// Parks `socket`: `resume` is called with it once [`wake`] is called with the returned
/// key. The caller publishes the key (where deliveries and kicks find it), looks for
/// what came before it was published, and then calls [`watch`], or [`wake`] if anything
/// did: until then nothing but the caller knows the key, so the socket is not resumed
/// behind its back.
///
/// `Err` gives both back when this process parks no sockets (see [`available`]).
pub fn park(socket: TcpStream, resume: Resume) -> Result<u64, (TcpStream, Resume)> {
    let Some(parking) = parking() else {
        return Err((socket, resume));
    };
    let mut table = parking.table();
    let index = match table.free.pop() {
        Some(index) => index,
        None => {
            let Ok(index) = u32::try_from(table.slots.len()) else {
                return Err((socket, resume));
            };
            table.slots.push(Slot {
                generation: 0,
                parked: None,
            });
            index
        }
    };
    let slot = &mut table.slots[index as usize];
    slot.generation = slot.generation.wrapping_add(1) | 1;
    slot.parked = Some((socket, resume));
    Ok(key(index, slot.generation))
}

/// Watches the socket parked under `key`: once it is readable (data, end of stream or
/// an error) the connection is woken. Edge-triggered, and a socket readable already
/// reports at once.
pub fn watch(key: u64) {
    let Some(parking) = parking() else { return };
    let registered = {
        let table = parking.table();
        let Some((socket, _)) = slot(&table, key).and_then(|slot| slot.parked.as_ref()) else {
            return;
        };
        // Under the lock: a `wake` in between would take the socket out of the set
        // before this put it in, and leave it there.
        let token = Token(usize::try_from(key).unwrap_or(usize::MAX));
        parking.registry.register(
            &mut SourceFd(&socket.as_raw_fd()),
            token,
            Interest::READABLE,
        )
    };
    if let Err(err) = registered {
        tracing::warn!("cannot watch a parked connection's socket, resuming it: {err}");
        wake(key);
    }
}

fn slot(table: &Table, key: u64) -> Option<&Slot> {
    let index = (key & u64::from(u32::MAX)) as usize;
    let generation = (key >> 32) as u32;
    table
        .slots
        .get(index)
        .filter(|slot| slot.generation == generation)
}

/// Resumes the connection parked under `key`, if it still is (a key whose connection
/// has resumed already wakes nothing). Cheap to call for nothing: one lock.
pub fn wake(key: u64) {
    if key == NONE {
        return;
    }
    let Some(parking) = parking() else { return };
    let index = (key & u64::from(u32::MAX)) as usize;
    let parked = {
        let mut table = parking.table();
        if slot(&table, key).is_none() {
            return;
        }
        let slot = &mut table.slots[index];
        let parked = slot.parked.take();
        slot.generation = slot.generation.wrapping_add(1);
        // `index` came from the table, so it fits.
        table.free.push(index as u32);
        parked
    };
    let Some((socket, resume)) = parked else {
        return;
    };
    // Out of the epoll set before tokio's driver takes the socket. Fails harmlessly when
    // it was never put in (woken before `watch`); any other failure leaves an entry the
    // kernel drops when the socket closes, which wakes nothing (a stale key).
    let _ = parking
        .registry
        .deregister(&mut SourceFd(&socket.as_raw_fd()));
    resume(socket);
}

fn key(index: u32, generation: u32) -> u64 {
    u64::from(generation) << 32 | u64::from(index)
}

/// The thread: wakes every connection whose socket became readable.
fn wait_readable(mut poll: Poll) {
    let mut events = Events::with_capacity(1024);
    loop {
        if let Err(err) = poll.poll(&mut events, None) {
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!("the parked connections' epoll wait failed: {err}");
            std::thread::sleep(std::time::Duration::from_millis(100));
            continue;
        }
        for event in &events {
            wake(event.token().0 as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::sync::mpsc;
    use std::time::Duration;

    /// A connected pair of loopback sockets: the accepted end non-blocking, as tokio's.
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (server, client)
    }

    /// A resume closure that reports the socket's peer port when called.
    fn resume(tx: mpsc::Sender<u16>) -> super::Resume {
        Box::new(move |socket| {
            let _ = tx.send(socket.peer_addr().map_or(0, |a| a.port()));
        })
    }

    /// `wake` resumes once with the socket it was given, and a key whose slot was
    /// emptied (even when the slot holds another socket by then) wakes nothing.
    #[test]
    fn wake_resumes_once_and_stale_keys_wake_nothing() {
        let (server, client) = pair();
        let port = client.local_addr().unwrap().port();
        let (tx, rx) = mpsc::channel();
        let Ok(key) = super::park(server, resume(tx.clone())) else {
            panic!("this process parks sockets");
        };
        super::wake(key);
        assert_eq!(rx.try_recv(), Ok(port), "woken with its own socket");
        super::wake(key);
        assert!(rx.try_recv().is_err(), "a second wake resumes nothing");
        // The slot is reused: the old key still names nothing.
        let (server2, client2) = pair();
        let Ok(key2) = super::park(server2, resume(tx)) else {
            panic!("parks again");
        };
        assert_ne!(key, key2);
        super::wake(key);
        assert!(rx.try_recv().is_err(), "a stale key wakes nothing");
        super::wake(key2);
        assert_eq!(rx.try_recv(), Ok(client2.local_addr().unwrap().port()));
        super::wake(super::NONE);
    }

    /// A watched socket resumes once the peer sends (the parking thread's epoll set),
    /// and not before.
    #[test]
    fn a_watched_socket_resumes_when_readable() {
        let (server, mut client) = pair();
        let (tx, rx) = mpsc::channel();
        let Ok(key) = super::park(server, resume(tx)) else {
            panic!("this process parks sockets");
        };
        super::watch(key);
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "nothing was sent: still parked"
        );
        client.write_all(b"\xc0\x00").unwrap();
        let port = rx.recv_timeout(Duration::from_secs(10));
        assert_eq!(port, Ok(client.local_addr().unwrap().port()));
        super::wake(key);
        assert!(rx.try_recv().is_err(), "resumed once");
    }
}
