//! `[[responders]]` and `[escalation]`: who answers an alert, and who is told next when nobody
//! does.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::{within, ConfigError, DAY_SECS};

/// The longest responder name: it is shown to the sender in one line of a toast.
pub const MAX_RESPONDER_NAME: usize = 64;

/// How long a tier waits for an acknowledgement when `wait_secs` is not given.
pub const DEFAULT_TIER_WAIT: Duration = Duration::from_secs(60);

/// A responder is reachable on a desktop while one of its agents sent an authentic datagram
/// within this long (responder agents heartbeat every 20 s).
pub const DEFAULT_RESPONDER_OFFLINE_AFTER: Duration = Duration::from_secs(150);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawResponder {
    name: String,
    email: Option<String>,
    phone: Option<String>,
    chat: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    agents: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawEscalation {
    responder_offline_after_secs: Option<u64>,
    emergency: Option<Vec<RawTier>>,
    drill: Option<Vec<RawTier>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTier {
    notify: Vec<String>,
    wait_secs: Option<u64>,
}

/// One person who answers alerts (`[[responders]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponderConfig {
    /// As the sender reads it ("Help is on the way — Sam Lee"); unique, 1 to 64 characters.
    pub name: String,
    /// The email channel also sends to this address when a tier with this responder fires.
    pub email: Option<String>,
    /// A phone number, for the SMS channel (issue 19) and the console.
    pub phone: Option<String>,
    /// A Slack mention (`<@U0123>`) put in the posts of this responder's tiers.
    pub chat: Option<String>,
    /// Groups a tier can name as `group:NAME`.
    pub groups: Vec<String>,
    /// Enrolled agent names whose desktops show this responder's popups, and whose `respond`
    /// is attributed to this responder.
    pub agents: Vec<String>,
}

/// Who a tier notifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every configured responder.
    Everyone,
    /// One responder, by name (as configured).
    Responder(String),
    /// Every responder in this group.
    Group(String),
    /// A configured notification channel (its message mentions the tier's responders).
    Channel(&'static str),
    /// Every configured channel: the default policy's, so that a configuration built in code
    /// (`Config { slack: Some(..), ..Config::default() }`) notifies the channels it has.
    EveryChannel,
}

/// One step of an escalation policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    /// Who is notified when this tier fires.
    pub notify: Vec<Target>,
    /// How long to wait for an acknowledgement before the next tier fires (and this one is
    /// reminded). After the last tier, its wait paces the reminders of every tier while nobody
    /// acknowledges (see `store::response::wait_after`).
    pub wait: Duration,
}

/// The escalation policies (`[escalation]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EscalationSettings {
    /// A responder agent is online while it sent an authentic datagram within this long.
    pub responder_offline_after: Duration,
    /// The tiers of a real alert, in order (at least one).
    pub emergency: Vec<Tier>,
    /// The tiers of a drill (`--test`), in order (at least one); every message says DRILL.
    pub drill: Vec<Tier>,
}

impl EscalationSettings {
    /// The policy when `[escalation]` is absent: one tier, everyone and every channel, for
    /// alerts and drills alike.
    pub fn standard() -> Self {
        let tier = || vec![Tier { notify: vec![Target::Everyone, Target::EveryChannel], wait: DEFAULT_TIER_WAIT }];
        EscalationSettings {
            responder_offline_after: DEFAULT_RESPONDER_OFFLINE_AFTER,
            emergency: tier(),
            drill: tier(),
        }
    }

    /// The policy of an alert: drills have their own.
    pub fn policy(&self, test: bool) -> &[Tier] {
        if test {
            &self.drill
        } else {
            &self.emergency
        }
    }
}

impl Tier {
    /// The configured responders this tier reaches, in configuration order, each once.
    pub fn responders<'a>(&self, all: &'a [ResponderConfig]) -> Vec<&'a ResponderConfig> {
        all.iter()
            .filter(|r| {
                self.notify.iter().any(|t| match t {
                    Target::Everyone => true,
                    Target::Responder(name) => name == &r.name,
                    Target::Group(g) => r.groups.iter().any(|rg| rg == g),
                    Target::Channel(_) | Target::EveryChannel => false,
                })
            })
            .collect()
    }

    /// The channels this tier notifies among the `configured` ones, in delivery order, each once.
    pub fn channels(&self, configured: &[&'static str]) -> Vec<&'static str> {
        configured
            .iter()
            .copied()
            .filter(|c| self.notify.iter().any(|t| *t == Target::Channel(c) || *t == Target::EveryChannel))
            .collect()
    }
}

/// Text a person reads: not empty, at most `max` characters, no control characters.
fn plain_text(file: Option<&Path>, key: &str, v: &str, max: usize) -> Result<(), ConfigError> {
    if v.trim().is_empty() {
        return Err(ConfigError::at(file, key, "must not be empty"));
    }
    if v.chars().count() > max {
        return Err(ConfigError::at(file, key, format!("{v:?} is longer than {max} characters")));
    }
    if v.chars().any(char::is_control) {
        return Err(ConfigError::at(file, key, format!("{v:?} holds a control character")));
    }
    if v.trim() != v {
        return Err(ConfigError::at(file, key, format!("{v:?} starts or ends with a space")));
    }
    Ok(())
}

pub(super) fn responders(file: Option<&Path>, raw: Vec<RawResponder>) -> Result<Vec<ResponderConfig>, ConfigError> {
    let mut names = HashSet::new();
    let mut agents = std::collections::HashMap::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("responders[{i}].{k}");
        plain_text(file, &key("name"), &r.name, MAX_RESPONDER_NAME)?;
        if r.name.starts_with("group:") || r.name.starts_with("channel:") || r.name.eq_ignore_ascii_case("everyone") {
            return Err(ConfigError::at(
                file,
                &key("name"),
                format!("{:?} would read as an escalation target; choose another name", r.name),
            ));
        }
        if !names.insert(r.name.to_lowercase()) {
            return Err(ConfigError::at(
                file,
                &key("name"),
                format!("{:?} is already the name of another responder (names are compared without case)", r.name),
            ));
        }
        if let Some(e) = &r.email {
            e.parse::<lettre::message::Mailbox>()
                .map_err(|err| ConfigError::at(file, &key("email"), format!("{e:?} is not an email address: {err}")))?;
        }
        if let Some(p) = &r.phone {
            // The SMS channel texts it: international form, or it would be refused at alert time.
            if crate::config::e164(p).is_none() {
                return Err(ConfigError::at(
                    file,
                    &key("phone"),
                    format!("{p:?} is not an international phone number (+, country code, number; spaces, dashes, parentheses allowed)"),
                ));
            }
        }
        if let Some(c) = &r.chat {
            plain_text(file, &key("chat"), c, 128)?;
        }
        for g in &r.groups {
            plain_text(file, &key("groups"), g, 64)?;
        }
        for a in &r.agents {
            plain_text(file, &key("agents"), a, 128)?;
            if let Some(other) = agents.insert(a.clone(), r.name.clone()) {
                return Err(ConfigError::at(
                    file,
                    &key("agents"),
                    format!("the agent {a:?} is already listed for {other:?}: an agent belongs to one responder"),
                ));
            }
        }
        out.push(ResponderConfig {
            name: r.name,
            email: r.email,
            phone: r.phone,
            chat: r.chat,
            groups: r.groups,
            agents: r.agents,
        });
    }
    Ok(out)
}

pub(super) fn escalation(
    file: Option<&Path>,
    raw: RawEscalation,
    responders: &[ResponderConfig],
    channels: &[&'static str],
) -> Result<EscalationSettings, ConfigError> {
    let mut e = EscalationSettings::standard();
    if let Some(v) = raw.responder_offline_after_secs {
        e.responder_offline_after =
            Duration::from_secs(within(file, "escalation.responder_offline_after_secs", v, 30, DAY_SECS, "s")?);
    }
    if let Some(tiers) = raw.emergency {
        e.emergency = policy(file, "escalation.emergency", tiers, responders, channels)?;
    }
    if let Some(tiers) = raw.drill {
        e.drill = policy(file, "escalation.drill", tiers, responders, channels)?;
    }
    Ok(e)
}

fn policy(
    file: Option<&Path>,
    key: &str,
    raw: Vec<RawTier>,
    responders: &[ResponderConfig],
    channels: &[&'static str],
) -> Result<Vec<Tier>, ConfigError> {
    if raw.is_empty() {
        return Err(ConfigError::at(file, key, "needs at least one tier, e.g. [ { notify = [\"everyone\"] } ]"));
    }
    if raw.len() > 16 {
        return Err(ConfigError::at(file, key, format!("{} tiers; at most 16", raw.len())));
    }
    raw.into_iter()
        .enumerate()
        .map(|(i, t)| {
            let wait_key = format!("{key}[{i}].wait_secs");
            let notify_key = format!("{key}[{i}].notify");
            let wait = Duration::from_secs(within(
                file,
                &wait_key,
                t.wait_secs.unwrap_or(DEFAULT_TIER_WAIT.as_secs()),
                1,
                DAY_SECS,
                "s",
            )?);
            if t.notify.is_empty() {
                return Err(ConfigError::at(file, &notify_key, "names nobody; give responders, groups or channels"));
            }
            let notify = t
                .notify
                .iter()
                .map(|v| target(file, &notify_key, v, responders, channels))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Tier { notify, wait })
        })
        .collect()
}

fn target(
    file: Option<&Path>,
    key: &str,
    v: &str,
    responders: &[ResponderConfig],
    channels: &[&'static str],
) -> Result<Target, ConfigError> {
    if v == "everyone" {
        return Ok(Target::Everyone);
    }
    if let Some(g) = v.strip_prefix("group:") {
        if !responders.iter().any(|r| r.groups.iter().any(|rg| rg == g)) {
            return Err(ConfigError::at(file, key, format!("{v:?}: no responder is in the group {g:?}")));
        }
        return Ok(Target::Group(g.to_owned()));
    }
    if let Some(c) = v.strip_prefix("channel:") {
        let kind = crate::channel::NAMES.iter().copied().find(|n| *n == c).ok_or_else(|| {
            let known = crate::channel::NAMES.join(", ");
            ConfigError::at(file, key, format!("{v:?}: there is no channel {c:?} (channels: {known})"))
        })?;
        if !channels.contains(&kind) {
            return Err(ConfigError::at(
                file,
                key,
                format!("{v:?}: the channel {c:?} is not configured (add [notify.{c}])"),
            ));
        }
        return Ok(Target::Channel(kind));
    }
    match responders.iter().find(|r| r.name == v) {
        Some(r) => Ok(Target::Responder(r.name.clone())),
        None => Err(ConfigError::at(
            file,
            key,
            format!("{v:?} is not a configured responder name, \"group:NAME\", \"channel:NAME\" or \"everyone\""),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::Config;

    const RESPONDERS: &str = r#"
[notify.slack]
webhook_url = "https://hooks.slack.com/services/T/B/X"

[[responders]]
name = "Sam Lee"
email = "sam@example.com"
phone = "+1 555 0100"
chat = "<@U0123>"
groups = ["security"]
agents = ["sam-desk"]

[[responders]]
name = "Kim Park"
groups = ["security", "drill"]
agents = ["kim-desk", "kim-laptop"]

[[responders]]
name = "Duty Manager"
"#;

    #[test]
    fn the_spec_example_parses() {
        let text = format!(
            "{RESPONDERS}
[escalation]
responder_offline_after_secs = 120
emergency = [ {{ notify = [\"group:security\", \"channel:slack\"], wait_secs = 60 }},
              {{ notify = [\"everyone\", \"channel:log\"], wait_secs = 90 }} ]
drill     = [ {{ notify = [\"group:drill\"] }} ]
"
        );
        let c = Config::parse(&text, None).unwrap();
        assert_eq!(c.responders.len(), 3);
        assert_eq!(c.responder_for_agent("kim-laptop").unwrap().name, "Kim Park");
        assert!(c.responder_for_agent("nobody").is_none());
        assert_eq!(c.responder("sam lee").unwrap().name, "Sam Lee");
        let e = &c.escalation;
        assert_eq!(e.responder_offline_after, Duration::from_secs(120));
        assert_eq!(e.emergency.len(), 2);
        assert_eq!(e.emergency[0].notify, vec![Target::Group("security".into()), Target::Channel("slack")]);
        assert_eq!(e.emergency[1].wait, Duration::from_secs(90));
        let names = |t: &Tier| t.responders(&c.responders).iter().map(|r| r.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&e.emergency[0]), ["Sam Lee", "Kim Park"]);
        assert_eq!(names(&e.emergency[1]), ["Sam Lee", "Kim Park", "Duty Manager"]);
        assert_eq!(e.emergency[0].channels(&c.channel_names()), ["slack"]);
        assert_eq!(e.drill, vec![Tier { notify: vec![Target::Group("drill".into())], wait: DEFAULT_TIER_WAIT }]);
        assert_eq!(e.policy(true), &e.drill[..]);
    }

    #[test]
    fn defaults_notify_everyone_and_every_channel() {
        let c = Config::parse(RESPONDERS, None).unwrap();
        let e = &c.escalation;
        assert_eq!(e.responder_offline_after, DEFAULT_RESPONDER_OFFLINE_AFTER);
        for p in [&e.emergency, &e.drill] {
            assert_eq!(p.len(), 1);
            assert_eq!(p[0].notify, vec![Target::Everyone, Target::EveryChannel]);
            assert_eq!(p[0].channels(&c.channel_names()), ["log", "slack"]);
            assert_eq!(p[0].wait, Duration::from_secs(60));
        }
        let c = Config::parse("", None).unwrap();
        assert!(c.responders.is_empty());
        assert_eq!(c.escalation.emergency[0].channels(&c.channel_names()), ["log"]);
    }

    #[test]
    fn errors_name_the_file_the_key_and_the_value() {
        let f = Path::new("/etc/sos/collector.toml");
        let esc = |policy: &str| format!("{RESPONDERS}\n[escalation]\nemergency = {policy}\n");
        for (text, key, value) in [
            (esc(r#"[ { notify = ["Nobody Here"] } ]"#), "escalation.emergency[0].notify", "Nobody Here"),
            (
                esc(r#"[ { notify = ["everyone"] }, { notify = ["group:cleaners"] } ]"#),
                "escalation.emergency[1].notify",
                "cleaners",
            ),
            (esc(r#"[ { notify = ["channel:email"] } ]"#), "escalation.emergency[0].notify", "channel:email"),
            (esc(r#"[ { notify = ["channel:pager"] } ]"#), "escalation.emergency[0].notify", "pager"),
            (esc(r#"[ { notify = [] } ]"#), "escalation.emergency[0].notify", "nobody"),
            (esc("[]"), "escalation.emergency", "at least one tier"),
            (esc(r#"[ { notify = ["everyone"], wait_secs = 0 } ]"#), "escalation.emergency[0].wait_secs", "0"),
            (format!("{RESPONDERS}[[responders]]\nname = \"sam lee\"\n"), "responders[3].name", "sam lee"),
            ("[[responders]]\nname = \"\"\n".into(), "responders[0].name", "empty"),
            (format!("[[responders]]\nname = \"{}\"\n", "x".repeat(65)), "responders[0].name", "64"),
            ("[[responders]]\nname = \"a\\u0007b\"\n".into(), "responders[0].name", "control"),
            (
                "[[responders]]\nname = \"A\"\nemail = \"not-an-address\"\n".into(),
                "responders[0].email",
                "not-an-address",
            ),
            ("[[responders]]\nname = \"A\"\nphone = \"call me\"\n".into(), "responders[0].phone", "call me"),
            (
                "[[responders]]\nname = \"A\"\nagents = [\"d\"]\n[[responders]]\nname = \"B\"\nagents = [\"d\"]\n"
                    .into(),
                "responders[1].agents",
                "\"d\"",
            ),
            ("[[responders]]\nname = \"everyone\"\n".into(), "responders[0].name", "everyone"),
            ("[[responders]]\nname = \"A\"\npager = \"x\"\n".into(), "pager", "unknown"),
            ("[escalation]\nresponder_offline_after_secs = 5\n".into(), "escalation.responder_offline_after_secs", "5"),
        ] {
            let e = Config::parse(&text, Some(f)).unwrap_err().to_string();
            assert!(e.starts_with("/etc/sos/collector.toml"), "{text}: {e}");
            assert!(e.contains(key) && e.contains(value), "{text}\n=> {e}\n(wanted {key} and {value})");
        }
    }
}
