//! pyo3mq: an MQTT 3.1/3.1.1 broker and client with a Rust core.
//!
//! This file is the Python module `pyo3mq._pyo3mq` and nothing else: the bindings stay
//! thin over the plain Rust core below, which builds and tests without Python when the
//! default `python` feature is off.

pub mod codec;
pub mod config;
pub mod connection;
pub mod router;
pub mod server;
pub mod session;
pub mod store;
pub mod topic;

#[cfg(feature = "python")]
mod bindings {
    use std::sync::Arc;
    use std::time::Duration;

    use parking_lot::Mutex;
    use pyo3::create_exception;
    use pyo3::exceptions::{PyException, PyValueError};
    use pyo3::prelude::*;

    use crate::config::{Config, OverflowPolicy};
    use crate::server::{Server, ServerError};
    use crate::store::{MemoryStore, SessionStore};

    create_exception!(_pyo3mq, MqttError, PyException, "Base class of pyo3mq's errors.");
    create_exception!(
        _pyo3mq,
        BrokerStartError,
        MqttError,
        "The broker could not start (bad configuration, or a listener could not bind)."
    );

    fn to_pyerr(err: ServerError) -> PyErr {
        match err {
            ServerError::Config(msg) => PyValueError::new_err(msg),
            other => BrokerStartError::new_err(other.to_string()),
        }
    }

    /// Routes the core's `tracing` output to stderr at `level` (first call wins).
    #[pyfunction]
    fn init_logging(level: &str) -> PyResult<()> {
        let filter = tracing_subscriber::EnvFilter::try_new(format!("pyo3mq={level}"))
            .map_err(|e| PyValueError::new_err(format!("invalid log level {level:?}: {e}")))?;
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
            .try_init();
        Ok(())
    }

    /// The Rust broker: its own threads, sockets and state. `pyo3mq.Broker` wraps it.
    #[pyclass(frozen, module = "pyo3mq._pyo3mq")]
    struct BrokerCore {
        config: Config,
        store: Arc<MemoryStore>,
        server: Mutex<Option<Server>>,
    }

    #[pymethods]
    impl BrokerCore {
        #[new]
        #[pyo3(signature = (
            listeners, *, max_packet_size, max_connections, max_inflight,
            max_queued_messages, queue_overflow, queue_qos0_offline, connect_timeout,
            max_client_id_len, allow_zero_length_client_id, worker_threads
        ))]
        #[allow(clippy::too_many_arguments)]
        fn new(
            listeners: Vec<String>,
            max_packet_size: usize,
            max_connections: usize,
            max_inflight: usize,
            max_queued_messages: usize,
            queue_overflow: &str,
            queue_qos0_offline: bool,
            connect_timeout: f64,
            max_client_id_len: usize,
            allow_zero_length_client_id: bool,
            worker_threads: usize,
        ) -> PyResult<Self> {
            let queue_overflow = OverflowPolicy::parse(queue_overflow).ok_or_else(|| {
                PyValueError::new_err(format!(
                    "queue_overflow must be 'drop_new' or 'drop_oldest', not {queue_overflow:?}"
                ))
            })?;
            let connect_timeout = Duration::try_from_secs_f64(connect_timeout)
                .map_err(|_| PyValueError::new_err("connect_timeout must be a positive number"))?;
            let config = Config {
                listeners,
                max_packet_size,
                max_connections,
                max_inflight,
                max_queued_messages,
                queue_overflow,
                queue_qos0_offline,
                connect_timeout,
                max_client_id_len,
                allow_zero_length_client_id,
                worker_threads,
            };
            config.validate().map_err(PyValueError::new_err)?;
            Ok(BrokerCore {
                config,
                store: Arc::new(MemoryStore::default()),
                server: Mutex::new(None),
            })
        }

        /// Binds the listeners and starts serving; returns the bound (host, port) pairs.
        fn start(&self, py: Python<'_>) -> PyResult<Vec<(String, u16)>> {
            let config = self.config.clone();
            let store: Arc<dyn SessionStore> = self.store.clone();
            let mut slot = self.server.lock();
            if slot.is_some() {
                return Err(MqttError::new_err("the broker is already running"));
            }
            let server = py
                .detach(move || Server::start(config, store))
                .map_err(to_pyerr)?;
            let addresses = server
                .addresses()
                .iter()
                .map(|a| (a.ip().to_string(), a.port()))
                .collect();
            *slot = Some(server);
            Ok(addresses)
        }

        /// Stops gracefully: closes connections, keeps persistent sessions for a restart.
        fn stop(&self, py: Python<'_>) {
            let server = self.server.lock().take();
            if let Some(mut server) = server {
                py.detach(move || server.stop());
            }
        }

        #[getter]
        fn running(&self) -> bool {
            self.server.lock().is_some()
        }

        /// Messages dropped by full session queues since the broker started.
        #[getter]
        fn dropped_messages(&self) -> u64 {
            self.server
                .lock()
                .as_ref()
                .map_or(0, |s| s.router().dropped_messages())
        }
    }

    #[pymodule]
    fn _pyo3mq(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        m.add("MqttError", m.py().get_type::<MqttError>())?;
        m.add("BrokerStartError", m.py().get_type::<BrokerStartError>())?;
        m.add_class::<BrokerCore>()?;
        m.add_function(wrap_pyfunction!(init_logging, m)?)?;
        Ok(())
    }
}
