//! The broker's runtime: listeners, the accept loop, and graceful shutdown.
//!
//! A `Server` owns its own tokio runtime, so Python (or a Rust caller) only starts and
//! stops it; sockets, the codec and routing never touch the caller's threads. Shutdown is
//! a broadcast (a `watch` flag) that every task selects on, and completion is observed
//! through an mpsc channel whose senders the connection tasks hold (mini-redis's scheme):
//! when the last one is dropped, every connection has flushed, published its will and
//! detached from its session, and the sessions can be saved.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{error, info, warn};

use crate::broker::bridge;
use crate::broker::cluster::{self, ClusterError, RouterCluster};
use crate::broker::config::{
    AnonymousPolicy, Config, Durability, ListenerKind, StoreLoadError, TlsSettings,
};
use crate::broker::connection::{refuse_busy, Connection};
use crate::broker::hooks::{AclFile, Authenticator, Authorizer, Hooks, PasswordFile, Reloadable};
use crate::broker::http;
use crate::broker::metrics::TransportKind;
use crate::broker::router::Router;
use crate::broker::store::{SessionStore, StoreError, StoredState};
use crate::broker::sys_topics;
use crate::broker::transport::{self, SharedAcceptor, TlsAcceptor};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot listen on {uri}: {source}")]
    Bind { uri: String, source: std::io::Error },
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    /// The session store cannot be read: starting empty would overwrite it at the next
    /// save (see `store_load_error`).
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Cluster(#[from] ClusterError),
}

/// An authorizer [`Server::reload`] can replace while connections use it.
type SharedAuthorizer = Arc<Reloadable<dyn Authorizer>>;

pub struct Server {
    runtime: Option<Runtime>,
    router: Arc<Router>,
    store: Arc<dyn SessionStore>,
    addresses: Vec<SocketAddr>,
    /// The metrics listener's address and what it serves, when `metrics_listener` is set.
    metrics: Option<(SocketAddr, Arc<http::State>)>,
    /// Each TLS listener's settings and the acceptor its new connections use.
    tls: Vec<(TlsSettings, SharedAcceptor)>,
    /// The `password_file` and the authenticator it became, for [`Server::reload`].
    password_file: Option<(String, Arc<Reloadable<dyn Authenticator>>)>,
    /// The authorizer, and the `acl_file` it was read from (`None`: code supplied it).
    authorizer: Option<(Option<String>, SharedAuthorizer)>,
    shutdown: watch::Sender<bool>,
    /// Dropped at stop; `all_done` then yields `None` once every task has ended.
    done_tx: Option<mpsc::Sender<()>>,
    all_done: mpsc::Receiver<()>,
}

impl Server {
    /// Binds every listener and starts serving; returns once the sockets are listening.
    /// `track_changes`: record what changes for a caller that saves it itself (a Python
    /// session store reads it with [`Router::take_changes`]).
    pub fn start(
        config: Config,
        mut hooks: Hooks,
        store: Arc<dyn SessionStore>,
        track_changes: bool,
    ) -> Result<Server, ServerError> {
        config.validate().map_err(ServerError::Config)?;
        // Before the workers allocate: messages freed across workers (session/alloc.rs).
        crate::broker::session::widen_fast_bins();
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.enable_all().thread_name("pyo3mq-worker");
        if config.worker_threads > 0 {
            builder.worker_threads(config.worker_threads);
        }
        let runtime = builder.build().map_err(ServerError::Runtime)?;
        // The health listener comes first, so that a long store load shows as "alive, not
        // ready" (dropping the runtime closes it if the start fails below).
        let metrics = match &config.metrics_listener {
            Some(uri) => Some(start_metrics_listener(&runtime, uri, &config)?),
            None => None,
        };
        // Before any MQTT listener is bound: a store that cannot be read stops the start
        // here, with nothing written.
        let stored = load_store(store.as_ref(), config.store_load_error)?;

        let mut listeners = Vec::new();
        let mut tls = Vec::new();
        for spec in config.listener_specs().map_err(ServerError::Config)? {
            // Certificates are read before anything listens: a bad file fails the start.
            let acceptor = match &spec.tls {
                Some(settings) => {
                    let acceptor = TlsAcceptor::new(settings).map_err(ServerError::Config)?;
                    let shared: SharedAcceptor =
                        Arc::new(parking_lot::RwLock::new(Arc::new(acceptor)));
                    tls.push((settings.clone(), shared.clone()));
                    Some(shared)
                }
                None => None,
            };
            let listener = runtime
                .block_on(TcpListener::bind(&spec.addr))
                .map_err(|source| ServerError::Bind {
                    uri: spec.uri.clone(),
                    source,
                })?;
            listeners.push((listener, spec.kind, acceptor));
        }
        // A bridge's certificate files too: a bad one fails the start naming it.
        for settings in &config.bridge {
            bridge::check(settings, config.max_packet_size).map_err(ServerError::Config)?;
        }
        let addresses: Vec<SocketAddr> = listeners
            .iter()
            .filter_map(|(l, _, _)| l.local_addr().ok())
            .collect();

        // The config file's password and ACL files, unless code supplied its own hooks.
        // Both are held swappable, for `reload()`; so is a supplied authorizer, whose
        // rules may change too (a reload then makes connections ask it again).
        let mut password_file = None;
        if let (Some(path), None) = (&config.password_file, &hooks.authenticator) {
            let file = PasswordFile::load(path).map_err(ServerError::Config)?;
            let hook = Arc::new(Reloadable::<dyn Authenticator>::new(Arc::new(file)));
            hooks.authenticator = Some(hook.clone());
            password_file = Some((path.clone(), hook));
        }
        let authorizer = match (hooks.authorizer.take(), &config.acl_file) {
            (Some(supplied), _) => Some((None, supplied)),
            (None, Some(path)) => {
                let file: Arc<dyn Authorizer> =
                    Arc::new(AclFile::load(path).map_err(ServerError::Config)?);
                Some((Some(path.clone()), file))
            }
            (None, None) => None,
        }
        .map(|(path, hook)| (path, Arc::new(Reloadable::new(hook))));
        if let Some((_, hook)) = &authorizer {
            hooks.authorizer = Some(hook.clone());
        }
        let has_authenticator = hooks.authenticator.is_some();
        let router = Arc::new(Router::new(config.clone(), hooks));
        let saves_while_running =
            config.durability == Durability::Sync || !config.persist_interval.is_zero();
        let durable = config.session_store.is_durable();
        if track_changes || (durable && saves_while_running) {
            // A durable store is kept up to date with what changed, not rewritten whole.
            // (Saved only at stop, it is written whole then, and nothing is recorded.)
            router.track_changes();
        }
        router.restore(stored);
        let (shutdown, _) = watch::channel(false);
        if config.cluster.is_some() {
            // Before any client is accepted: the engine is checked and the retained
            // messages are read, or the start fails here.
            let cluster = runtime.block_on(cluster::start(
                &config.cluster_settings(),
                router.clone(),
                shutdown.subscribe(),
            ))?;
            router.set_cluster(cluster);
        }
        if let Some(limit) = config.persistent_client_expiration {
            // Sessions that were offline too long when the broker stopped end before any
            // client can resume them.
            router.expire_offline(limit);
            // Checked on a timer (a session may outlive its limit by up to one period),
            // never per message.
            let period = (limit / 10).clamp(Duration::from_millis(100), Duration::from_secs(60));
            let router = router.clone();
            runtime.spawn(every_period(period, shutdown.subscribe(), move || {
                router.expire_offline(limit);
            }));
        }
        {
            // MQTT 5.0 Session Expiry Intervals are whole seconds: checked every second
            // (a no-op until a 5.0 client asks for one), and once now, so a session that
            // expired while the broker was stopped ends before a client can resume it.
            router.expire_sessions_v5();
            let router = router.clone();
            runtime.spawn(every_period(
                Duration::from_secs(1),
                shutdown.subscribe(),
                move || {
                    router.expire_sessions_v5();
                },
            ));
        }
        let (done_tx, all_done) = mpsc::channel(1);
        let permits = Arc::new(Semaphore::new(config.max_connections));
        if config.durability == Durability::Sync && durable {
            let (tx, rx) = mpsc::channel(1024);
            router.set_sync_writer(tx);
            runtime.spawn(write_on_demand(router.clone(), store.clone(), rx));
        }
        if !config.persist_interval.is_zero() && durable {
            let (router, store) = (router.clone(), store.clone());
            runtime.spawn(every_period(
                config.persist_interval,
                shutdown.subscribe(),
                move || {
                    router.persist(store.as_ref());
                },
            ));
        }
        if !config.sys_interval.is_zero() {
            runtime.spawn(sys_topics::publish_periodically(
                router.clone(),
                config.sys_interval,
                shutdown.subscribe(),
            ));
        }
        for settings in &config.bridge {
            runtime.spawn(bridge::run(
                settings.clone(),
                router.clone(),
                shutdown.subscribe(),
                done_tx.clone(),
            ));
        }
        for (listener, kind, acceptor) in listeners {
            let mut anonymous = AnonymousPolicy::Refuse;
            if let Ok(addr) = listener.local_addr() {
                info!("listening on {addr} ({})", kind_name(&kind));
                anonymous = config.anonymous_policy(has_authenticator, addr.ip().is_loopback());
                log_anonymous_policy(&config, addr, anonymous);
            }
            let listening = Listening {
                listener,
                kind,
                tls: acceptor,
                anonymous,
            };
            runtime.spawn(accept_loop(
                listening,
                router.clone(),
                permits.clone(),
                shutdown.subscribe(),
                done_tx.clone(),
            ));
        }
        if let Some((_, state)) = &metrics {
            let _ = state.router.set(router.clone());
            state.ready.store(true, Ordering::Relaxed);
        }
        Ok(Server {
            runtime: Some(runtime),
            router,
            store,
            addresses,
            metrics,
            tls,
            password_file,
            authorizer,
            shutdown,
            done_tx: Some(done_tx),
            all_done,
        })
    }

    pub fn addresses(&self) -> &[SocketAddr] {
        &self.addresses
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served, if `metrics_listener` is set.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(addr, _)| *addr)
    }

    /// Runs a task on the broker's runtime (stopped with the broker).
    pub fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        if let Some(runtime) = &self.runtime {
            runtime.spawn(task);
        }
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// Reads every TLS listener's certificate, key and CA file again; new handshakes use
    /// them, connections already up are not touched. All or nothing: if one listener's
    /// files fail, the error names the file and every listener keeps what it had.
    /// Returns how many listeners were reloaded.
    pub fn reload_tls(&self) -> Result<usize, ServerError> {
        let fresh = self
            .tls
            .iter()
            .map(|(settings, _)| TlsAcceptor::new(settings).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ServerError::Config)?;
        for ((_, shared), acceptor) in self.tls.iter().zip(fresh) {
            *shared.write() = acceptor;
        }
        info!(
            "TLS certificates reloaded for {} listener(s)",
            self.tls.len()
        );
        Ok(self.tls.len())
    }

    /// SIGHUP's work: reads the `password_file`, the `acl_file` and the TLS listeners'
    /// certificate files again and puts each in place, keeping every connection. Each
    /// part stands alone: one that cannot be read or parsed keeps what it had, logs
    /// why, and is listed in [`ReloadReport::failed`]; the others are still reloaded.
    /// Open connections keep their login; the new ACL applies to their next SUBSCRIBE
    /// and PUBLISH (their cached publish decisions are dropped). With an authorizer
    /// supplied by code, a reload makes connections ask it again. Blocks the calling
    /// thread while it reads the files (call it from a caller's thread).
    pub fn reload(&self) -> ReloadReport {
        let mut report = ReloadReport::default();
        if let Some((path, hook)) = &self.password_file {
            match PasswordFile::load(path) {
                Ok(file) => {
                    info!(
                        "password file {path} reloaded: {} user(s)",
                        file.user_count()
                    );
                    hook.replace(Arc::new(file));
                    report.reloaded.push(RELOAD_PASSWORD_FILE);
                }
                Err(err) => {
                    error!("not reloaded, the previous users stay: {err}");
                    report.failed.push((RELOAD_PASSWORD_FILE, err));
                }
            }
        }
        match &self.authorizer {
            Some((Some(path), hook)) => match AclFile::load(path) {
                Ok(file) => {
                    hook.replace(Arc::new(file));
                    info!("ACL file {path} reloaded; connections are checked against it from their next publish and subscribe");
                    report.reloaded.push(RELOAD_ACL_FILE);
                }
                Err(err) => {
                    error!("not reloaded, the previous rules stay: {err}");
                    report.failed.push((RELOAD_ACL_FILE, err));
                }
            },
            Some((None, hook)) => hook.invalidate(),
            None => {}
        }
        if !self.tls.is_empty() {
            match self.reload_tls() {
                Ok(count) => {
                    report.tls_listeners = count;
                    report.reloaded.push(RELOAD_TLS);
                }
                Err(err) => {
                    let err = match err {
                        ServerError::Config(msg) => msg,
                        other => other.to_string(),
                    };
                    error!("TLS certificates not reloaded, the previous ones stay: {err}");
                    report.failed.push((RELOAD_TLS, err));
                }
            }
        }
        report
    }

    /// Stops accepting, closes every connection after flushing what it has pending, saves
    /// persistent sessions and retained messages to the store, and ends the runtime.
    /// Blocks the calling thread (Python calls it with the GIL released).
    pub fn stop(&mut self) {
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        if let Some((_, state)) = &self.metrics {
            // Not ready from now on; `/healthz` and `/metrics` answer until the runtime ends.
            state.ready.store(false, Ordering::Relaxed);
        }
        let _ = self.shutdown.send(true);
        // Parked connections do not watch the channel: their takeover signal wakes them.
        self.router.kick_all();
        self.done_tx.take();
        let all_done = &mut self.all_done;
        let finished = runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), all_done.recv())
                .await
                .is_ok()
        });
        if !finished {
            error!("connections did not close within 10 s; stopping anyway");
        }
        // MQTT 5.0 wills still waiting out their Will Delay Interval go now.
        runtime.block_on(self.router.wills().publish_all_now(Duration::from_secs(5)));
        if let Some(cluster) = self.router.cluster() {
            // The wills of the connections just closed go to the other nodes.
            runtime.block_on(cluster::flush_on_stop(cluster));
        }
        if !self.router.config().session_store.is_durable() {
            // The in-process copy (for a restart of this object, or read by a Python store
            // after stop) is written whole: a Python store took the changes along the way.
            self.router.save_to(self.store.as_ref());
        } else {
            self.router.persist(self.store.as_ref());
        }
        runtime.shutdown_timeout(Duration::from_secs(1));
        info!("broker stopped");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads every file `config` names the way a start (and a reload) reads them: the
/// password file, the ACL file and each TLS listener's certificate, key and CA files.
/// Returns one message per problem, each naming the file; empty when all are good.
/// (`pyo3mq check-config` runs this; it binds nothing and opens no session store.)
pub fn check_files(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(path) = &config.password_file {
        if let Err(err) = PasswordFile::load(path) {
            problems.push(err);
        }
    }
    if let Some(path) = &config.acl_file {
        if let Err(err) = AclFile::load(path) {
            problems.push(err);
        }
    }
    match config.listener_specs() {
        Ok(specs) => {
            for spec in specs {
                if let Some(settings) = &spec.tls {
                    if let Err(err) = TlsAcceptor::new(settings) {
                        problems.push(format!("listener {}: {err}", spec.uri));
                    }
                }
            }
        }
        Err(err) => problems.push(err),
    }
    for settings in &config.bridge {
        if let Err(err) = bridge::check(settings, config.max_packet_size) {
            problems.push(err);
        }
    }
    problems
}

/// What [`Server::reload`] names the password file in its report.
pub const RELOAD_PASSWORD_FILE: &str = "password_file";
/// ...the ACL file...
pub const RELOAD_ACL_FILE: &str = "acl_file";
/// ...and the TLS listeners' certificate, key and CA files.
pub const RELOAD_TLS: &str = "tls";

/// What a [`Server::reload`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// The parts read again and put in place, in the order `password_file`, `acl_file`,
    /// `tls`; a part the broker was not configured with is not listed.
    pub reloaded: Vec<&'static str>,
    /// The parts that could not be, each with why; they keep what they had.
    pub failed: Vec<(&'static str, String)>,
    /// TLS listeners whose certificates were reloaded.
    pub tls_listeners: usize,
}

/// Binds the metrics and health listener and serves it on `runtime`.
fn start_metrics_listener(
    runtime: &Runtime,
    uri: &str,
    config: &Config,
) -> Result<(SocketAddr, Arc<http::State>), ServerError> {
    let addr = crate::broker::config::parse_metrics_listener(uri)
        .map_err(|e| ServerError::Config(format!("metrics_listener: {e}")))?;
    let bind_error = |source| ServerError::Bind {
        uri: uri.to_string(),
        source,
    };
    let listener = runtime
        .block_on(TcpListener::bind(&addr))
        .map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    let state = Arc::new(http::State::default());
    runtime.spawn(http::serve(listener, state.clone(), config.connect_timeout));
    info!("serving metrics and health probes on http://{local} (/metrics, /healthz, /readyz)");
    Ok((local, state))
}

/// What the store holds; when it cannot be read, either the error (`Refuse`) or, for
/// `StartEmpty`, nothing, once the unreadable store has been moved aside.
fn load_store(
    store: &dyn SessionStore,
    on_error: StoreLoadError,
) -> Result<StoredState, StoreError> {
    match store.load() {
        Ok(state) => Ok(state),
        Err(err) if on_error == StoreLoadError::StartEmpty => {
            let kept = store.set_aside()?;
            let kept = kept.map_or_else(String::new, |to| {
                format!("; it was moved to {}", to.display())
            });
            error!("{err}; starting with no stored sessions (store_load_error = \"start_empty\"){kept}");
            Ok(StoredState::default())
        }
        Err(err) => Err(err),
    }
}

/// Says at start what a listener does with clients that send no username, and when it
/// refuses them by default, how to change that.
fn log_anonymous_policy(config: &Config, addr: SocketAddr, policy: AnonymousPolicy) {
    match (policy, config.allow_anonymous) {
        (AnonymousPolicy::Refuse, None) => warn!(
            "listener {addr} is not on loopback and has no password_file or authenticator: \
             clients without a username are refused (CONNACK 0x05); set \
             allow_anonymous = true to allow them, or a password_file or authenticator to \
             check them"
        ),
        (AnonymousPolicy::Refuse, Some(_)) => info!(
            "listener {addr}: clients without a username are refused (allow_anonymous = false)"
        ),
        (AnonymousPolicy::Allow, Some(true)) if !addr.ip().is_loopback() => info!(
            "listener {addr}: clients without a username are allowed (allow_anonymous = true)"
        ),
        _ => {}
    }
}

/// Brings a durable store up to date now, outside the periodic schedule (the `pyo3mq`
/// command does this on SIGUSR1, as Mosquitto writes its persistence file). `None` with
/// the in-memory store, which has nothing durable to write. Blocks the calling thread
/// for the write: call it from a caller's thread, never from a broker task.
pub fn save_now(router: &Router, store: &dyn SessionStore) -> Option<bool> {
    if !router.config().session_store.is_durable() {
        return None;
    }
    // A failing store logs its own error; this line says what asked for the save.
    let saved = router.persist(store);
    if saved {
        info!("session store saved on request");
    }
    Some(saved)
}

fn transport_kind(kind: &ListenerKind) -> TransportKind {
    match kind {
        ListenerKind::Tcp => TransportKind::Tcp,
        ListenerKind::Tls => TransportKind::Tls,
        ListenerKind::Ws(_) => TransportKind::Ws,
        ListenerKind::Wss(_) => TransportKind::Wss,
    }
}

fn kind_name(kind: &ListenerKind) -> String {
    match kind {
        ListenerKind::Tcp => "MQTT".into(),
        ListenerKind::Tls => "MQTT over TLS".into(),
        ListenerKind::Ws(path) => format!("MQTT over WebSocket on {path}"),
        ListenerKind::Wss(path) => format!("MQTT over secure WebSocket on {path}"),
    }
}

/// A bound listener and how its connections are served.
struct Listening {
    listener: TcpListener,
    kind: ListenerKind,
    /// The TLS acceptor of `tls://` and `wss://` listeners.
    tls: Option<SharedAcceptor>,
    anonymous: AnonymousPolicy,
}

async fn accept_loop(
    listening: Listening,
    router: Arc<Router>,
    permits: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
    done: mpsc::Sender<()>,
) {
    let Listening {
        listener,
        kind,
        tls,
        anonymous,
    } = listening;
    let transport = transport_kind(&kind);
    loop {
        let accepted = tokio::select! {
            res = listener.accept() => res,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                // Out of file descriptors, typically: back off instead of spinning.
                error!("accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if kind == ListenerKind::Tcp {
                let max_packet_size = router.config().max_packet_size;
                tokio::spawn(refuse_busy(stream, peer, max_packet_size));
            } else {
                // A CONNACK would need the handshake first: spend nothing on it.
                warn!(%peer, "refused connection: max_connections reached");
            }
            continue;
        };
        let shutdown = shutdown.clone();
        let done = done.clone();
        router.counters().connection_opened(transport);
        if kind == ListenerKind::Tcp {
            let connection =
                Connection::new(router.clone(), stream, peer).with_anonymous(anonymous);
            // Not `async move { connection.run(..).await; .. }`: that block would hold the
            // connection twice (captured, and inside the awaited future).
            tokio::spawn(connection.run_holding(
                shutdown,
                (permit, done, OpenConnection::new(router.clone(), transport)),
            ));
            continue;
        }
        // The handshake runs in the connection's task, so a slow peer holds up no one.
        let acceptor = tls.as_ref().map(|shared| shared.read().clone());
        let (router, kind) = (router.clone(), kind.clone());
        tokio::spawn(async move {
            let mut stop = shutdown.clone();
            let limit = router.config().connect_timeout;
            let accepted = tokio::select! {
                t = transport::accept(&kind, stream, peer, acceptor, router.counters(), limit) => t,
                _ = stop.changed() => None,
            };
            let open = OpenConnection::new(router.clone(), transport);
            if let Some(io) = accepted {
                // The guard goes with the connection: a parked one outlives this task.
                Connection::new(router, io, peer)
                    .with_anonymous(anonymous)
                    .run_holding(shutdown, (permit, done, open))
                    .await;
            }
        });
    }
}

/// Runs `work` on the blocking pool every `period` until shutdown, one run at a time.
/// Both periodic jobs (saving a durable store: SQLite writes block; ending expired
/// sessions: a scan of every session) must stay off the async workers, and a run that
/// takes longer than the period is followed by a full period, not by a burst of runs
/// that would keep a blocking thread (and the disk) busy back to back.
async fn every_period(
    period: Duration,
    mut shutdown: watch::Receiver<bool>,
    work: impl Fn() + Clone + Send + 'static,
) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.changed() => return,
        }
        let _ = tokio::task::spawn_blocking(work.clone()).await;
    }
}

/// Group commit for `durability = "sync"`: takes every waiting request, writes one
/// transaction with what changed, which includes all their messages (they were routed
/// before they asked), then answers them all. Requests arriving during a write wait for
/// the next one.
async fn write_on_demand(
    router: Arc<Router>,
    store: Arc<dyn SessionStore>,
    mut requests: mpsc::Receiver<tokio::sync::oneshot::Sender<bool>>,
) {
    let mut waiting = Vec::new();
    while let Some(first) = requests.recv().await {
        waiting.push(first);
        while let Ok(more) = requests.try_recv() {
            waiting.push(more);
        }
        let (router, store) = (router.clone(), store.clone());
        let saved = tokio::task::spawn_blocking(move || router.persist(store.as_ref()))
            .await
            .unwrap_or(false);
        for done in waiting.drain(..) {
            let _ = done.send(saved);
        }
    }
}

/// Counts an accepted connection as open for as long as it is held: the connection task
/// holds it to its end, and its drop counts the close (Prometheus' open-connection gauge).
struct OpenConnection {
    router: Arc<Router>,
    transport: TransportKind,
}

impl OpenConnection {
    fn new(router: Arc<Router>, transport: TransportKind) -> Self {
        Self { router, transport }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.router.counters().connection_closed(self.transport);
    }
}
