//! mosquitto `acl_file`s: `user`, `topic [read|write|readwrite|deny] FILTER` and
//! `pattern ...` lines with `%c`/`%u` substitution.

use std::collections::HashMap;

use super::{Authorizer, BoxFuture, ClientInfo, Refusal, Verdict};
use crate::codec::QoS;
use crate::topic;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    ReadWrite,
    Deny,
}

#[derive(Debug, Clone)]
struct AclRule {
    access: Access,
    filter: String,
    /// `pattern` rules substitute `%c` (client id) and `%u` (user name).
    pattern: bool,
}

/// Rules from a file in mosquitto's `acl_file` format: `topic [read|write|readwrite|deny]
/// FILTER` lines before any `user` line apply to anonymous clients, those after
/// `user NAME` to that user, and `pattern ...` lines to everyone with `%c`/`%u`
/// substituted. A `deny` rule that matches wins over any grant.
#[derive(Debug, Clone, Default)]
pub struct AclFile {
    anonymous: Vec<AclRule>,
    users: HashMap<String, Vec<AclRule>>,
    patterns: Vec<AclRule>,
}

impl AclFile {
    pub fn parse(text: &str) -> Result<AclFile, String> {
        let mut acl = AclFile::default();
        let mut current_user: Option<String> = None;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |what: &str| format!("line {}: {what}", n + 1);
            let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(err("user needs a name"));
                    }
                    current_user = Some(rest.to_string());
                }
                "topic" | "pattern" => {
                    let (access, filter) = match rest.split_once(char::is_whitespace) {
                        Some((word, filter)) if access_word(word).is_some() => (
                            access_word(word).unwrap_or(Access::ReadWrite),
                            filter.trim(),
                        ),
                        _ => (Access::ReadWrite, rest),
                    };
                    if filter.is_empty() {
                        return Err(err("missing topic"));
                    }
                    let rule = AclRule {
                        access,
                        filter: filter.to_string(),
                        pattern: keyword == "pattern",
                    };
                    if rule.pattern {
                        acl.patterns.push(rule);
                    } else {
                        topic::validate_topic_filter(filter)
                            .map_err(|e| err(&format!("invalid topic: {e}")))?;
                        match &current_user {
                            Some(user) => acl.users.entry(user.clone()).or_default().push(rule),
                            None => acl.anonymous.push(rule),
                        }
                    }
                }
                other => return Err(err(&format!("unknown keyword {other:?}"))),
            }
        }
        Ok(acl)
    }

    pub fn load(path: &str) -> Result<AclFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read ACL file {path}: {e}"))?;
        AclFile::parse(&text).map_err(|e| format!("ACL file {path}: {e}"))
    }

    /// Whether `client` may read (`write == false`) or write `target`. For a read,
    /// `target` is a subscription filter and must be covered by the rule's filter.
    pub fn allows(&self, client: &ClientInfo, target: &str, write: bool) -> bool {
        let own = match &client.username {
            Some(user) => self.users.get(user.as_ref() as &str).map(Vec::as_slice),
            None => Some(self.anonymous.as_slice()),
        };
        let mut granted = false;
        let rules = own.unwrap_or(&[]).iter().map(|r| (r, None)).chain(
            self.patterns
                .iter()
                .map(|r| (r, Some(substitute(&r.filter, client)))),
        );
        for (rule, substituted) in rules {
            let filter = substituted.as_deref().unwrap_or(&rule.filter);
            let hit = if write {
                topic::matches(filter, target)
            } else {
                filter_covers(filter, target)
            };
            if !hit {
                continue;
            }
            match rule.access {
                Access::Deny => return false,
                Access::ReadWrite => granted = true,
                Access::Read if !write => granted = true,
                Access::Write if write => granted = true,
                _ => {}
            }
        }
        granted
    }
}

fn access_word(word: &str) -> Option<Access> {
    match word {
        "read" => Some(Access::Read),
        "write" => Some(Access::Write),
        "readwrite" => Some(Access::ReadWrite),
        "deny" => Some(Access::Deny),
        _ => None,
    }
}

/// `%c` and `%u` substitution; a client without a user name matches no `%u` rule.
fn substitute(filter: &str, client: &ClientInfo) -> String {
    let user = client.username.as_deref().unwrap_or("\u{0}");
    filter.replace("%c", &client.client_id).replace("%u", user)
}

/// True when every topic `sub` can match is matched by `acl` (so subscribing to `sub`
/// reveals nothing the rule does not grant): `+` in `sub` needs `+` or `#` in `acl`,
/// `#` in `sub` needs `#`.
pub fn filter_covers(acl: &str, sub: &str) -> bool {
    // [MQTT-4.7.2-1]: a leading wildcard does not reach `$` topics, so it covers none.
    if sub.starts_with('$') && (acl.starts_with('+') || acl.starts_with('#')) {
        return false;
    }
    let mut acl_levels = acl.split('/');
    let mut sub_levels = sub.split('/');
    loop {
        match (acl_levels.next(), sub_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(s)) if s != "#" => {}
            (Some(a), Some(s)) if a == s && a != "+" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

impl Authorizer for AclFile {
    fn authorize_subscribe(
        &self,
        client: &ClientInfo,
        filter: &str,
        qos: QoS,
    ) -> BoxFuture<Verdict<QoS>> {
        let granted = self.allows(client, filter, false).then_some(qos);
        // The ACL file refuses with 0x87 Not authorized, as Mosquitto does.
        Box::pin(async move { granted.ok_or(Refusal::NOT_AUTHORIZED) })
    }

    fn authorize_publish(&self, client: &ClientInfo, topic: &str) -> BoxFuture<Verdict> {
        let allowed = self.allows(client, topic, true);
        Box::pin(async move { allowed.then_some(()).ok_or(Refusal::NOT_AUTHORIZED) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytestring::ByteString;

    fn client(id: &str, user: Option<&str>) -> ClientInfo {
        ClientInfo {
            client_id: ByteString::from(id),
            username: user.map(ByteString::from),
            certificate_subject: None,
            protocol: crate::codec::Protocol::V311,
        }
    }

    #[test]
    fn acl_users_patterns_and_deny() {
        let acl = AclFile::parse(
            "# anonymous\ntopic read public/#\n\nuser alice\ntopic readwrite alice/#\n\
             topic write sensors/+/temp\ntopic deny alice/secret\n\
             pattern readwrite devices/%c/#\npattern read users/%u/inbox\n",
        )
        .unwrap();
        let anon = client("dev1", None);
        let alice = client("dev2", Some("alice"));
        assert!(acl.allows(&anon, "public/news", false));
        assert!(!acl.allows(&anon, "public/news", true), "read only");
        assert!(
            !acl.allows(&alice, "public/news", false),
            "anonymous rules only"
        );
        assert!(acl.allows(&alice, "alice/x", true));
        assert!(!acl.allows(&alice, "alice/secret", true), "deny wins");
        assert!(acl.allows(&alice, "sensors/k/temp", true));
        assert!(!acl.allows(&alice, "sensors/k/temp", false), "write only");
        assert!(acl.allows(&anon, "devices/dev1/state", true));
        assert!(!acl.allows(&anon, "devices/dev2/state", true));
        assert!(acl.allows(&alice, "users/alice/inbox", false));
        assert!(!acl.allows(&anon, "users/alice/inbox", false));
    }

    #[test]
    fn subscription_must_be_covered() {
        assert!(filter_covers("a/#", "a/+/b"));
        assert!(filter_covers("a/#", "a"));
        assert!(filter_covers("a/+", "a/+"));
        assert!(!filter_covers("a/+", "a/#"));
        assert!(!filter_covers("a/b", "a/+"));
        assert!(!filter_covers("a/+/c", "a/b"));
        assert!(filter_covers("#", "x/y"));
        assert!(!filter_covers("#", "$SYS/x"));
        assert!(!filter_covers("+/x", "$SYS/x"));
        assert!(filter_covers("$SYS/#", "$SYS/x"));
    }

    #[test]
    fn acl_syntax_errors() {
        assert!(AclFile::parse("topic").is_err());
        assert!(AclFile::parse("user").is_err());
        assert!(AclFile::parse("frobnicate x").is_err());
        assert!(AclFile::parse("topic read a/#/b").is_err());
    }
}
