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
use std::sync::Arc;
use std::thread;

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
            Ok(()) => {}
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
            for line in batch.drain(..) {
                emit(&logging, line.level, line.target, &line.text);
            }
        });
        if attached.is_none() {
            return;
        }
    }
}

fn emit(logging: &Bound<'_, PyModule>, level: u8, target: &str, text: &str) {
    let name = target.replace("::", ".");
    let result = logging
        .call_method1("getLogger", (name,))
        .and_then(|logger| logger.call_method1("log", (level, text)));
    if let Err(err) = result {
        // A handler that raises is Python's problem to report, as logging itself does.
        err.print(logging.py());
    }
}
