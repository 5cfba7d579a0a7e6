//! Heap held per idle connection, counted by a global allocator that tracks every live
//! allocation by size (benches/README.md, "Where an idle connection's bytes go").
//!
//! A real broker (`Server::start`) on a loopback port; blocking std sockets as clients,
//! which allocate nothing on the heap per connection (the CONNECT and CONNACK live on the
//! stack), so the live-heap difference before and after is the broker's alone. This is
//! the requested size: glibc's 16-byte chunk headers and its rounding come on top (the
//! RSS benchmark counts those, and the kernel's page-table and socket-table costs).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3mq::broker::config::Config;
use pyo3mq::broker::hooks::Hooks;
use pyo3mq::broker::server::Server;
use pyo3mq::broker::store::MemoryStore;

/// Size classes tracked one by one (larger allocations share the last slot).
const CLASSES: usize = 8192;

struct Counting;

static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);
/// The most `LIVE_BYTES` has been since [`reset_peak`].
static PEAK_BYTES: AtomicI64 = AtomicI64::new(0);
static BY_SIZE: [AtomicI64; CLASSES + 1] = [const { AtomicI64::new(0) }; CLASSES + 1];

fn account(size: usize, sign: i64) {
    let live = LIVE_BYTES.fetch_add(sign * size as i64, Ordering::Relaxed) + sign * size as i64;
    PEAK_BYTES.fetch_max(live, Ordering::Relaxed);
    BY_SIZE[size.min(CLASSES)].fetch_add(sign, Ordering::Relaxed);
    if sign > 0 {
        trace(size);
    }
}

/// `IDLE_MEMORY_TRACE=SIZE`: print where a few allocations of that size come from (to
/// name the size classes in the breakdown).
static TRACE_SIZE: AtomicI64 = AtomicI64::new(-1);
static TRACED: AtomicI64 = AtomicI64::new(0);
thread_local!(static IN_TRACE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });

fn trace(size: usize) {
    if TRACE_SIZE.load(Ordering::Relaxed) != size as i64 || TRACED.load(Ordering::Relaxed) >= 3 {
        return;
    }
    let _ = IN_TRACE.try_with(|busy| {
        if busy.replace(true) {
            return;
        }
        if TRACED.fetch_add(1, Ordering::Relaxed) < 3 {
            eprintln!(
                "allocation of {size} B:\n{}",
                std::backtrace::Backtrace::force_capture()
            );
        }
        busy.set(false);
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counters are
// plain atomics and never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        account(layout.size(), 1);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        account(layout.size(), -1);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        account(layout.size(), 1);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        account(layout.size(), -1);
        account(new_size, 1);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn reset_peak() {
    PEAK_BYTES.store(LIVE_BYTES.load(Ordering::Relaxed), Ordering::Relaxed);
}

fn snapshot() -> (i64, Vec<i64>) {
    let by_size = BY_SIZE.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    (LIVE_BYTES.load(Ordering::Relaxed), by_size)
}

/// An MQTT 3.1.1 CONNECT, clean session, keepalive 60, client id `idle-NNNNNN`.
fn connect_packet(i: usize) -> [u8; 25] {
    let mut p = [0u8; 25];
    p[..14].copy_from_slice(&[
        0x10, 23, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 11,
    ]);
    let id = format!("idle-{i:06}");
    p[14..].copy_from_slice(id.as_bytes());
    p
}

fn open(addr: std::net::SocketAddr, i: usize) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&connect_packet(i)).expect("send CONNECT");
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).expect("read CONNACK");
    assert_eq!(ack, [0x20, 2, 0, 0], "CONNACK accepted");
    s
}

/// Waits until `n` connections are parked.
fn wait_parked(server: &Server, n: usize) {
    let counters = server.router().counters();
    let from = Instant::now();
    while counters.parked_connections().0 < n as u64 {
        assert!(
            from.elapsed() < Duration::from_secs(30),
            "{} of {n} connections parked",
            counters.parked_connections().0
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The tests count one process-wide heap: one measurement at a time.
static MEASURING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What [`heap_per_connection`] measured, per connection.
struct Measured {
    /// Live heap once every connection is idle (or parked), minus live heap before.
    live: f64,
    /// The most live heap while they connected and settled, minus live heap before.
    peak: f64,
    /// Allocations by size, per connection.
    classes: BTreeMap<usize, i64>,
}

/// Live heap while `n` clients are connected and silent, minus live heap before;
/// with `park_after`, once all of them are parked (`idle_park_after`).
fn heap_per_connection(n: usize, park_after: Option<Duration>) -> Measured {
    let config = Config {
        listeners: vec!["tcp://127.0.0.1:0".into()],
        // Zero: never park (the full connection task is what is measured).
        idle_park_after: park_after.unwrap_or(Duration::ZERO),
        ..Config::default()
    };
    let _one_at_a_time = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    let mut server = Server::start(
        config,
        Hooks::default(),
        Arc::new(MemoryStore::default()),
        false,
    )
    .expect("broker starts");
    let addr = server.addresses()[0];
    // Warm up: the first connections allocate the runtime's and the maps' first blocks.
    let warm: Vec<TcpStream> = (0..64).map(|i| open(addr, 900_000 + i)).collect();
    let mut clients = Vec::with_capacity(n);
    std::thread::sleep(Duration::from_millis(200));
    if park_after.is_some() {
        wait_parked(&server, warm.len());
    }
    let (before, sizes_before) = snapshot();
    reset_peak();
    if let Some(size) = std::env::var("IDLE_MEMORY_TRACE")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        TRACE_SIZE.store(size, Ordering::Relaxed);
    }
    for i in 0..n {
        clients.push(open(addr, i));
    }
    // Let every connection task reach its idle wait (or its parked one).
    let settle = Instant::now();
    let mut after = snapshot();
    while settle.elapsed() < Duration::from_millis(500) {
        std::thread::sleep(Duration::from_millis(100));
        after = snapshot();
    }
    if park_after.is_some() {
        wait_parked(&server, n + warm.len());
        // The full tasks that parked are freed once their workers have run again.
        std::thread::sleep(Duration::from_millis(200));
        after = snapshot();
    }
    let per_conn = (after.0 - before) as f64 / n as f64;
    let peak = (PEAK_BYTES.load(Ordering::Relaxed) - before) as f64 / n as f64;
    let mut classes = BTreeMap::new();
    for (size, (a, b)) in after.1.iter().zip(&sizes_before).enumerate() {
        if a - b != 0 {
            classes.insert(size, a - b);
        }
    }
    drop(clients);
    drop(warm);
    server.stop();
    Measured {
        live: per_conn,
        peak,
        classes,
    }
}

/// Prints the live allocations one idle connection adds, by size, and keeps the total
/// bounded. The bound is what the design allows, with a margin for tokio and hashbrown
/// versions; it is not a speed figure.
#[test]
fn heap_per_idle_connection() {
    let n = connections();
    let Measured {
        live: per_conn,
        peak,
        classes,
    } = heap_per_connection(n, None);
    println!(
        "live heap per idle connection: {per_conn:.0} bytes over {n} connections \
         (peak {peak:.0})"
    );
    print_classes(n, &classes);
    assert!(
        per_conn < 2_600.0,
        "an idle connection holds {per_conn:.0} bytes of heap"
    );
}

/// The same, once every connection has parked (`idle_park_after`,
/// src/broker/connection/park.rs): the full task is gone, and so are any parked task
/// (a plain TCP connection parks in broker/parking.rs's table) and the socket's tokio
/// registration. 965 bytes when measured; a parked task (640) or a registration (256)
/// per connection would break the bound.
#[test]
fn heap_per_parked_connection() {
    let n = connections();
    let Measured {
        live: per_conn,
        peak,
        classes,
    } = heap_per_connection(n, Some(Duration::from_millis(200)));
    println!(
        "live heap per parked connection: {per_conn:.0} bytes over {n} connections \
         (peak {peak:.0})"
    );
    print_classes(n, &classes);
    assert!(
        per_conn < 1_200.0,
        "a parked connection holds {per_conn:.0} bytes of heap"
    );
}

/// Eager parks (src/broker/connection/park.rs): with `idle_park_after` far away, a
/// connection that got its CONNACK and sent nothing more parks at once, so its full
/// task never lives beside the others'. Every connection is parked long before
/// `idle_park_after`, and the live heap at its highest while they connected (one
/// after another) stays near the parked figure, below the full task's (2,430 bytes in
/// `heap_per_idle_connection`): the memory a burst of connections leaves behind in the
/// allocator is what that peak was.
#[test]
fn eager_parks_keep_the_connect_burst_small() {
    let n = connections();
    let park_after = Duration::from_secs(120);
    let started = Instant::now();
    let Measured {
        live,
        peak,
        classes,
        ..
    } = heap_per_connection(n, Some(park_after));
    println!(
        "live heap per eagerly parked connection: {live:.0} bytes over {n} connections, \
         peak {peak:.0} while connecting"
    );
    print_classes(n, &classes);
    assert!(
        started.elapsed() < park_after / 2,
        "connections parked only after {:?}",
        started.elapsed()
    );
    assert!(
        peak < 1_400.0,
        "the burst of connections peaked at {peak:.0} bytes per connection"
    );
}

/// Both ends of every connection are in this process: two descriptors each.
fn connections() -> usize {
    let n = 2_000.min(descriptors().saturating_sub(300) / 2);
    assert!(
        n >= 500,
        "too few descriptors for the test ({})",
        descriptors()
    );
    n
}

fn print_classes(n: usize, classes: &BTreeMap<usize, i64>) {
    println!("size class: allocations per connection (bytes per connection)");
    for (size, count) in classes {
        let per = *count as f64 / n as f64;
        if per.abs() >= 0.05 {
            println!(
                "  {size:>5} B: {per:>6.2} ({:>7.1} B)",
                per * (*size as f64)
            );
        }
    }
}

/// The soft descriptor limit, first raised to the hard limit (a soft limit of 1,024 is
/// common).
fn descriptors() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid pointer to an rlimit, for the calling process.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    let raised = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: as above; lowering nothing, raising the soft limit within the hard one.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        lim.rlim_cur = lim.rlim_max;
    }
    usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
}
