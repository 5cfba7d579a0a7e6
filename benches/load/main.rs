//! MQTT load generator for the broker benchmark (`make bench` drives it through
//! `benches/run_load.py`; see benches/README.md, "Load benchmark").
//!
//! ```text
//! cargo bench --bench load -- run --port 1883 --scenario fanin --qos 1 --size 64 --count 10000
//! cargo bench --bench load -- idle --port 1883 --connections 10000 --broker-pid PID
//! ```
//!
//! `run` drives one of the four SurgeMQ scenarios (1:1, fan-in 20:1, fan-out 1:20, mesh of
//! 20) on one topic, or its wildcard variant, checks every delivery and prints one JSON
//! line. `idle` opens many idle connections and reports the broker's RSS per connection
//! and the connect rate. Without a subcommand (as when `cargo test --all-targets` runs
//! bench targets) it prints its usage and exits 0 at once.

mod conn;
mod idle;
mod stats;
mod transport;

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3mq::codec::{Protocol, QoS};
use tokio::sync::watch;
use tokio::task::JoinSet;

use conn::{Conn, ConnResult, Pub, Shared, Sub, HEADER};
use stats::{
    proc_cpu_seconds, proc_rss_kib, self_cpu_seconds, system_busy_seconds, Histogram, Json,
};

const USAGE: &str = "\
usage: load run  [--host H] [--port P] [--scenario 1:1|fanin|fanout|mesh] [--wildcard]
                 [--qos 0|1|2] [--size BYTES] [--count N | --deliveries N]
                 [--rate MSGS_PER_S --seconds S] [--clients 20] [--max-inflight 100]
                 [--batch BYTES] [--threads 1] [--timeout S] [--max-seconds S]
                 [--broker-pid PID] [--label TEXT] [--sub-ports P,P...]
       load idle [--host H] [--port P] [--connections 10000] [--concurrency 50]
                 [--keepalive 60] [--settle S] [--broker-pid PID] [--label TEXT]
                 [--sources N] [--storm]
       both:     [--transport tcp|tls|ws|wss] [--cafile PEM] [--path /mqtt]
                 [--protocol 4|5]

run:  --count is messages per publisher; --deliveries N derives it from the total
      deliveries wanted. --rate paces publishing at MSGS_PER_S in total (split over the
      publishers) for --seconds. Topic: `test` (all clients), or with --wildcard
      subscribers on `bench/+/#` and publisher i on `bench/i/x`. Exit status 0 when every
      expected delivery arrived exactly once and in order, 1 otherwise, 2 on bad usage.
      --sub-ports: subscribing clients connect to these ports in turn (the nodes of a
      cluster), the others to --port.
idle: opens the connections (CONNECT/CONNACK each, at most --concurrency at a time),
      waits --settle seconds and reports broker RSS per connection and connects/s
      (with --transport tls, each connect is a full TLS handshake). --sources N
      connects from 127.0.0.1 .. 127.0.0.N in turn (past one address's ~28,000
      ephemeral ports). --storm then drops every connection at once and reconnects
      them all (same client ids, --concurrency at a time) and reports how long the
      broker took and whether it refused any.
--protocol: 4 = MQTT 3.1.1 (the default), 5 = MQTT 5.0: CONNECT, SUBSCRIBE and
      PUBLISH with empty property sections, the broker's 5.0 CONNACK, SUBACK and
      acknowledgements understood (a Receive Maximum below --max-inflight lowers the
      window), the same delivery checks.
--transport: TLS verifies the broker's certificate against --cafile for the name
      `localhost`; WebSocket upgrades on --path with the `mqtt` subprotocol.";

/// Command-line options, shared by both subcommands.
struct Opts {
    host: String,
    port: u16,
    scenario: String,
    wildcard: bool,
    qos: QoS,
    size: usize,
    count: Option<u32>,
    deliveries: Option<u64>,
    rate: f64,
    seconds: f64,
    clients: usize,
    max_inflight: usize,
    batch: usize,
    threads: usize,
    timeout: f64,
    max_seconds: f64,
    broker_pid: Option<u32>,
    label: String,
    connections: usize,
    concurrency: usize,
    keepalive: u16,
    settle: f64,
    sources: u8,
    storm: bool,
    transport: transport::Kind,
    cafile: Option<String>,
    path: String,
    protocol: Protocol,
    sub_ports: Vec<u16>,
}

impl Default for Opts {
    fn default() -> Opts {
        Opts {
            host: "127.0.0.1".into(),
            port: 1883,
            scenario: "1:1".into(),
            wildcard: false,
            qos: QoS::AtMostOnce,
            size: 64,
            count: None,
            deliveries: None,
            rate: 0.0,
            seconds: 5.0,
            clients: 20,
            max_inflight: 100,
            batch: 32 * 1024,
            threads: 1,
            timeout: 10.0,
            max_seconds: 300.0,
            broker_pid: None,
            label: String::new(),
            connections: 10_000,
            concurrency: 50,
            keepalive: 60,
            settle: 1.0,
            sources: 1,
            storm: false,
            transport: transport::Kind::Tcp,
            cafile: None,
            path: "/mqtt".into(),
            protocol: Protocol::V311,
            sub_ports: Vec::new(),
        }
    }
}

fn parse_args(args: &[String]) -> Result<Opts, String> {
    fn val<T: std::str::FromStr>(name: &str, v: Option<&String>) -> Result<T, String> {
        let v = v.ok_or_else(|| format!("{name} needs a value"))?;
        v.parse().map_err(|_| format!("bad value for {name}: {v}"))
    }
    let mut o = Opts::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let a = a.as_str();
        match a {
            "--host" => o.host = val(a, it.next())?,
            "--port" => o.port = val(a, it.next())?,
            "--scenario" => o.scenario = val(a, it.next())?,
            "--wildcard" => o.wildcard = true,
            "--qos" => {
                let q: u8 = val(a, it.next())?;
                o.qos = QoS::from_u8(q).ok_or("--qos must be 0, 1 or 2")?;
            }
            "--size" => o.size = val(a, it.next())?,
            "--count" => o.count = Some(val(a, it.next())?),
            "--deliveries" => o.deliveries = Some(val(a, it.next())?),
            "--rate" => o.rate = val(a, it.next())?,
            "--seconds" => o.seconds = val(a, it.next())?,
            "--clients" => o.clients = val(a, it.next())?,
            "--max-inflight" => o.max_inflight = val(a, it.next())?,
            "--batch" => o.batch = val(a, it.next())?,
            "--threads" => o.threads = val(a, it.next())?,
            "--timeout" => o.timeout = val(a, it.next())?,
            "--max-seconds" => o.max_seconds = val(a, it.next())?,
            "--broker-pid" => o.broker_pid = Some(val(a, it.next())?),
            "--label" => o.label = val(a, it.next())?,
            "--sub-ports" => {
                let v: String = val(a, it.next())?;
                o.sub_ports = v
                    .split(',')
                    .map(|p| {
                        p.trim()
                            .parse()
                            .map_err(|_| format!("bad port in --sub-ports: {p}"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--connections" => o.connections = val(a, it.next())?,
            "--concurrency" => o.concurrency = val(a, it.next())?,
            "--keepalive" => o.keepalive = val(a, it.next())?,
            "--settle" => o.settle = val(a, it.next())?,
            "--sources" => o.sources = val(a, it.next())?,
            "--storm" => o.storm = true,
            "--transport" => {
                let name: String = val(a, it.next())?;
                o.transport = transport::Kind::parse(&name)
                    .ok_or("--transport must be tcp, tls, ws or wss")?;
            }
            "--cafile" => o.cafile = Some(val(a, it.next())?),
            "--path" => o.path = val(a, it.next())?,
            "--protocol" => {
                let level: String = val(a, it.next())?;
                o.protocol = match level.as_str() {
                    "4" | "3.1.1" => Protocol::V311,
                    "5" | "5.0" => Protocol::V5,
                    _ => return Err("--protocol must be 4 (3.1.1) or 5 (5.0)".into()),
                };
            }
            // cargo passes --bench to bench targets.
            "--bench" => {}
            other => return Err(format!("unknown option {other}")),
        }
    }
    if o.size < HEADER {
        return Err(format!("--size must be at least {HEADER} bytes"));
    }
    if o.max_inflight == 0 || o.max_inflight > 65_000 {
        return Err("--max-inflight must be 1..65000".into());
    }
    if o.threads == 0 || o.clients == 0 || o.concurrency == 0 {
        return Err("--threads, --clients and --concurrency must be positive".into());
    }
    if !(o.timeout > 0.0 && o.max_seconds > 0.0 && o.seconds > 0.0 && o.rate >= 0.0) {
        return Err("--timeout, --max-seconds and --seconds must be positive".into());
    }
    Ok(o)
}

fn resolve(o: &Opts) -> Result<SocketAddr, String> {
    (o.host.as_str(), o.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", o.host))?
        .next()
        .ok_or_else(|| format!("no address for {}", o.host))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        // `cargo test --all-targets` runs bench targets without arguments: nothing to do.
        println!("load: no command, nothing to run (see `load --help`)");
        return ExitCode::SUCCESS;
    };
    let opts = match parse_args(rest) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("load: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = transport::configure(opts.transport, opts.cafile.as_deref(), &opts.path) {
        eprintln!("load: {e}");
        return ExitCode::from(2);
    }
    let runtime = if opts.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(opts.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("load: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = match command.as_str() {
        "run" => runtime.block_on(run(&opts)),
        "idle" => runtime.block_on(idle::run(&opts)),
        "--bench" | "--help" | "-h" | "help" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        other => Err(format!("unknown command {other}")),
    };
    match outcome {
        Ok((line, ok)) => {
            println!("{line}");
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("load: {e}");
            ExitCode::from(2)
        }
    }
}

/// Who connects: subscribers first, then publishers. In mesh every client is both.
struct Roles {
    pubs: usize,
    subs: usize,
    /// (publisher index, subscribes) per client, in connection order.
    clients: Vec<(Option<u32>, bool)>,
}

fn roles(scenario: &str, n: usize) -> Result<Roles, String> {
    let (pubs, subs, mesh) = match scenario {
        "1:1" => (1, 1, false),
        "fanin" => (n, 1, false),
        "fanout" => (1, n, false),
        "mesh" => (n, n, true),
        other => return Err(format!("unknown scenario {other}")),
    };
    let clients = if mesh {
        (0..n).map(|i| (Some(i as u32), true)).collect()
    } else {
        (0..subs)
            .map(|_| (None, true))
            .chain((0..pubs).map(|i| (Some(i as u32), false)))
            .collect()
    };
    Ok(Roles {
        pubs,
        subs,
        clients,
    })
}

/// One scenario run: setup, go, wait for completion (or a stall), report.
async fn run(o: &Opts) -> Result<(String, bool), String> {
    let addr = resolve(o)?;
    let roles = roles(&o.scenario, o.clients)?;
    let paced = o.rate > 0.0;
    let count: u32 = if paced {
        let per_pub = o.rate / roles.pubs as f64;
        (per_pub * o.seconds).round().max(1.0) as u32
    } else if let Some(c) = o.count {
        c
    } else if let Some(d) = o.deliveries {
        (d / (roles.pubs * roles.subs) as u64).max(1) as u32
    } else {
        100_000
    };
    let per_pub_rate = if paced {
        o.rate / roles.pubs as f64
    } else {
        0.0
    };
    let epoch = Instant::now();
    let magic =
        (std::process::id() ^ (epoch.elapsed().as_nanos() as u32)).wrapping_mul(2_654_435_761) | 1;
    let shared = Arc::new(Shared {
        epoch,
        magic,
        qos: o.qos,
        protocol: o.protocol,
        size: o.size,
        filler: conn::filler(o.size),
        max_inflight: o.max_inflight,
        batch_bytes: o.batch,
        t0_ns: AtomicU64::new(0),
        progress: AtomicU64::new(0),
    });
    let (filter, topic_of) = if o.wildcard {
        ("bench/+/#".to_string(), true)
    } else {
        ("test".to_string(), false)
    };
    let tag = format!("{:x}", magic);
    let topic_for = |idx: u32| {
        if topic_of {
            format!("bench/{idx}/x")
        } else {
            "test".to_string()
        }
    };
    let pub_topics: Vec<Vec<u8>> = (0..roles.pubs as u32)
        .map(|i| topic_for(i).into_bytes())
        .collect();

    // Setup, sequential: every subscription exists before the first PUBLISH.
    let setup_start = Instant::now();
    let mut clients = Vec::with_capacity(roles.clients.len());
    let mut granted_qos = o.qos;
    let mut receive_maximum: Option<u16> = None;
    let mut subscribers = 0;
    for (i, &(pub_index, subscribes)) in roles.clients.iter().enumerate() {
        let id = format!("load-{tag}-{i}");
        let mut addr = addr;
        if subscribes && !o.sub_ports.is_empty() {
            addr.set_port(o.sub_ports[subscribers % o.sub_ports.len()]);
            subscribers += 1;
        }
        let mut c = Conn::connect(addr, &id, 0, Duration::from_secs(5), o.protocol)
            .await
            .map_err(|e| format!("client {i}: {e}"))?;
        receive_maximum = receive_maximum.or(c.receive_maximum);
        let sub = if subscribes {
            let g = c
                .subscribe(&filter, o.qos)
                .await
                .map_err(|e| format!("client {i}: {e}"))?;
            granted_qos = granted_qos.min(g);
            Some(Sub::new(pub_topics.clone(), count))
        } else {
            None
        };
        let publisher = pub_index.map(|idx| {
            let topic = topic_for(idx);
            // Spread paced publishers evenly over one interval.
            let phase_ns = if paced {
                (f64::from(idx) * 1e9 / o.rate) as u64
            } else {
                0
            };
            let mut p = Pub::new(idx, topic, count, per_pub_rate, phase_ns);
            p.limit_window(c.receive_maximum);
            p
        });
        clients.push((c, publisher, sub));
    }
    let setup_s = setup_start.elapsed().as_secs_f64();

    let (go_tx, go_rx) = watch::channel(false);
    let (abort_tx, abort_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for (c, p, s) in clients {
        tasks.spawn(c.run(p, s, shared.clone(), go_rx.clone(), abort_rx.clone()));
    }
    tokio::task::yield_now().await;
    let gen_cpu0 = self_cpu_seconds();
    let broker_cpu0 = o.broker_pid.and_then(proc_cpu_seconds);
    let sys0 = system_busy_seconds();
    let t0 = shared.now_ns();
    shared.t0_ns.store(t0, Ordering::Relaxed);
    let _ = go_tx.send(true);

    // Wait for every connection, aborting when nothing moves for --timeout seconds or
    // the run exceeds --max-seconds.
    let mut results: Vec<(Conn, ConnResult)> = Vec::new();
    let mut task_errors = Vec::new();
    let mut last_progress = 0;
    let mut last_change = Instant::now();
    let started = Instant::now();
    let mut timed_out = false;
    let mut aborted = false;
    let tick = Duration::from_millis(50);
    while !tasks.is_empty() {
        match tokio::time::timeout(tick, tasks.join_next()).await {
            Ok(Some(Ok(r))) => results.push(r),
            Ok(Some(Err(e))) => task_errors.push(e.to_string()),
            Ok(None) => break,
            Err(_) => {
                let p = shared.progress.load(Ordering::Relaxed);
                if p != last_progress {
                    last_progress = p;
                    last_change = Instant::now();
                }
                let stalled = last_change.elapsed().as_secs_f64() > o.timeout;
                let too_long = started.elapsed().as_secs_f64() > o.max_seconds;
                if (stalled || too_long) && !aborted {
                    timed_out = true;
                    aborted = true;
                    let _ = abort_tx.send(true);
                }
                // Tasks end promptly on abort; this bounds the wait if one does not.
                if aborted && last_change.elapsed().as_secs_f64() > o.timeout + 10.0 {
                    tasks.abort_all();
                }
            }
        }
    }
    let end_ns = shared.now_ns();
    let gen_cpu = self_cpu_seconds() - gen_cpu0;
    let broker_cpu = match (broker_cpu0, o.broker_pid.and_then(proc_cpu_seconds)) {
        (Some(a), Some(b)) => b - a,
        _ => f64::NAN,
    };
    let (sys_busy, sys_steal) = match (sys0, system_busy_seconds()) {
        (Some(a), Some(b)) => (b.0 - a.0, b.1 - a.1),
        _ => (f64::NAN, f64::NAN),
    };
    let broker_rss = o.broker_pid.and_then(proc_rss_kib);

    // Aggregate.
    let mut hist = Histogram::default();
    let (mut published, mut completed, mut bad_acks) = (0u64, 0u64, 0u64);
    let (mut delivered, mut expected, mut dups, mut ooo, mut corrupt, mut foreign) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut sub_min, mut sub_max) = (u64::MAX, 0u64);
    let mut last_ns = t0;
    let mut first_ns = u64::MAX;
    let mut pub_done_ns = t0;
    let mut errors: Vec<String> = task_errors;
    let mut conns = Vec::new();
    for (c, r) in results {
        published += r.published;
        completed += r.completed;
        bad_acks += r.bad_acks;
        if let Some(ns) = r.pub_done_ns {
            pub_done_ns = pub_done_ns.max(ns);
        }
        if let Some(s) = &r.sub {
            delivered += s.delivered;
            expected += s.expected();
            dups += s.duplicates;
            ooo += s.out_of_order;
            corrupt += s.corrupt;
            foreign += s.foreign;
            sub_min = sub_min.min(s.delivered);
            sub_max = sub_max.max(s.delivered);
            last_ns = last_ns.max(s.last_ns);
            if let Some(f) = s.first_ns {
                first_ns = first_ns.min(f);
            }
            hist.merge(&s.hist);
        }
        if let Some(e) = r.error {
            if e != "aborted" {
                errors.push(e);
            }
        }
        conns.push(c);
    }
    for c in conns {
        c.close().await;
    }
    let expected_total = u64::from(count) * (roles.pubs * roles.subs) as u64;
    let expected = expected.max(expected_total);
    let seconds = (last_ns.saturating_sub(t0)) as f64 / 1e9;
    let complete = !timed_out
        && errors.is_empty()
        && delivered == expected
        && dups == 0
        && ooo == 0
        && corrupt == 0
        && foreign == 0
        && bad_acks == 0;
    let us = |ns: u64| ns as f64 / 1e3;
    let mut j = Json::default();
    j.str("label", &o.label)
        .str("transport", &format!("{:?}", o.transport).to_lowercase())
        .str("scenario", &o.scenario)
        .bool("wildcard", o.wildcard)
        .int("protocol", u64::from(protocol_level(o.protocol)))
        // The broker's Receive Maximum from its 5.0 CONNACK (0: none given, or 3.1.1).
        .int("receive_maximum", u64::from(receive_maximum.unwrap_or(0)))
        .int("pubs", roles.pubs as u64)
        .int("subs", roles.subs as u64)
        .int("qos", o.qos as u64)
        .int("granted_qos", granted_qos as u64)
        .int("size", o.size as u64)
        .int("count_per_pub", u64::from(count))
        .num("rate", o.rate)
        .bool("paced", paced)
        .int("max_inflight", o.max_inflight as u64)
        .int("threads", o.threads as u64)
        .int("published", published)
        .int("completed", completed)
        .int("expected", expected)
        .int("delivered", delivered)
        .int("lost", expected.saturating_sub(delivered))
        .int("duplicates", dups)
        .int("out_of_order", ooo)
        .int("corrupt", corrupt)
        .int("foreign", foreign)
        .int("bad_acks", bad_acks)
        .int(
            "sub_min_delivered",
            if sub_min == u64::MAX { 0 } else { sub_min },
        )
        .int("sub_max_delivered", sub_max)
        .bool("timed_out", timed_out)
        .bool("complete", complete)
        .str("error", errors.first().map_or("", String::as_str))
        .int("errors", errors.len() as u64)
        .num("setup_s", setup_s)
        .num("seconds", seconds)
        .num(
            "publish_seconds",
            pub_done_ns.saturating_sub(t0) as f64 / 1e9,
        )
        .num(
            "first_delivery_s",
            if first_ns == u64::MAX {
                f64::NAN
            } else {
                first_ns.saturating_sub(t0) as f64 / 1e9
            },
        )
        .num("wall_s", end_ns.saturating_sub(t0) as f64 / 1e9)
        .num(
            "deliveries_per_s",
            if seconds > 0.0 {
                delivered as f64 / seconds
            } else {
                0.0
            },
        )
        .num("lat_mean_us", hist.mean() / 1e3)
        .num("p50_us", us(hist.quantile(0.50)))
        .num("p90_us", us(hist.quantile(0.90)))
        .num("p99_us", us(hist.quantile(0.99)))
        .num("p999_us", us(hist.quantile(0.999)))
        .num("max_us", us(hist.max()))
        .num("gen_cpu_s", gen_cpu)
        .num("broker_cpu_s", broker_cpu)
        .num("sys_busy_cpu_s", sys_busy)
        .num("sys_steal_s", sys_steal)
        // Everything else the machine did meanwhile (tick-sampled: about +-10%).
        .num(
            "other_cpu_s",
            sys_busy - sys_steal - gen_cpu - if broker_cpu.is_nan() { 0.0 } else { broker_cpu },
        )
        .int("broker_rss_kib", broker_rss.unwrap_or(0));
    Ok((j.finish(), complete))
}

/// The CONNECT protocol level, for the report.
fn protocol_level(p: Protocol) -> u8 {
    match p {
        Protocol::V31 => 3,
        Protocol::V5 => 5,
        _ => 4,
    }
}
