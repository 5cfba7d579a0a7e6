//! The core's `tracing` lines, delivered to Python's `logging`.
//!
//! A broker thread must never wait for Python: the layer formats the line and offers it
//! to a bounded channel (`try_send`); a full channel drops the line and counts it. One
//! forwarding thread attaches to the interpreter once per batch of lines and hands each
//! to `logging.getLogger("pyo3mq.<module>").log(level, line)`, so slow handlers (files,
//! network) delay only that thread. Lines dropped are reported by a warning once the
//! forwarder catches up.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::PyModule;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// Lines waiting for the forwarder; beyond this they are dropped and counted.
const QUEUE_DEPTH: usize = 8192;
/// Lines handed to Python per attachment.
const BATCH: usize = 256;

struct Line {
    level: u8,
    /// `pyo3mq::connection` becomes the logger `pyo3mq.connection`.
    target: &'static str,
    text: String,
}

/// The `tracing` layer that feeds the forwarder.
pub struct PythonLayer {
    tx: SyncSender<Line>,
    dropped: Arc<AtomicU64>,
}

impl PythonLayer {
    /// Starts the forwarding thread; `None` if the thread cannot be started.
    pub fn start() -> Option<PythonLayer> {
        let (tx, rx) = mpsc::sync_channel(QUEUE_DEPTH);
        let dropped = Arc::new(AtomicU64::new(0));
        let counter = dropped.clone();
        thread::Builder::new()
            .name("pyo3mq-logging".into())
            .spawn(move || forward(rx, counter))
            .ok()?;
        Some(PythonLayer { tx, dropped })
    }
}

impl<S: Subscriber> Layer<S> for PythonLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut text = TextVisitor::default();
        event.record(&mut text);
        let line = Line {
            level: python_level(*event.metadata().level()),
            target: event.metadata().target(),
            text: text.finish(),
        };
        match self.tx.try_send(line) {
            Ok(()) => {
                QUEUED.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            // The forwarder is gone (interpreter shutting down): nowhere to log to.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

fn python_level(level: Level) -> u8 {
    match level {
        Level::ERROR => 40,
        Level::WARN => 30,
        Level::INFO => 20,
        Level::DEBUG => 10,
        Level::TRACE => 5,
    }
}

/// "message key=value key=value", the same text the stderr format shows.
#[derive(Default)]
struct TextVisitor {
    message: String,
    fields: String,
}

impl TextVisitor {
    fn finish(mut self) -> String {
        if !self.fields.is_empty() {
            if !self.message.is_empty() {
                self.message.push(' ');
            }
            self.message.push_str(&self.fields);
        }
        self.message
    }
}

impl Visit for TextVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.record_debug(field, &format_args!("{value}"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            if !self.fields.is_empty() {
                self.fields.push(' ');
            }
            let _ = write!(self.fields, "{}={value:?}", field.name());
        }
    }
}

/// Whether the forwarder may still call Python, and whether it is doing so now.
///
/// Interpreter shutdown must not begin while the forwarder is inside Python: a handler
/// that writes (to stderr, a file) releases the GIL, and a thread that Python did not
/// create and that tries to take it back during finalization aborts the process
/// ("PyGILState_Release: thread state must be current"). So an `atexit` callback, which
/// runs before finalization, closes the gate and waits for the batch in progress.
#[derive(Default)]
struct Gate {
    closed: bool,
    busy: bool,
}

static GATE: Mutex<Gate> = Mutex::new(Gate {
    closed: false,
    busy: false,
});
static GATE_IDLE: Condvar = Condvar::new();

/// Most the `atexit` callback waits for a batch in progress (a handler that hangs must
/// not hang the interpreter's exit).
const EXIT_WAIT: Duration = Duration::from_secs(2);

/// Lines queued for the forwarder, and lines it has handed to `logging`: at exit the
/// lines still queued (the broker's last ones, "broker stopped") are handed over first.
static QUEUED: AtomicU64 = AtomicU64::new(0);
static HANDED_OVER: AtomicU64 = AtomicU64::new(0);

fn forward(rx: Receiver<Line>, dropped: Arc<AtomicU64>) {
    let mut batch = Vec::with_capacity(BATCH);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(line) => batch.push(line),
                Err(_) => break,
            }
        }
        {
            let mut gate = lock(&GATE);
            if gate.closed {
                return;
            }
            gate.busy = true;
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        // `try_attach`: during interpreter shutdown there is no logging to call.
        let attached = Python::try_attach(|py| {
            let logging = match py.import("logging") {
                Ok(logging) => logging,
                Err(err) => return err.print(py),
            };
            if lost > 0 {
                let text =
                    format!("{lost} log lines were dropped: Python's logging handlers fell behind");
                emit(&logging, 30, "pyo3mq", &text);
            }
            let count = batch.len() as u64;
            for line in batch.drain(..) {
                emit(&logging, line.level, line.target, &line.text);
            }
            HANDED_OVER.fetch_add(count, Ordering::Release);
        });
        lock(&GATE).busy = false;
        GATE_IDLE.notify_all();
        if attached.is_none() {
            return;
        }
    }
}

fn lock(gate: &'static Mutex<Gate>) -> MutexGuard<'static, Gate> {
    // A poisoned gate only means a panic while holding it; its two flags stay valid.
    gate.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Registered with `atexit`: stops the forwarder before the interpreter finalizes.
#[pyfunction]
fn close_logging(py: Python<'_>) {
    py.detach(|| {
        // The lines queued so far reach `logging` before it goes (the forwarder needs
        // the interpreter, released here), within the same bound as a batch in progress.
        let queued = QUEUED.load(Ordering::Relaxed);
        let deadline = Instant::now() + EXIT_WAIT;
        while HANDED_OVER.load(Ordering::Acquire) < queued && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(2));
        }
        let mut gate = lock(&GATE);
        gate.closed = true;
        let deadline = Instant::now() + EXIT_WAIT;
        while gate.busy {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            gate = GATE_IDLE
                .wait_timeout(gate, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    });
}

/// The logger for a `tracing` target: `pyo3mq::broker::connection` logs on
/// `pyo3mq.connection`. The part folders (`broker`, `client`, `python`) are the crate's
/// layout, not part of the public logger names users configure.
pub(crate) fn logger_name(target: &str) -> String {
    let mut parts: Vec<&str> = target.split("::").collect();
    if parts.len() > 2 && parts[0] == "pyo3mq" && matches!(parts[1], "broker" | "python") {
        parts.remove(1);
    }
    parts.join(".")
}

fn emit(logging: &Bound<'_, PyModule>, level: u8, target: &str, text: &str) {
    let name = logger_name(target);
    let result = logging
        .call_method1("getLogger", (name,))
        .and_then(|logger| logger.call_method1("log", (level, text)));
    if let Err(err) = result {
        // A handler that raises is Python's problem to report, as logging itself does.
        err.print(logging.py());
    }
}

/// The filter for `level`: every `pyo3mq` target at that level, and the per-packet
/// lines (DEBUG, target `pyo3mq::packets`) unless `packets` is false.
fn filter_directives(level: &str, packets: bool) -> String {
    if packets {
        format!("pyo3mq={level}")
    } else {
        format!("pyo3mq={level},pyo3mq::packets=off")
    }
}

/// Routes the core's `tracing` output at `level` to stderr, or with `to_python` to
/// Python's `logging` (loggers `pyo3mq.<module>`). At `debug` and `trace` every packet
/// received and sent is logged too (logger `pyo3mq.packets`), unless `packets` is false.
/// The first call in a process wins.
#[pyfunction]
#[pyo3(signature = (level, to_python=false, packets=true))]
fn init_logging(py: Python<'_>, level: &str, to_python: bool, packets: bool) -> PyResult<()> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let level = level.to_ascii_lowercase();
    if !matches!(
        level.as_str(),
        "error" | "warn" | "info" | "debug" | "trace" | "off"
    ) {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "invalid log level {level:?}: expected error, warn, info, debug, trace or off"
        )));
    }
    let filter = tracing_subscriber::EnvFilter::try_new(filter_directives(&level, packets))
        .map_err(|e| {
            pyo3::exceptions::PyValueError::new_err(format!("invalid log level {level:?}: {e}"))
        })?;
    if to_python {
        let layer = PythonLayer::start().ok_or_else(|| {
            pyo3::exceptions::PyRuntimeError::new_err("cannot start the logging thread")
        })?;
        let close = wrap_pyfunction!(close_logging, py)?;
        py.import("atexit")?.call_method1("register", (close,))?;
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(layer)
            .try_init();
    } else {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
            .try_init();
    }
    Ok(())
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(init_logging, m)?)
}

#[cfg(test)]
mod tests {
    use super::{filter_directives, logger_name};

    #[test]
    fn packet_lines_can_be_left_out() {
        for packets in [true, false] {
            let directives = filter_directives("debug", packets);
            assert!(tracing_subscriber::EnvFilter::try_new(&directives).is_ok());
            assert_eq!(directives.contains("pyo3mq::packets=off"), !packets);
        }
    }

    #[test]
    fn logger_names_skip_the_part_folder() {
        assert_eq!(
            logger_name("pyo3mq::broker::connection"),
            "pyo3mq.connection"
        );
        assert_eq!(
            logger_name("pyo3mq::broker::store::sqlite"),
            "pyo3mq.store.sqlite"
        );
        assert_eq!(logger_name("pyo3mq::python::bridge"), "pyo3mq.bridge");
        assert_eq!(
            logger_name("pyo3mq::client::event_loop"),
            "pyo3mq.client.event_loop"
        );
        assert_eq!(logger_name("pyo3mq::broker"), "pyo3mq.broker");
    }
}
