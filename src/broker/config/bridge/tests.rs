//! The bridge settings' parsing: Mosquitto's topic lines, addresses, TLS settings.

use super::*;

fn line(text: &str) -> TopicLine {
    TopicLine::parse(text).unwrap()
}

#[test]
fn topic_lines_follow_mosquittos_table() {
    let l = line("sensors/# out 1 local/ remote/");
    assert_eq!(l.direction, Direction::Out);
    assert_eq!(l.qos, QoS::AtLeastOnce);
    assert_eq!(l.local_topic(), "local/sensors/#");
    assert_eq!(l.remote_topic(), "remote/sensors/#");
    assert_eq!(l.to_remote("local/sensors/a"), "remote/sensors/a");
    assert_eq!(l.to_local("remote/sensors/a"), "local/sensors/a");
    // Defaults: out, QoS 0, no remapping.
    let l = line("a/#");
    assert_eq!((l.direction, l.qos), (Direction::Out, QoS::AtMostOnce));
    assert_eq!(l.to_remote("a/b"), "a/b");
    // `""` prefixes.
    let l = line("p in 2 L/ \"\"");
    assert_eq!(
        (l.local_topic(), l.remote_topic()),
        ("L/p".into(), "p".into())
    );
    assert_eq!(l.to_local("p"), "L/p");
    let l = line("p both 0 \"\" R/");
    assert_eq!(l.to_remote("p"), "R/p");
    assert_eq!(l.to_local("R/p"), "p");
    // An empty pattern remaps one topic to another.
    let l = line("\"\" out 0 local/t remote/t");
    assert_eq!(l.local_topic(), "local/t");
    assert_eq!(l.to_remote("local/t"), "remote/t");
    // A `#` pattern also matches the prefix's parent, which keeps its name.
    let l = line("# out 0 a/ b/");
    assert_eq!(l.to_remote("a"), "b/a");
}

#[test]
fn bad_topic_lines_say_why() {
    for (text, why) in [
        ("", "empty"),
        ("a sideways", "direction"),
        ("a out 3", "QoS"),
        ("a out 1 L/", "no remote prefix"),
        ("\"\" out 0 \"\" R/", "both prefixes"),
        ("\"\" out 0 L/ \"\"", "both prefixes"),
        ("a out 0 L/+/ R/", "wildcard"),
        ("a/#/b", "invalid local topic"),
        ("a out 0 L/ R/ extra", "too many"),
    ] {
        let err = TopicLine::parse(text).unwrap_err();
        assert!(err.contains(why), "{text:?}: {err}");
    }
}

fn table(entries: &[(&str, Value)]) -> Vec<(String, Value)> {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

#[test]
fn tables_get_mosquittos_defaults_and_errors_name_the_bridge() {
    let t = table(&[
        ("name", Value::Str("cloud".into())),
        ("address", Value::Str("127.0.0.1:1884".into())),
        ("topic", Value::List(vec!["a/# both 1".into()])),
    ]);
    let b = BridgeSettings::from_table(&t, "host").unwrap();
    assert_eq!(b.addresses, vec![("127.0.0.1".to_string(), 1884)]);
    assert_eq!(b.remote_clientid, "host.cloud");
    assert_eq!(b.local_clientid, "local.host.cloud");
    assert!(b.try_private && !b.cleansession && !b.local_cleansession);
    assert_eq!(
        b.notification_topic,
        "$SYS/broker/connection/host.cloud/state"
    );
    let round = Vec::<BridgeSettings>::from_value(&vec![b.clone()].to_value()).unwrap();
    assert_eq!(round, vec![b]);

    let no_address = table(&[
        ("name", Value::Str("x".into())),
        ("topic", Value::List(vec!["a".into()])),
    ]);
    let err = BridgeSettings::from_table(&no_address, "h").unwrap_err();
    assert!(err.contains("\"x\"") && err.contains("no address"), "{err}");
}

fn tls_table(address: &str, more: &[(&str, Value)]) -> Result<BridgeSettings, String> {
    let mut t = table(&[
        ("name", Value::Str("x".into())),
        ("address", Value::Str(address.into())),
        ("topic", Value::List(vec!["a".into()])),
    ]);
    t.extend(table(more));
    BridgeSettings::from_table(&t, "h")
}

#[test]
fn tls_is_on_with_a_ca_setting_or_an_mqtts_address() {
    let b = tls_table("h:8883", &[]).unwrap();
    assert!(b.tls.is_none());
    let ca = ("bridge_cafile", Value::Str("ca.pem".into()));
    let b = tls_table(
        "h:8883",
        &[
            ca.clone(),
            ("bridge_certfile", Value::Str("c.pem".into())),
            ("bridge_keyfile", Value::Str("c.key".into())),
            ("bridge_insecure", Value::Bool(true)),
            ("bridge_tls_version", Value::Str("tlsv1.3".into())),
        ],
    )
    .unwrap();
    let tls = b.tls.clone().unwrap();
    assert_eq!(tls.cafile.as_deref(), Some("ca.pem"));
    assert!(tls.insecure && tls.version == Some(BridgeTlsVersion::V13));
    let round = Vec::<BridgeSettings>::from_value(&vec![b.clone()].to_value()).unwrap();
    assert_eq!(round, vec![b]);
    // An mqtts:// address: system roots, port 8883 by default.
    let b = tls_table("mqtts://broker.example", &[]).unwrap();
    assert_eq!(b.addresses, vec![("broker.example".to_string(), 8883)]);
    assert!(b.tls.as_ref().is_some_and(|t| t.cafile.is_none()));
    let round = Vec::<BridgeSettings>::from_value(&vec![b.clone()].to_value()).unwrap();
    assert_eq!(round, vec![b]);

    for (address, more, why) in [
        (
            "h:1",
            vec![("bridge_certfile", Value::Str("c.pem".into()))],
            "bridge_certfile needs TLS",
        ),
        (
            "h:1",
            vec![("bridge_insecure", Value::Bool(true))],
            "bridge_insecure needs TLS",
        ),
        (
            "h:1",
            vec![ca.clone(), ("bridge_keyfile", Value::Str("c.key".into()))],
            "both bridge_certfile and bridge_keyfile",
        ),
        ("mqtt://h:1", vec![ca.clone()], "is plain MQTT"),
        (
            "h:1",
            vec![
                ca.clone(),
                ("bridge_tls_version", Value::Str("tlsv1".into())),
            ],
            "not a TLS version",
        ),
        (
            "h:1",
            vec![("bridge_cafile", Value::Str(String::new()))],
            "must not be empty",
        ),
    ] {
        let err = tls_table(address, &more).unwrap_err();
        assert!(
            err.starts_with("bridge \"x\": ") && err.contains(why),
            "{err}"
        );
    }
}

#[test]
fn restart_timeouts_and_addresses() {
    assert_eq!(
        parse_restart_timeout(&Value::Str("1 30".into())).unwrap(),
        (Duration::from_secs(1), Duration::from_secs(30))
    );
    assert!(parse_address("[::1]:1883").is_ok());
    assert!(parse_address("h:x").is_err());
}

#[test]
fn protocol_versions_are_mosquittos_names() {
    let with = |version: &str| {
        BridgeSettings::from_table(
            &table(&[
                ("name", Value::Str("v".into())),
                ("address", Value::Str("127.0.0.1".into())),
                ("topic", Value::List(vec!["a both".into()])),
                ("bridge_protocol_version", Value::Str(version.into())),
            ]),
            "h",
        )
    };
    for (name, protocol) in [
        ("mqttv31", BridgeProtocol::V31),
        ("mqttv311", BridgeProtocol::V311),
        ("mqttv50", BridgeProtocol::V5),
    ] {
        let b = with(name).unwrap();
        assert_eq!(b.protocol, protocol);
        let round = Vec::<BridgeSettings>::from_value(&vec![b.clone()].to_value()).unwrap();
        assert_eq!(round, vec![b]);
    }
    let err = with("mqttv5").unwrap_err();
    assert!(
        err.contains("\"v\"") && err.contains("bridge_protocol_version") && err.contains("mqttv50"),
        "{err}"
    );
}
