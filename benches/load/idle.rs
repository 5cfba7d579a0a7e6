//! Idle connections: open many MQTT connections that then stay silent, and report what
//! they cost the broker (RSS per connection) and how fast it accepts them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::conn::Conn;
use crate::stats::{proc_cpu_seconds, proc_rss_kib, raise_nofile, Json};
use crate::{resolve, Opts};

pub async fn run(o: &Opts) -> Result<(String, bool), String> {
    let addr = resolve(o)?;
    let n = o.connections;
    // One descriptor per connection plus headroom, for this process only.
    let nofile = raise_nofile(n as u64 + 256);
    if nofile < n as u64 + 32 {
        return Err(format!(
            "RLIMIT_NOFILE is {nofile}, too low for {n} connections and not raisable"
        ));
    }
    let pid = o.broker_pid;
    let rss_before = pid.and_then(proc_rss_kib);
    let cpu_before = pid.and_then(proc_cpu_seconds);
    let tag = format!("{:x}", std::process::id());
    let permits = Arc::new(Semaphore::new(o.concurrency));
    let keepalive = o.keepalive;
    let limit = Duration::from_secs(30);
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let id = format!("idle-{tag}-{i}");
        tasks.spawn(async move {
            let r = Conn::connect(addr, &id, keepalive, Duration::from_secs(10)).await;
            drop(permit);
            r
        });
        if started.elapsed() > limit * 4 {
            break;
        }
    }
    let mut conns = Vec::with_capacity(n);
    let mut errors = 0u64;
    let mut first_error = String::new();
    while let Some(res) = tasks.join_next().await {
        match res {
            Ok(Ok(c)) => conns.push(c),
            Ok(Err(e)) => {
                errors += 1;
                if first_error.is_empty() {
                    first_error = e;
                }
            }
            Err(e) => {
                errors += 1;
                if first_error.is_empty() {
                    first_error = e.to_string();
                }
            }
        }
    }
    let connect_s = started.elapsed().as_secs_f64();
    let cpu_connect = match (cpu_before, pid.and_then(proc_cpu_seconds)) {
        (Some(a), Some(b)) => b - a,
        _ => f64::NAN,
    };
    // Let the broker finish whatever it does after CONNACK before sampling.
    tokio::time::sleep(Duration::from_secs_f64(o.settle)).await;
    let rss_after = pid.and_then(proc_rss_kib);
    let connected = conns.len() as u64;
    drop(conns);
    tokio::time::sleep(Duration::from_secs_f64(o.settle.max(1.0))).await;
    let rss_closed = pid.and_then(proc_rss_kib);

    let per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) if connected > 0 => (a as f64 - b as f64) * 1024.0 / connected as f64,
        _ => f64::NAN,
    };
    let ok = connected == n as u64 && errors == 0;
    let mut j = Json::default();
    j.str("label", &o.label)
        .str("transport", &format!("{:?}", o.transport).to_lowercase())
        .str("kind", "idle")
        .int("connections", n as u64)
        .int("connected", connected)
        .int("errors", errors)
        .str("error", &first_error)
        .int("concurrency", o.concurrency as u64)
        .int("nofile", nofile)
        .num("connect_s", connect_s)
        .num("connects_per_s", connected as f64 / connect_s.max(1e-9))
        .num("broker_cpu_connect_s", cpu_connect)
        .int("rss_before_kib", rss_before.unwrap_or(0))
        .int("rss_after_kib", rss_after.unwrap_or(0))
        .int("rss_after_close_kib", rss_closed.unwrap_or(0))
        .num("rss_per_conn_bytes", per_conn)
        .bool("complete", ok);
    Ok((j.finish(), ok))
}
