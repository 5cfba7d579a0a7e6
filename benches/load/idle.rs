//! Idle connections: open many MQTT connections that then stay silent, and report what
//! they cost the broker (RSS per connection) and how fast it accepts them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::conn::Conn;
use crate::stats::{proc_cpu_seconds, proc_rss_kib, raise_nofile, Json};
use crate::{resolve, Opts};

/// Source address of connection `i`: 127.0.0.1 .. 127.0.0.`sources`, in turn; `None`
/// (the kernel's choice) with one source or a non-loopback broker.
fn source(addr: SocketAddr, sources: u8, i: usize) -> Option<IpAddr> {
    (sources > 1 && addr.ip().is_loopback())
        .then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % sources as usize) as u8)))
}

/// Connects `n` clients `idle-TAG-i`, at most `concurrency` handshakes at a time; returns
/// the connections, the errors and the first error.
async fn connect_all(
    o: &Opts,
    addr: SocketAddr,
    tag: &str,
) -> Result<(Vec<Conn>, u64, String), String> {
    let permits = Arc::new(Semaphore::new(o.concurrency));
    let keepalive = o.keepalive;
    let protocol = o.protocol;
    let limit = Duration::from_secs(30);
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..o.connections {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let id = format!("idle-{tag}-{i}");
        let from = source(addr, o.sources, i);
        tasks.spawn(async move {
            let r = Conn::connect_from(
                addr,
                from,
                &id,
                keepalive,
                Duration::from_secs(10),
                protocol,
            )
            .await;
            drop(permit);
            r
        });
        if started.elapsed() > limit * 4 {
            break;
        }
    }
    let mut conns = Vec::with_capacity(o.connections);
    let mut errors = 0u64;
    let mut first_error = String::new();
    while let Some(res) = tasks.join_next().await {
        let err = match res {
            Ok(Ok(c)) => {
                conns.push(c);
                continue;
            }
            Ok(Err(e)) => e,
            Err(e) => e.to_string(),
        };
        errors += 1;
        if first_error.is_empty() {
            first_error = err;
        }
    }
    Ok((conns, errors, first_error))
}

pub async fn run(o: &Opts) -> Result<(String, bool), String> {
    let addr = resolve(o)?;
    let n = o.connections;
    // One descriptor per connection plus headroom, for this process only.
    let nofile = raise_nofile(n as u64 + 256);
    if nofile < n as u64 + 32 {
        return Err(format!(
            "RLIMIT_NOFILE is {nofile}, too low for {n} connections and not raisable \
             (ulimit -n {}, or run as root)",
            n + 256
        ));
    }
    let pid = o.broker_pid;
    let rss_before = pid.and_then(proc_rss_kib);
    let cpu_before = pid.and_then(proc_cpu_seconds);
    let tag = format!("{:x}", std::process::id());
    let started = Instant::now();
    let (conns, errors, first_error) = connect_all(o, addr, &tag).await?;
    let connect_s = started.elapsed().as_secs_f64();
    let cpu_connect = match (cpu_before, pid.and_then(proc_cpu_seconds)) {
        (Some(a), Some(b)) => b - a,
        _ => f64::NAN,
    };
    // Let the broker finish whatever it does after CONNACK before sampling.
    tokio::time::sleep(Duration::from_secs_f64(o.settle)).await;
    let rss_after = pid.and_then(proc_rss_kib);
    let connected = conns.len() as u64;

    // Reconnect storm: every client drops at once and all reconnect with the same ids.
    // Timed from the drop to the last CONNACK; a refusal or a failed connect is an error.
    let mut storm = (f64::NAN, 0u64, String::new(), 0u64, None);
    let conns = if o.storm {
        let t = Instant::now();
        drop(conns);
        let (again, storm_errors, storm_error) = connect_all(o, addr, &tag).await?;
        let storm_s = t.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs_f64(o.settle)).await;
        storm = (
            storm_s,
            storm_errors,
            storm_error,
            again.len() as u64,
            pid.and_then(proc_rss_kib),
        );
        again
    } else {
        conns
    };
    drop(conns);
    tokio::time::sleep(Duration::from_secs_f64(o.settle.max(1.0))).await;
    let rss_closed = pid.and_then(proc_rss_kib);

    let per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) if connected > 0 => (a as f64 - b as f64) * 1024.0 / connected as f64,
        _ => f64::NAN,
    };
    let (storm_s, storm_errors, storm_error, storm_connected, rss_storm) = storm;
    let ok = connected == n as u64
        && errors == 0
        && (!o.storm || (storm_connected == n as u64 && storm_errors == 0));
    let mut j = Json::default();
    j.str("label", &o.label)
        .str("transport", &format!("{:?}", o.transport).to_lowercase())
        .str("kind", "idle")
        .int("connections", n as u64)
        .int("connected", connected)
        .int("errors", errors)
        .str("error", &first_error)
        .int("concurrency", o.concurrency as u64)
        .int("sources", u64::from(o.sources))
        .int("nofile", nofile)
        .num("connect_s", connect_s)
        .num("connects_per_s", connected as f64 / connect_s.max(1e-9))
        .num("broker_cpu_connect_s", cpu_connect)
        .int("rss_before_kib", rss_before.unwrap_or(0))
        .int("rss_after_kib", rss_after.unwrap_or(0))
        .int("rss_after_close_kib", rss_closed.unwrap_or(0))
        .num("rss_per_conn_bytes", per_conn)
        .bool("storm", o.storm)
        .num("storm_s", storm_s)
        .int("storm_connected", storm_connected)
        .int("storm_errors", storm_errors)
        .str("storm_error", &storm_error)
        .int("rss_after_storm_kib", rss_storm.unwrap_or(0))
        .bool("complete", ok);
    Ok((j.finish(), ok))
}
