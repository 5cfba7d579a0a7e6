//! `BrokerCore`: the Python class over [`Server`]. Thin: it converts settings, starts and
//! stops the server with the interpreter released, and wires Python hooks through the
//! bridge. `pyo3mq.Broker` (Python) is the public face.

use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;
use parking_lot::Mutex;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

use crate::broker::config::{Config, Value};
use crate::broker::hooks::Hooks;
use crate::broker::metrics::HookKind;
use crate::broker::router::{MatchScratch, Router, Session};
use crate::broker::server::{check_files, save_now, Server, ServerError};
use crate::broker::session::Message;
use crate::broker::store::{open_store, MemoryStore, SessionStore, StoredState};
use crate::codec::QoS;
use crate::python::bridge::{Feed, PyBridge, SubscriptionFeed, Wanted};
use crate::python::errors::{BrokerStartError, MqttError};
use crate::python::properties::MessageProperties;
use crate::topic;

mod records;
mod results;
use records::{retained_record, session_record, RetainedRecord, SessionRecord};
use results::{PyHookKind, ReloadReport, Routed};

fn to_pyerr(err: ServerError) -> PyErr {
    match err {
        ServerError::Config(msg) => PyValueError::new_err(msg),
        other => BrokerStartError::new_err(other.to_string()),
    }
}

/// A Python value as a setting's [`Value`]: `None`, bool, int, float, str, a list or
/// tuple of str, or a list of dicts with str keys (`[[listener]]` tables). Anything else
/// is refused, naming the setting.
fn to_value(name: &str, obj: &Bound<'_, PyAny>) -> PyResult<Value> {
    let value = if obj.is_none() {
        Value::None
    } else if let Ok(b) = obj.cast::<PyBool>() {
        Value::Bool(b.is_true())
    } else if obj.is_instance_of::<PyInt>() {
        Value::Int(
            obj.extract()
                .map_err(|_| PyValueError::new_err(format!("{name} is out of range: {obj}")))?,
        )
    } else if let Ok(f) = obj.cast::<PyFloat>() {
        Value::Float(f.value())
    } else if let Ok(s) = obj.cast::<PyString>() {
        Value::Str(s.to_cow()?.into_owned())
    } else if (obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>())
        && obj
            .try_iter()?
            .next()
            .transpose()?
            .is_some_and(|first| first.is_instance_of::<PyDict>())
    {
        let mut tables = Vec::new();
        for item in obj.try_iter()? {
            let item = item?;
            let dict = item.cast::<PyDict>().map_err(|_| {
                PyValueError::new_err(format!("{name} must be a list of tables, not {item}"))
            })?;
            let mut table = Vec::new();
            for (key, value) in dict.iter() {
                let key = key.cast::<PyString>().map_err(|_| {
                    PyValueError::new_err(format!("{name} table keys must be strings: {key}"))
                })?;
                let key = key.to_cow()?.into_owned();
                let value = to_value(&format!("{name} table's {key}"), &value)?;
                table.push((key, value));
            }
            tables.push(table);
        }
        Value::Tables(tables)
    } else if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
        let mut items = Vec::new();
        for item in obj.try_iter()? {
            let item = item?;
            let s = item.cast::<PyString>().map_err(|_| {
                PyValueError::new_err(format!("{name} must be a list of strings, not {item}"))
            })?;
            items.push(s.to_cow()?.into_owned());
        }
        Value::List(items)
    } else {
        let kind = obj.get_type().name()?;
        return Err(PyValueError::new_err(format!(
            "{name} has an unsupported type {kind}"
        )));
    };
    Ok(value)
}

fn from_py(value: &Value, py: Python<'_>) -> PyResult<Py<PyAny>> {
    Ok(match value {
        Value::None => py.None(),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any().unbind(),
        Value::Int(n) => n.into_pyobject(py)?.into_any().unbind(),
        Value::Float(x) => x.into_pyobject(py)?.into_any().unbind(),
        Value::Str(s) => s.into_pyobject(py)?.into_any().unbind(),
        Value::List(items) => PyList::new(py, items)?.into_any().unbind(),
        Value::Tables(tables) => {
            let list = PyList::empty(py);
            for table in tables {
                let dict = PyDict::new(py);
                for (key, value) in table {
                    dict.set_item(key, from_py(value, py)?)?;
                }
                list.append(dict)?;
            }
            list.into_any().unbind()
        }
    })
}

/// Builds and checks a [`Config`] from the settings in `settings` (by name; missing
/// ones keep their defaults). Errors are `ValueError`s naming the setting.
fn config_from(settings: &Bound<'_, PyDict>) -> PyResult<Config> {
    let mut failure = None;
    let config = Config::from_values(|name| match settings.get_item(name) {
        Ok(Some(obj)) => match to_value(name, &obj) {
            Ok(value) => Some(value),
            Err(e) => {
                failure.get_or_insert(e);
                None
            }
        },
        Ok(None) => None,
        Err(e) => {
            failure.get_or_insert(e);
            None
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    config.map_err(PyValueError::new_err)
}

/// Every setting's name and default, in declaration order: `pyo3mq.BrokerConfig` takes
/// its defaults from here, so they are written once (src/broker/config.rs).
#[pyfunction]
fn config_defaults(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let dict = PyDict::new(py);
    for (name, value) in Config::defaults() {
        dict.set_item(name, from_py(&value, py)?)?;
    }
    Ok(dict)
}

/// Checks a complete set of settings the way the broker will read them (types, bounds,
/// settings that need each other); raises `ValueError` naming the setting.
#[pyfunction]
fn check_settings(settings: &Bound<'_, PyDict>) -> PyResult<()> {
    config_from(settings).map(|_| ())
}

/// Reads the files the settings name (password file, ACL file, TLS certificates and
/// keys) as a start would, without starting anything; returns one message per problem.
#[pyfunction]
fn check_config_files(py: Python<'_>, settings: &Bound<'_, PyDict>) -> PyResult<Vec<String>> {
    let config = config_from(settings)?;
    Ok(py.detach(move || check_files(&config)))
}

struct Running {
    server: Server,
    bridge: Option<PyBridge>,
    /// In-process subscriptions by id.
    subscriptions: Vec<(u64, Arc<Session>)>,
}

/// The Rust broker: its own threads, sockets and state. `pyo3mq.Broker` wraps it.
#[pyclass(frozen, module = "pyo3mq._pyo3mq")]
pub struct BrokerCore {
    config: Config,
    store: Arc<dyn SessionStore>,
    running: Mutex<Option<Running>>,
}

impl BrokerCore {
    /// The running broker's router, or the error every call on a stopped broker gets.
    fn router(&self) -> PyResult<Arc<Router>> {
        self.running
            .lock()
            .as_ref()
            .map(|r| r.server.router().clone())
            .ok_or_else(|| PyRuntimeError::new_err("the broker is not running"))
    }
}

#[pymethods]
impl BrokerCore {
    #[new]
    fn new(settings: &Bound<'_, PyDict>) -> PyResult<Self> {
        let config = config_from(settings)?;
        let store =
            open_store(&config.session_store).map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(BrokerCore {
            config,
            store,
            running: Mutex::new(None),
        })
    }

    /// Binds the listeners and starts serving; returns the bound (host, port) pairs.
    /// With `event_loop` and `dispatch`, the hooks named in `wanted` call into Python:
    /// `dispatch(batch)` is scheduled on `event_loop` with `call_soon_threadsafe`.
    #[pyo3(signature = (
        event_loop=None, dispatch=None, auth=false, authorize=false, events=false,
        intercept=false, track_changes=false, enhanced_auth=Vec::new()
    ))]
    // One flag per hook kind, mirroring the Python call; a struct would only move them.
    #[allow(clippy::too_many_arguments)]
    fn start(
        &self,
        py: Python<'_>,
        event_loop: Option<Py<PyAny>>,
        dispatch: Option<Py<PyAny>>,
        auth: bool,
        authorize: bool,
        events: bool,
        intercept: bool,
        track_changes: bool,
        enhanced_auth: Vec<String>,
    ) -> PyResult<Vec<(String, u16)>> {
        if self.running.lock().is_some() {
            return Err(MqttError::new_err("the broker is already running"));
        }
        let wanted = Wanted {
            auth,
            authorize,
            events,
            intercept,
        };
        let bridge = match (event_loop, dispatch) {
            (Some(event_loop), Some(dispatch)) => Some(PyBridge::start(event_loop, dispatch)?),
            _ => None,
        };
        let mut hooks = Hooks::default();
        if let Some(bridge) = &bridge {
            if wanted.auth {
                hooks.authenticator = Some(Arc::new(bridge.clone()));
            }
            if wanted.authorize {
                hooks.authorizer = Some(Arc::new(bridge.clone()));
            }
            if wanted.events {
                hooks.events = Some(Arc::new(bridge.clone()));
            }
            if wanted.intercept {
                hooks.interceptor = Some(Arc::new(bridge.clone()));
            }
            // The MQTT 5.0 Authentication Methods Python implements.
            if !enhanced_auth.is_empty() {
                hooks.enhanced_authenticator = Some(Arc::new(
                    crate::python::bridge::enhanced_auth::PyEnhancedAuth::new(
                        bridge.clone(),
                        enhanced_auth,
                    ),
                ));
            }
        }
        let config = self.config.clone();
        let store = self.store.clone();
        // Started without holding `running`: a thread reading `stats()` meanwhile holds the
        // interpreter and waits for that lock, while starting may wait for the interpreter.
        let server = py
            .detach(move || Server::start(config, hooks, store, track_changes))
            .map_err(to_pyerr)?;
        let mut slot = self.running.lock();
        if slot.is_some() {
            drop(slot);
            py.detach(move || drop(server));
            return Err(MqttError::new_err("the broker is already running"));
        }
        let addresses = server
            .addresses()
            .iter()
            .map(|a| (a.ip().to_string(), a.port()))
            .collect();
        *slot = Some(Running {
            server,
            bridge,
            subscriptions: Vec::new(),
        });
        Ok(addresses)
    }

    /// Stops gracefully: closes connections, keeps persistent sessions for a restart.
    fn stop(&self, py: Python<'_>) {
        let running = self.running.lock().take();
        if let Some(mut running) = running {
            for (_, session) in running.subscriptions.drain(..) {
                running.server.router().release(&session);
            }
            py.detach(move || {
                running.server.stop();
                // Dropping the last bridge ends the dispatch thread.
                drop(running.bridge);
            });
        }
    }

    /// Brings the durable session store up to date now; None when there is none (the
    /// in-memory store), else whether the write succeeded. The write runs on the calling
    /// thread with the interpreter released.
    fn save(&self, py: Python<'_>) -> PyResult<Option<bool>> {
        let router = self.router()?;
        let store = self.store.clone();
        Ok(py.detach(move || save_now(&router, store.as_ref())))
    }

    #[getter]
    fn running(&self) -> bool {
        self.running.lock().is_some()
    }

    /// Reads the TLS listeners' certificate, key and CA files again (with the
    /// interpreter released); new connections use them, open ones are not touched. All
    /// or nothing: a bad file raises `ValueError` naming it and nothing changes. Returns
    /// the number of TLS listeners reloaded.
    fn reload_tls(&self, py: Python<'_>) -> PyResult<usize> {
        let slot = self.running.lock();
        let running = slot
            .as_ref()
            .ok_or_else(|| PyRuntimeError::new_err("the broker is not running"))?;
        py.detach(|| running.server.reload_tls()).map_err(to_pyerr)
    }

    /// Reads the password file, the ACL file and the TLS certificate files again
    /// (`Server::reload`, with the interpreter released): the parts reloaded, the parts
    /// that failed with why (they keep what they had), and the number of TLS listeners
    /// reloaded; `pyo3mq.Broker.reload()` turns failures into `ReloadError`.
    fn reload(&self, py: Python<'_>) -> PyResult<ReloadReport> {
        let slot = self.running.lock();
        let running = slot
            .as_ref()
            .ok_or_else(|| PyRuntimeError::new_err("the broker is not running"))?;
        Ok(py.detach(|| running.server.reload()).into())
    }

    /// Messages dropped by full session queues since the broker started.
    #[getter]
    fn dropped_messages(&self) -> u64 {
        self.running
            .lock()
            .as_ref()
            .map_or(0, |r| r.server.router().dropped_messages())
    }

    /// The `$SYS` figures now, by name (`clients_connected`, ...), and `events_dropped`
    /// (in `$SYS` as `pyo3mq/events/dropped`, apart from Mosquitto's names); empty when
    /// stopped.
    fn stats(&self) -> Vec<(String, u64)> {
        self.running.lock().as_ref().map_or_else(Vec::new, |r| {
            let router = r.server.router();
            let mut stats: Vec<(String, u64)> = crate::broker::sys_topics::figures(router)
                .iter()
                .map(|(name, value)| (name.replace(['/', ' '], "_"), *value))
                .collect();
            stats.push(("events_dropped".to_string(), router.events_dropped()));
            let (parked, parks) = router.counters().parked_connections();
            stats.push(("connections_parked".to_string(), parked));
            stats.push(("connection_parks".to_string(), parks));
            stats
        })
    }

    /// The figures in the Prometheus text format (what `metrics_listener` serves at
    /// `/metrics`); empty when stopped. Rendered with the interpreter released.
    fn metrics_text(&self, py: Python<'_>) -> String {
        let router = self
            .running
            .lock()
            .as_ref()
            .map(|r| r.server.router().clone());
        match router {
            Some(router) => py.detach(move || crate::broker::http::prometheus::render(&router)),
            None => String::new(),
        }
    }

    /// The metrics listener's bound (host, port), if `metrics_listener` is set and the
    /// broker runs.
    #[getter]
    fn metrics_address(&self) -> Option<(String, u16)> {
        self.running
            .lock()
            .as_ref()
            .and_then(|r| r.server.metrics_address())
            .map(|a| (a.ip().to_string(), a.port()))
    }

    /// Counts a Python hook call: `seconds` it took (None: not timed here, the broker
    /// times its calls itself) and whether it failed (raised, or answered with a value
    /// that cannot be used).
    #[pyo3(signature = (kind, seconds=None, failed=false))]
    fn hook_called(&self, kind: PyHookKind, seconds: Option<f64>, failed: bool) -> PyResult<()> {
        let kind = HookKind::from(kind);
        let Ok(router) = self.router() else {
            return Ok(()); // stopped: nothing to count into
        };
        let counters = router.counters();
        if let Some(seconds) = seconds {
            let took = std::time::Duration::try_from_secs_f64(seconds)
                .map_err(|e| PyValueError::new_err(format!("seconds: {e}")))?;
            counters.hook_called(kind, took);
        }
        if failed {
            counters.hook_failed(kind);
        }
        Ok(())
    }

    /// Routes a message as if a client had published it (no socket involved). The
    /// `Routed` answer carries a `space_token` when a flow-controlled subscription is full
    /// and the caller `wait`s: a `SpaceFreed` record with that token says when it has
    /// drained below its high water mark. A caller that does not wait (another thread or
    /// event loop) gets no token: a waiter per message nobody awaits would pile up tasks
    /// and then flood the control lane with "space" notices; its excess is dropped and
    /// counted at the queue's hard limit instead. `properties` (MQTT 5.0) are encoded
    /// here, once, and go to 5.0 subscribers.
    #[pyo3(signature = (topic, payload, qos=0, retain=false, properties=None, wait=false))]
    #[allow(clippy::too_many_arguments)]
    fn publish(
        &self,
        py: Python<'_>,
        topic: &str,
        payload: &[u8],
        qos: u8,
        retain: bool,
        properties: Option<&Bound<'_, MessageProperties>>,
        wait: bool,
    ) -> PyResult<Py<Routed>> {
        topic::validate_topic_name(topic).map_err(|e| PyValueError::new_err(e.to_string()))?;
        let qos =
            QoS::from_u8(qos).ok_or_else(|| PyValueError::new_err("qos must be 0, 1 or 2"))?;
        let properties = match properties {
            Some(p) => {
                p.get().check_payload(payload)?;
                p.get()
                    .to_wire()?
                    .map(crate::broker::session::MessageProperties::new)
            }
            None => None,
        };
        let router = self.router()?;
        let msg = Arc::new(Message {
            topic: ByteString::from(topic),
            payload: Bytes::copy_from_slice(payload),
            qos,
            retain,
            publisher: ByteString::new(),
            properties,
            mark: crate::broker::session::StreamMark::NONE,
        });
        let mut scratch = MatchScratch::default();
        py.detach(|| router.publish(msg, &mut scratch));
        if !wait || !scratch.has_blocked() {
            return Routed::delivered(py);
        }
        // A flow-controlled subscription is full: the caller waits for a "space" event
        // (`SpaceFreed`) carrying this token, as an MQTT publisher would wait for its PUBACK.
        let slot = self.running.lock();
        let Some(running) = slot.as_ref() else {
            return Routed::delivered(py); // stopped meanwhile: nobody will drain, nothing to wait for
        };
        let Some(bridge) = running.bridge.clone() else {
            return Routed::delivered(py);
        };
        let token = router.next_id();
        running.server.spawn(bridge.wait_for_space(scratch, token));
        Routed::waiting(py, token)
    }

    /// Subscribes the process itself to `filter`. Matching messages wait in the returned
    /// feed, at most `max_buffered` of them (the oldest dropped beyond, and counted), until
    /// the consumer takes them; a `MessagesReady` record through the dispatch hook says
    /// when there are some. With `flow_control` nothing is dropped: publishers wait while
    /// the backlog exceeds `max_buffered`.
    #[pyo3(signature = (filter, qos, max_buffered=100_000, flow_control=false))]
    fn subscribe(
        &self,
        filter: &str,
        qos: u8,
        max_buffered: usize,
        flow_control: bool,
    ) -> PyResult<SubscriptionFeed> {
        if max_buffered == 0 {
            return Err(PyValueError::new_err("max_buffered must be at least 1"));
        }
        let qos =
            QoS::from_u8(qos).ok_or_else(|| PyValueError::new_err("qos must be 0, 1 or 2"))?;
        let mut slot = self.running.lock();
        let running = slot
            .as_mut()
            .ok_or_else(|| PyRuntimeError::new_err("the broker is not running"))?;
        let bridge = running.bridge.clone().ok_or_else(|| {
            PyRuntimeError::new_err("in-process subscriptions need a broker started from asyncio")
        })?;
        let router = running.server.router().clone();
        let id = router.next_id();
        let session = router.internal_session(
            &format!("$internal/{id}"),
            flow_control.then_some(max_buffered),
        );
        let feed = Feed::new(id, max_buffered, flow_control);
        router
            .subscribe(&session, &ByteString::from(filter), qos)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        running
            .server
            .spawn(bridge.forward(feed.clone(), session.clone()));
        running.subscriptions.push((id, session));
        Ok(SubscriptionFeed::new(feed))
    }

    /// Replaces the stored state the next `start()` loads (for Python session stores):
    /// `pyo3mq.SessionRecord`s and `pyo3mq.RetainedRecord`s, as the store loaded them.
    fn seed(&self, sessions: Vec<SessionRecord>, retained: Vec<RetainedRecord>) -> PyResult<()> {
        if self.running.lock().is_some() {
            return Err(MqttError::new_err("seed() must come before start()"));
        }
        let state = StoredState {
            sessions: sessions
                .into_iter()
                .map(SessionRecord::into_snapshot)
                .collect::<PyResult<_>>()?,
            retained: retained
                .into_iter()
                .map(RetainedRecord::into_message)
                .collect::<PyResult<_>>()?,
        };
        self.store
            .save(state)
            .map_err(|e| PyRuntimeError::new_err(e.to_string()))
    }

    /// What changed since the last call (for a broker started with `track_changes`):
    /// `(ended client ids, changed sessions, retained set, retained topics cleared)`, the
    /// sessions as `pyo3mq.SessionRecord`s and the retained messages as
    /// `pyo3mq.RetainedRecord`s; None when stopped or not recording. Taken changes are
    /// forgotten here: a caller that cannot store them must fall back to `snapshot()`.
    #[allow(clippy::type_complexity)]
    fn take_changes<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<
        Option<(
            Vec<String>,
            Vec<Bound<'py, PyAny>>,
            Vec<Bound<'py, PyAny>>,
            Vec<String>,
        )>,
    > {
        let Some(router) = self
            .running
            .lock()
            .as_ref()
            .map(|r| r.server.router().clone())
            .filter(|router| router.is_tracking())
        else {
            return Ok(None);
        };
        let changes = py.detach(move || router.take_changes());
        let mut set = Vec::new();
        let mut cleared = Vec::new();
        for (topic, msg) in changes.retained {
            match msg {
                Some(m) => set.push(retained_record(py, &m)?),
                None => cleared.push(topic.to_string()),
            }
        }
        Ok(Some((
            changes
                .removed_sessions
                .iter()
                .map(|id| id.to_string())
                .collect(),
            changes
                .sessions
                .iter()
                .map(|s| session_record(py, s))
                .collect::<PyResult<_>>()?,
            set,
            cleared,
        )))
    }

    /// The persistent sessions (`pyo3mq.SessionRecord`) and retained messages
    /// (`pyo3mq.RetainedRecord`): live while running, else as saved at the last stop.
    #[allow(clippy::type_complexity)]
    fn snapshot<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(Vec<Bound<'py, PyAny>>, Vec<Bound<'py, PyAny>>)> {
        let router = self
            .running
            .lock()
            .as_ref()
            .map(|r| r.server.router().clone());
        let store = self.store.clone();
        let state = py
            .detach(move || match router {
                Some(router) => {
                    let live = MemoryStore::default();
                    router.save_to(&live);
                    live.load()
                }
                None => store.load(),
            })
            .map_err(|e| MqttError::new_err(e.to_string()))?;
        Ok((
            state
                .sessions
                .iter()
                .map(|s| session_record(py, s))
                .collect::<PyResult<_>>()?,
            state
                .retained
                .iter()
                .map(|m| retained_record(py, m))
                .collect::<PyResult<_>>()?,
        ))
    }

    /// Ends an in-process subscription.
    fn unsubscribe(&self, id: u64) {
        let mut slot = self.running.lock();
        if let Some(running) = slot.as_mut() {
            if let Some(i) = running.subscriptions.iter().position(|(sid, _)| *sid == id) {
                let (_, session) = running.subscriptions.swap_remove(i);
                running.server.router().release(&session);
            }
        }
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<BrokerCore>()?;
    m.add_class::<Routed>()?;
    m.add_class::<ReloadReport>()?;
    m.add_class::<PyHookKind>()?;
    m.add_function(wrap_pyfunction!(config_defaults, m)?)?;
    m.add_function(wrap_pyfunction!(check_settings, m)?)?;
    m.add_function(wrap_pyfunction!(check_config_files, m)?)
}
