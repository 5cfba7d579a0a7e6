use super::*;

#[test]
fn metrics_listener_uris() {
    assert_eq!(
        parse_metrics_listener("http://127.0.0.1:9234").unwrap(),
        "127.0.0.1:9234"
    );
    assert_eq!(
        parse_metrics_listener("http://[::1]:0/").unwrap(),
        "[::1]:0"
    );
    for bad in [
        "127.0.0.1:9234",
        "https://127.0.0.1:9234",
        "http://127.0.0.1",
        "http://127.0.0.1:x",
        "http://:9234",
        "http://127.0.0.1:9234/metrics",
    ] {
        assert!(parse_metrics_listener(bad).is_err(), "{bad}");
    }
}

#[test]
fn listener_uris() {
    let addr = |uri: &str| parse_listener(uri).unwrap().addr;
    assert_eq!(addr("tcp://127.0.0.1:0"), "127.0.0.1:0");
    assert_eq!(addr("tcp://[::1]:1883"), "[::1]:1883");
    assert!(parse_listener("udp://127.0.0.1:1").is_err());
    assert!(parse_listener("tcp://127.0.0.1").is_err());
    assert!(parse_listener("tcp://127.0.0.1:99999").is_err());
    assert!(parse_listener("tls://127.0.0.1:1/mqtt").is_err());
    let kind = |uri: &str| parse_listener(uri).unwrap().kind;
    assert_eq!(kind("mqtts://127.0.0.1:8883"), ListenerKind::Tls);
    assert_eq!(kind("ws://127.0.0.1:80"), ListenerKind::Ws("/mqtt".into()));
    assert_eq!(
        kind("wss://[::1]:443/x/y"),
        ListenerKind::Wss("/x/y".into())
    );
    assert_eq!(addr("wss://[::1]:443/x/y"), "[::1]:443");
}

#[test]
fn listener_tables_override_top_level_tls_settings() {
    let tables = Value::Tables(vec![vec![
        ("uri".into(), Value::Str("tls://127.0.0.1:2".into())),
        ("certfile".into(), Value::Str("b.pem".into())),
        ("tls_version".into(), Value::Str("tlsv1.3".into())),
    ]]);
    let values = [
        (
            "listeners",
            Value::List(vec!["tls://127.0.0.1:1".into(), "tls://127.0.0.1:2".into()]),
        ),
        ("listener", tables),
        ("certfile", Value::Str("a.pem".into())),
        ("keyfile", Value::Str("a.key".into())),
    ];
    let config =
        Config::from_values(|n| values.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone()))
            .unwrap();
    let specs = config.listener_specs().unwrap();
    let tls: Vec<_> = specs.iter().map(|s| s.tls.clone().unwrap()).collect();
    assert_eq!(
        (tls[0].certfile.as_str(), tls[0].tls_version),
        ("a.pem", TlsVersion::V12)
    );
    assert_eq!(
        (tls[1].certfile.as_str(), tls[1].tls_version),
        ("b.pem", TlsVersion::V13)
    );
    assert_eq!(tls[1].keyfile, "a.key");
    // The table round-trips through its Value form.
    assert_eq!(
        Vec::<ListenerSettings>::from_value(&config.listener.to_value()).unwrap(),
        config.listener
    );
}

#[test]
fn default_listener_is_loopback_only() {
    let config = Config::default();
    assert_eq!(config.listeners, ["tcp://127.0.0.1:1883"]);
    assert_eq!(config.allow_anonymous, None);
}

#[test]
fn anonymous_policy_follows_mosquitto() {
    use AnonymousPolicy::*;
    let with = |allow| Config {
        allow_anonymous: allow,
        ..Config::default()
    };
    // Unset: the hooks decide if there are any, else loopback only.
    assert_eq!(with(None).anonymous_policy(false, true), Allow);
    assert_eq!(with(None).anonymous_policy(false, false), Refuse);
    assert_eq!(with(None).anonymous_policy(true, false), AskHooks);
    assert_eq!(with(None).anonymous_policy(true, true), AskHooks);
    // Explicit: the same on every listener, hooks or not.
    for (auth, loopback) in [(false, false), (false, true), (true, false), (true, true)] {
        assert_eq!(with(Some(true)).anonymous_policy(auth, loopback), Allow);
        assert_eq!(with(Some(false)).anonymous_policy(auth, loopback), Refuse);
    }
}

fn with(name: &str, value: Value) -> Result<Config, String> {
    Config::from_values(|n| (n == name).then(|| value.clone()))
}

#[test]
fn expiration_values_as_mosquitto_writes_them() {
    let hour = Duration::from_secs(3600);
    assert_eq!(parse_expiration("1h"), Ok(Some(hour)));
    assert_eq!(parse_expiration("2d"), Ok(Some(48 * hour)));
    assert_eq!(parse_expiration("1w"), Ok(Some(7 * 24 * hour)));
    assert_eq!(parse_expiration("1m"), Ok(Some(30 * 24 * hour)));
    assert_eq!(parse_expiration("1y"), Ok(Some(365 * 24 * hour)));
    assert_eq!(parse_expiration("90"), Ok(Some(Duration::from_secs(90))));
    assert_eq!(
        parse_expiration("0.5"),
        Ok(Some(Duration::from_millis(500)))
    );
    assert_eq!(parse_expiration("0"), Ok(None));
    assert_eq!(parse_expiration("0d"), Ok(None));
    for bad in [
        "", "h", "1s", "1.5h", "-1", "-1h", "1 h", "+1d", "nan", "inf", "1e400",
    ] {
        assert!(parse_expiration(bad).is_err(), "{bad:?} was accepted");
    }
    assert!(parse_expiration("99999999999999999y").is_err(), "overflow");
    let expiration = |v: Value| with("persistent_client_expiration", v);
    assert_eq!(
        expiration(Value::Str("2d".into()))
            .unwrap()
            .persistent_client_expiration,
        Some(48 * hour)
    );
    assert_eq!(
        expiration(Value::Int(90))
            .unwrap()
            .persistent_client_expiration,
        Some(Duration::from_secs(90))
    );
    assert_eq!(
        expiration(Value::Float(0.0))
            .unwrap()
            .persistent_client_expiration,
        None
    );
    assert_eq!(
        expiration(Value::None)
            .unwrap()
            .persistent_client_expiration,
        None
    );
}

#[test]
fn defaults_are_valid_and_round_trip() {
    assert!(Config::default().validate().is_ok());
    let defaults = Config::defaults();
    let config = Config::from_values(|n| {
        defaults
            .iter()
            .find(|(name, _)| *name == n)
            .map(|(_, v)| v.clone())
    })
    .unwrap();
    assert_eq!(format!("{config:?}"), format!("{:?}", Config::default()));
}

#[test]
fn errors_name_the_setting() {
    let bad = [
        ("max_inflight", Value::Int(0)),
        ("max_inflight", Value::Int(65_536)),
        ("max_inflight", Value::Bool(true)),
        ("max_queued_messages", Value::Int(-1)),
        ("max_client_id_len", Value::Int(22)),
        ("queue_overflow", Value::Str("drop_all".into())),
        ("queue_qos0_offline", Value::Int(1)),
        ("connect_timeout", Value::Int(0)),
        ("auth_timeout", Value::Float(f64::NAN)),
        ("acl_cache_ttl", Value::Float(f64::INFINITY)),
        ("acl_cache_ttl", Value::Str("60".into())),
        ("password_file", Value::Int(42)),
        ("listeners", Value::Str("tcp://127.0.0.1:0".into())),
        ("listeners", Value::List(vec![])),
        ("session_store", Value::Str("redis:x".into())),
        ("durability", Value::Str("sync".into())),
        ("listeners", Value::List(vec!["tls://127.0.0.1:0".into()])),
        (
            "listeners",
            Value::List(vec!["ws://127.0.0.1:0mqtt".into()]),
        ),
        ("listener", Value::Str("tls://127.0.0.1:0".into())),
        ("listener", Value::Tables(vec![vec![]])),
        (
            "listener",
            Value::Tables(vec![vec![(
                "uri".into(),
                Value::Str("tcp://1.2.3.4:1".into()),
            )]]),
        ),
        ("tls_version", Value::Str("tlsv1.1".into())),
        ("require_certificate", Value::Int(1)),
        ("persistent_client_expiration", Value::Str("2 weeks".into())),
        ("persistent_client_expiration", Value::Int(-1)),
        ("persistent_client_expiration", Value::Bool(true)),
        ("persistent_client_expiration", Value::Float(f64::NAN)),
        (
            "persistent_client_expiration",
            Value::List(vec!["1h".into()]),
        ),
    ];
    for (name, value) in bad {
        let err = with(name, value.clone()).expect_err(name);
        assert!(err.contains(name), "{name} = {value:?}: {err}");
    }
    assert_eq!(with("max_inflight", Value::Int(7)).unwrap().max_inflight, 7);
    assert_eq!(
        with("acl_cache_ttl", Value::Int(0)).unwrap().acl_cache_ttl,
        Duration::ZERO
    );
}

// Cluster mode's engine settings (checked by cluster/connect.rs through Config::validate).
fn cluster_config(settings: &[(&str, &str)]) -> Result<Config, String> {
    let values: std::collections::HashMap<String, String> = settings
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_values(|name| values.get(name).map(|v| Value::Str(v.clone())))
}

#[test]
fn cluster_settings_that_go_together() {
    assert!(cluster_config(&[("cluster_user", "u"), ("cluster_password", "p")]).is_ok());
    let err = cluster_config(&[("cluster_user", "u")]).unwrap_err();
    assert!(err.contains("cluster_user and cluster_password"), "{err}");
    let err = cluster_config(&[("cluster_keyfile", "k.pem")]).unwrap_err();
    assert!(
        err.contains("cluster_certfile and cluster_keyfile"),
        "{err}"
    );
}
