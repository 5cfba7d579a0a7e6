//! The metrics and health listener (`metrics_listener = "http://HOST:PORT"`): a small
//! HTTP/1.1 server on the broker's runtime, for Prometheus and for orchestrators' probes.
//!
//! - `GET /metrics`: [`prometheus::render`] (text format 0.0.4);
//! - `GET /healthz`: 200 while the process serves at all;
//! - `GET /readyz`: 200 once the session store is loaded and every MQTT listener is
//!   bound, 503 before that and from the moment a stop begins (so a load balancer stops
//!   sending clients before they are refused), and in cluster mode while the node's
//!   connection to NATS is down;
//! - any other path is 404, any other method 405.
//!
//! One request per connection (`Connection: close`): scrapes are seconds apart, and a
//! server that never keeps a connection has no idle connections to bound. The request
//! head must arrive whole within `connect_timeout` (at most [`MAX_READ_TIME`]) and fit in
//! [`MAX_REQUEST`] bytes; at most [`MAX_CONNECTIONS`] requests are served at once. The
//! request parser is httparse, which the WebSocket listeners already use.

pub mod prometheus;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::timeout;
use tracing::{debug, error};

use crate::broker::cluster::RouterCluster;
use crate::broker::router::Router;

/// Largest request head accepted; a longer one is answered 431 and closed.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Longest a request head may take to arrive (or its response to be taken), whatever
/// `connect_timeout` says: a probe that takes longer is broken.
pub const MAX_READ_TIME: Duration = Duration::from_secs(10);
/// Requests served at once; the next connections wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 32;
/// Most headers parsed in a request.
const MAX_HEADERS: usize = 32;

/// What the listener serves: filled in as the broker starts.
#[derive(Default)]
pub struct State {
    /// Set once the store is loaded (`/metrics` needs it; 503 until then).
    pub router: OnceLock<Arc<Router>>,
    /// True from the end of the start to the beginning of the stop.
    pub ready: AtomicBool,
}

/// Serves until the runtime ends (not at the shutdown signal: `/readyz` answers 503 while
/// connections close).
pub async fn serve(listener: TcpListener, state: Arc<State>, read_time: Duration) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let read_time = read_time.min(MAX_READ_TIME);
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(err) => {
                error!("metrics listener: accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(err) = answer(stream, &state, read_time).await {
                debug!(%peer, "metrics request: {err}");
            }
            drop(permit);
        });
    }
}

/// A response: status line, content type, body.
struct Response {
    status: &'static str,
    content_type: &'static str,
    body: String,
    allow_get: bool,
}

impl Response {
    fn text(status: &'static str, body: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{body}\n"),
            allow_get: false,
        }
    }
}

async fn answer(mut stream: TcpStream, state: &State, read_time: Duration) -> io::Result<()> {
    let response = match timeout(read_time, read_head(&mut stream)).await {
        Err(_) => Response::text("408 Request Timeout", "request not received in time"),
        Ok(Err(err)) => return Err(err),
        Ok(Ok(Head::Closed)) => return Ok(()),
        Ok(Ok(Head::TooLarge)) => Response::text(
            "431 Request Header Fields Too Large",
            "request head larger than 8 KiB",
        ),
        Ok(Ok(Head::Malformed)) => Response::text("400 Bad Request", "malformed request"),
        Ok(Ok(Head::Request { method, path })) => route(&method, &path, state).await,
    };
    let mut head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    if response.allow_get {
        head.push_str("Allow: GET\r\n");
    }
    head.push_str("\r\n");
    timeout(read_time, async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(response.body.as_bytes()).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "response not taken in time"))?
}

fn cluster_down(state: &State) -> bool {
    state
        .router
        .get()
        .and_then(|router| router.cluster())
        .is_some_and(|cluster| !cluster.linked())
}

async fn route(method: &str, path: &str, state: &State) -> Response {
    // The query string, if any, selects nothing here.
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let known = matches!(path, "/metrics" | "/healthz" | "/readyz");
    if !known {
        return Response::text(
            "404 Not Found",
            "not found: try /metrics, /healthz or /readyz",
        );
    }
    if method != "GET" {
        let mut response = Response::text("405 Method Not Allowed", "only GET is served");
        response.allow_get = true;
        return response;
    }
    match path {
        "/healthz" => Response::text("200 OK", "ok"),
        // Cluster mode: a node cut off from NATS serves its own clients but not the
        // cluster's, so a load balancer should send new clients elsewhere.
        "/readyz" if cluster_down(state) => Response::text(
            "503 Service Unavailable",
            "not ready: the cluster's NATS connection is down",
        ),
        "/readyz" if state.ready.load(Ordering::Relaxed) => Response::text("200 OK", "ready"),
        "/readyz" => Response::text("503 Service Unavailable", "not ready"),
        _ => {
            let Some(router) = state.router.get().cloned() else {
                return Response::text("503 Service Unavailable", "starting: no figures yet");
            };
            // A scrape takes every session's lock in turn: off the async workers.
            match tokio::task::spawn_blocking(move || prometheus::render(&router)).await {
                Ok(body) => Response {
                    status: "200 OK",
                    content_type: prometheus::CONTENT_TYPE,
                    body,
                    allow_get: false,
                },
                Err(_) => Response::text("500 Internal Server Error", "rendering failed"),
            }
        }
    }
}

enum Head {
    Request {
        method: String,
        path: String,
    },
    /// The peer closed before sending a whole request head.
    Closed,
    TooLarge,
    Malformed,
}

/// Reads until the request head is complete (a body, which GET has not, is ignored).
async fn read_head(stream: &mut TcpStream) -> io::Result<Head> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Head::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                return Ok(match (request.method, request.path) {
                    (Some(method), Some(path)) => Head::Request {
                        method: method.to_string(),
                        path: path.to_string(),
                    },
                    _ => Head::Malformed,
                });
            }
            Ok(httparse::Status::Partial) if buf.len() >= MAX_REQUEST => return Ok(Head::TooLarge),
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => return Ok(Head::TooLarge),
            Err(_) => return Ok(Head::Malformed),
        }
    }
}
