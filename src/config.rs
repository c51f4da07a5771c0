//! Broker configuration: the TOML schema, its embedded default, and
//! validation whose every error names the file, the key and the reason.
//!
//! The keys under `[[listener]]` and `data_dir` are a contract with
//! operators' scripts: extend, never rename.
use crate::constants::*;
use crate::hl7::ValidationLevel;
use crate::wal::{FsyncMode, LogConfig, RetentionPolicy};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The configuration `orderly serve` uses when given no file.
pub const EMBEDDED_DEFAULT: &str = r#"# Orderly's embedded default configuration.
data_dir = "./orderly-data"

[[listener]]
name = "default"
listen = "127.0.0.1:2575"
queue = "inbound"
"#;

#[derive(Debug, Clone)]
pub struct Config {
    /// Where the configuration came from (a path, or "<embedded default>").
    pub source: String,
    pub data_dir: PathBuf,
    pub listeners: Vec<ListenerConfig>,
    pub wal: LogConfig,
    pub retention: RetentionPolicy,
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub queue: String,
    pub max_frame_bytes: usize,
    pub max_connections: usize,
    pub idle_timeout_s: u64,
    /// A frame must complete within this many seconds of its first byte
    /// (slow-drip peers are closed).
    pub frame_timeout_s: u64,
    /// Appends one connection may have waiting for fsync (pipelining window).
    pub max_inflight: usize,
    pub validation: ValidationLevel,
}

/// A configuration problem; `Display` says file, key and reason.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read { file: String, source: std::io::Error },
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: `{key}`: {reason}")]
    Invalid { file: String, key: String, reason: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    data_dir: Option<PathBuf>,
    #[serde(default)]
    listener: Vec<RawListener>,
    wal: Option<RawWal>,
    retention: Option<RawRetention>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: String,
    listen: String,
    queue: String,
    max_frame_bytes: Option<usize>,
    max_connections: Option<usize>,
    idle_timeout_s: Option<u64>,
    frame_timeout_s: Option<u64>,
    max_inflight: Option<usize>,
    validation: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWal {
    segment_bytes: Option<u64>,
    segment_age_s: Option<u64>,
    preallocate: Option<bool>,
    fsync: Option<String>,
    batch_records_max: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    max_age_s: Option<u64>,
    max_bytes: Option<u64>,
}

impl Config {
    /// Loads `path`, or the embedded default when `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            None => Self::parse(EMBEDDED_DEFAULT, "<embedded default>"),
            Some(p) => {
                let file = p.display().to_string();
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read { file: file.clone(), source })?;
                Self::parse(&text, &file)
            }
        }
    }

    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax { file: file.into(), message: e.to_string().trim_end().to_string() })?;
        let invalid = |key: String, reason: String| ConfigError::Invalid { file: file.into(), key, reason };
        if raw.listener.is_empty() {
            return Err(invalid("listener".into(), "at least one [[listener]] is required".into()));
        }
        let mut listeners = Vec::new();
        let mut names = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for (i, l) in raw.listener.into_iter().enumerate() {
            let key = |k: &str| format!("listener[{i}].{k}");
            let parsed = listener(l, &key).map_err(|(k, r)| invalid(k, r))?;
            if !names.insert(parsed.name.clone()) {
                return Err(invalid(key("name"), format!("listener name `{}` is used twice", parsed.name)));
            }
            if parsed.listen.port() != 0 && !addrs.insert(parsed.listen) {
                return Err(invalid(key("listen"), format!("{} is used by two listeners", parsed.listen)));
            }
            listeners.push(parsed);
        }
        let wal = wal_config(raw.wal).map_err(|(k, r)| invalid(k, r))?;
        let retention = raw.retention.map_or(RetentionPolicy::default(), |r| RetentionPolicy {
            max_age_ms: r.max_age_s.map(|s| s.saturating_mul(1000)),
            max_bytes: r.max_bytes,
        });
        let data_dir = raw.data_dir.unwrap_or_else(|| PathBuf::from("./orderly-data"));
        if data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir".into(), "must not be empty".into()));
        }
        Ok(Config { source: file.into(), data_dir, listeners, wal, retention })
    }

    /// The directory of a queue's log.
    pub fn queue_dir(&self, queue: &str) -> PathBuf {
        queue_dir(&self.data_dir, queue)
    }

    /// Distinct queue names, in listener order.
    pub fn queues(&self) -> Vec<String> {
        let mut seen = BTreeSet::new();
        self.listeners.iter().filter(|l| seen.insert(l.queue.clone())).map(|l| l.queue.clone()).collect()
    }
}

pub fn queue_dir(data_dir: &Path, queue: &str) -> PathBuf {
    data_dir.join("queues").join(queue)
}

type KeyError = (String, String);

fn listener(l: RawListener, key: &dyn Fn(&str) -> String) -> Result<ListenerConfig, KeyError> {
    check_name(&l.name).map_err(|r| (key("name"), r))?;
    check_name(&l.queue).map_err(|r| (key("queue"), r))?;
    let listen: SocketAddr = l.listen.parse().map_err(|e| (key("listen"), format!("`{}` is not an IP:port address ({e})", l.listen)))?;
    let max_frame_bytes = l.max_frame_bytes.unwrap_or(crate::mllp::FRAME_BYTES_MAX_DEFAULT);
    if !(1024..=RECORD_PAYLOAD_BYTES_MAX).contains(&max_frame_bytes) {
        return Err((key("max_frame_bytes"), format!("must be between 1024 and {RECORD_PAYLOAD_BYTES_MAX}")));
    }
    let max_connections = l.max_connections.unwrap_or(LISTENER_CONNECTIONS_DEFAULT);
    if !(1..=LISTENER_CONNECTIONS_MAX).contains(&max_connections) {
        return Err((key("max_connections"), format!("must be between 1 and {LISTENER_CONNECTIONS_MAX}")));
    }
    let idle_timeout_s = l.idle_timeout_s.unwrap_or(IDLE_TIMEOUT_S_DEFAULT);
    let frame_timeout_s = l.frame_timeout_s.unwrap_or(FRAME_TIMEOUT_S_DEFAULT);
    for (k, v) in [("idle_timeout_s", idle_timeout_s), ("frame_timeout_s", frame_timeout_s)] {
        if !(1..=86_400).contains(&v) {
            return Err((key(k), "must be between 1 and 86400 seconds".into()));
        }
    }
    let max_inflight = l.max_inflight.unwrap_or(CONNECTION_INFLIGHT_DEFAULT);
    if !(1..=CONNECTION_INFLIGHT_MAX).contains(&max_inflight) {
        return Err((key("max_inflight"), format!("must be between 1 and {CONNECTION_INFLIGHT_MAX}")));
    }
    let validation = match l.validation.as_deref().unwrap_or("minimal") {
        "minimal" => ValidationLevel::Minimal,
        "none" => ValidationLevel::None,
        other => return Err((key("validation"), format!("`{other}` is not one of \"none\", \"minimal\""))),
    };
    Ok(ListenerConfig { name: l.name, listen, queue: l.queue, max_frame_bytes, max_connections, idle_timeout_s, frame_timeout_s, max_inflight, validation })
}

/// Names become directory names and metric labels: keep them plain.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!("`{name}` must be 1-64 characters of A-Z, a-z, 0-9, '-' or '_'"))
    }
}

fn wal_config(raw: Option<RawWal>) -> Result<LogConfig, KeyError> {
    let mut c = LogConfig::default();
    let Some(w) = raw else { return Ok(c) };
    if let Some(b) = w.segment_bytes {
        c.segment_bytes = b;
    }
    if let Some(s) = w.segment_age_s {
        c.segment_age_ms = s.saturating_mul(1000);
    }
    if let Some(p) = w.preallocate {
        c.preallocate = p;
    }
    if let Some(n) = w.batch_records_max {
        c.batch_records_max = n;
    }
    c.fsync = match w.fsync.as_deref() {
        None | Some("always") => FsyncMode::Always,
        Some("never") => {
            tracing::warn!("wal.fsync = \"never\": acknowledged messages can be lost on power failure; for benchmarks only");
            FsyncMode::Never
        }
        Some(other) => return Err(("wal.fsync".into(), format!("`{other}` is not one of \"always\", \"never\""))),
    };
    c.validate().map_err(|r| ("wal".into(), r))?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid_and_documented_values() {
        let c = Config::load(None).expect("embedded default parses");
        assert_eq!(c.data_dir, PathBuf::from("./orderly-data"));
        assert_eq!(c.listeners.len(), 1);
        assert_eq!(c.listeners[0].name, "default");
        assert_eq!(c.listeners[0].listen, "127.0.0.1:2575".parse().unwrap());
        assert_eq!(c.listeners[0].queue, "inbound");
        assert_eq!(c.wal.fsync, FsyncMode::Always);
    }

    #[test]
    fn contract_keys_parse() {
        let text = r#"
            data_dir = "/var/lib/orderly"
            [[listener]]
            name = "lab"
            listen = "127.0.0.1:2575"
            queue = "lab"
            max_frame_bytes = 16777216
            max_connections = 1024
            idle_timeout_s = 600
            [[listener]]
            name = "adt"
            listen = "127.0.0.1:2576"
            queue = "lab"
        "#;
        let c = Config::parse(text, "t.toml").expect("valid");
        assert_eq!(c.listeners[0].max_frame_bytes, 16_777_216);
        assert_eq!(c.listeners[0].idle_timeout_s, 600);
        assert_eq!(c.queues(), vec!["lab".to_string()]);
    }

    #[test]
    fn errors_name_file_key_and_reason() {
        let bad_addr = "[[listener]]\nname='a'\nlisten='nope'\nqueue='q'\n";
        let e = Config::parse(bad_addr, "x.toml").unwrap_err().to_string();
        assert!(e.contains("x.toml") && e.contains("listener[0].listen") && e.contains("nope"), "{e}");
        let unknown = "[[listener]]\nname='a'\nlisten='127.0.0.1:1'\nqueue='q'\nbogus=1\n";
        let e = Config::parse(unknown, "y.toml").unwrap_err().to_string();
        assert!(e.contains("y.toml") && e.contains("bogus"), "{e}");
        let dup = "[[listener]]\nname='a'\nlisten='127.0.0.1:1'\nqueue='q'\n[[listener]]\nname='a'\nlisten='127.0.0.1:2'\nqueue='q'\n";
        assert!(Config::parse(dup, "z").unwrap_err().to_string().contains("listener[1].name"));
        let fsync = "[[listener]]\nname='a'\nlisten='127.0.0.1:1'\nqueue='q'\n[wal]\nfsync='sometimes'\n";
        assert!(Config::parse(fsync, "w").unwrap_err().to_string().contains("wal.fsync"));
        let bad_queue = "[[listener]]\nname='a'\nlisten='127.0.0.1:1'\nqueue='../etc'\n";
        assert!(Config::parse(bad_queue, "q").unwrap_err().to_string().contains("listener[0].queue"));
    }
}
