//! Broker configuration: the TOML schema, its embedded default, and
//! validation whose every error names the file, the key and the reason.
//!
//! The keys under `[[listener]]` and `data_dir` are a contract with
//! operators' scripts: extend, never rename.
use crate::constants::*;
use crate::delivery::verdict::AckCodes;
use crate::hl7::ack::AckPolicy;
use crate::hl7::{Acceptance, FieldPath, ValidationLevel};
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
    /// `[[queue]]`: one entry per queue any listener or destination names
    /// (undeclared ones with the defaults).
    pub queues: Vec<QueueConfig>,
    pub destinations: Vec<DestinationConfig>,
    /// `read_buffer_budget_bytes`: all connections' read buffers together,
    /// beyond each one's small allowance.
    pub read_buffer_budget_bytes: usize,
}

/// How a destination orders deliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ordering {
    /// One lane: every message in log order.
    Strict,
    /// `lanes` lanes; a message goes to lane `hash(key) % lanes` (lane 0 without a key),
    /// so order holds per key and one stuck key stops only its lane.
    Partitioned { key: FieldPath, lanes: u16 },
}

/// What to do with a message a destination will not take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Keep the lane's head in place; deliver nothing behind it until an operator acts.
    Block,
    /// Write a durable dead-letter record with full context and move on.
    DeadLetter,
}

#[derive(Debug, Clone)]
pub struct RetryConfig {
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub multiplier: f64,
    pub jitter: f64,
}

#[derive(Debug, Clone)]
pub struct BreakerConfig {
    pub failure_threshold: u32,
    pub open_ms: u64,
}

#[derive(Debug, Clone, Default)]
pub struct FilterConfig {
    /// `TYPE^TRIGGER` (or `TYPE`); empty = all.
    pub message_types: Vec<String>,
    /// MSH-4 (its first component, or whole); empty = all.
    pub sending_facilities: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct DestinationConfig {
    pub name: String,
    pub queue: String,
    pub connect: String,
    pub ordering: Ordering,
    pub ack_timeout_ms: u64,
    pub on_reject: FailurePolicy,
    pub on_exhausted: FailurePolicy,
    /// `[destination.ack_codes]`: which MSA-1 codes mean success, retry, reject.
    pub ack_codes: AckCodes,
    /// `mllp_r2`: the downstream answers with MLLP release 2 commit blocks.
    pub mllp_r2: bool,
    pub rate_limit_per_s: u32,
    /// `replay_rate_limit_per_s`: messages per second the replay lane
    /// sends at most (replays and resubmissions; live traffic keeps
    /// priority). Never 0 (unlimited).
    pub replay_rate_limit_per_s: u32,
    /// `reconcile_every_s`: reconcile everything retained on this
    /// schedule and keep the result (0: never).
    pub reconcile_every_s: u64,
    /// Least time between two cursor fsyncs of this destination (0 = back to back).
    pub cursor_sync_interval_ms: u64,
    pub filter: FilterConfig,
    pub retry: RetryConfig,
    pub circuit_breaker: BreakerConfig,
}

impl DestinationConfig {
    pub fn lanes(&self) -> u16 {
        match &self.ordering {
            Ordering::Strict => 1,
            Ordering::Partitioned { lanes, .. } => *lanes,
        }
    }
}

/// What to do with a message whose idempotency key was accepted before
/// with a different payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyConflict {
    /// A negative ACK (AE, or CE in enhanced mode) with ERR 205.
    Reject,
    /// Append it, flagged as a new version of the original.
    Accept,
}

/// `[[queue]]`: idempotency and retention of one queue's log.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    pub name: String,
    /// `idempotency_key`: the fields whose values identify a message
    /// (empty: no deduplication on this queue).
    pub idempotency_key: Vec<FieldPath>,
    /// `dedupe_window_s`, in milliseconds: a key is remembered this long.
    pub dedupe_window_ms: u64,
    pub on_key_conflict: KeyConflict,
    /// `dedupe_keys_max`: keys the index holds at most (memory bound).
    pub dedupe_keys_max: usize,
    /// `retention_hours` (or `[retention]` for an undeclared queue).
    pub retention: RetentionPolicy,
}

pub const REPLAY_RATE_LIMIT_PER_S_DEFAULT: u32 = 100;
pub const IDEMPOTENCY_KEY_DEFAULT: [&str; 3] = ["MSH-3", "MSH-4", "MSH-10"];
pub const DEDUPE_WINDOW_S_DEFAULT: u64 = 7 * 24 * 3600;
pub const DEDUPE_KEYS_MAX_DEFAULT: usize = 10_000_000;
pub const RETENTION_HOURS_DEFAULT: u64 = 168;

impl QueueConfig {
    /// The defaults, for a queue named by a listener but not declared.
    pub fn with_defaults(name: &str, global: RetentionPolicy) -> QueueConfig {
        let retention = if global.max_age_ms.is_some() {
            global
        } else {
            RetentionPolicy {
                max_age_ms: Some(RETENTION_HOURS_DEFAULT * 3600 * 1000),
                ..global
            }
        };
        QueueConfig {
            name: name.to_string(),
            idempotency_key: IDEMPOTENCY_KEY_DEFAULT
                .iter()
                .map(|p| FieldPath::parse(p).expect("the default paths parse"))
                .collect(),
            dedupe_window_ms: DEDUPE_WINDOW_S_DEFAULT * 1000,
            on_key_conflict: KeyConflict::Reject,
            dedupe_keys_max: DEDUPE_KEYS_MAX_DEFAULT,
            retention,
        }
    }
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
    /// `frame_end_pause_ms`: how long a trailing `0x1C` waits for what
    /// follows before it ends its frame.
    pub frame_end_pause_ms: u64,
    /// Appends one connection may have waiting for fsync (pipelining window).
    pub max_inflight: usize,
    pub validation: ValidationLevel,
    /// `ack_mode`: when and in which code family to answer (table 0155).
    pub ack_policy: AckPolicy,
    /// `accept_message_types`, `accept_processing_ids`, `accept_versions`:
    /// anything else is answered AR/CR (empty lists take everything).
    pub acceptance: Acceptance,
    /// The partition keys of the destinations reading this listener's
    /// queue (derived, not a key): read once at ingest into each record's
    /// metadata, so lanes never parse payloads to route.
    pub partition_keys: Vec<FieldPath>,
}

/// A configuration problem; `Display` says file, key and reason.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: `{key}`: {reason}")]
    Invalid {
        file: String,
        key: String,
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    data_dir: Option<PathBuf>,
    read_buffer_budget_bytes: Option<usize>,
    #[serde(default)]
    listener: Vec<RawListener>,
    wal: Option<RawWal>,
    retention: Option<RawRetention>,
    #[serde(default)]
    destination: Vec<RawDestination>,
    #[serde(default)]
    queue: Vec<RawQueue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    name: String,
    idempotency_key: Option<Vec<String>>,
    dedupe_window_s: Option<u64>,
    on_key_conflict: Option<String>,
    dedupe_keys_max: Option<usize>,
    retention_hours: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDestination {
    name: String,
    queue: String,
    connect: String,
    ordering: Option<String>,
    partition_key: Option<String>,
    lanes: Option<u16>,
    ack_timeout_ms: Option<u64>,
    on_reject: Option<String>,
    on_exhausted: Option<String>,
    rate_limit_per_s: Option<u32>,
    replay_rate_limit_per_s: Option<u32>,
    reconcile_every_s: Option<u64>,
    cursor_sync_interval_ms: Option<u64>,
    filter: Option<RawFilter>,
    retry: Option<RawRetry>,
    circuit_breaker: Option<RawBreaker>,
    ack_codes: Option<RawAckCodes>,
    mllp_r2: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAckCodes {
    success: Option<Vec<String>>,
    retry: Option<Vec<String>>,
    reject: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFilter {
    #[serde(default)]
    message_types: Vec<String>,
    #[serde(default)]
    sending_facilities: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    max_attempts: Option<u32>,
    initial_backoff_ms: Option<u64>,
    max_backoff_ms: Option<u64>,
    multiplier: Option<f64>,
    jitter: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBreaker {
    failure_threshold: Option<u32>,
    open_ms: Option<u64>,
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
    frame_end_pause_ms: Option<u64>,
    max_inflight: Option<usize>,
    validation: Option<String>,
    ack_mode: Option<String>,
    #[serde(default)]
    accept_message_types: Vec<String>,
    #[serde(default)]
    accept_processing_ids: Vec<String>,
    #[serde(default)]
    accept_versions: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWal {
    segment_bytes: Option<u64>,
    segment_age_s: Option<u64>,
    preallocate: Option<bool>,
    zero_fill_segments: Option<bool>,
    fsync: Option<String>,
    batch_records_max: Option<usize>,
    open_segments_max: Option<usize>,
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
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    file: file.clone(),
                    source,
                })?;
                Self::parse(&text, &file)
            }
        }
    }

    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            file: file.into(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let invalid = |key: String, reason: String| ConfigError::Invalid {
            file: file.into(),
            key,
            reason,
        };
        if raw.listener.is_empty() {
            return Err(invalid(
                "listener".into(),
                "at least one [[listener]] is required".into(),
            ));
        }
        let mut listeners = Vec::new();
        let mut names = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for (i, l) in raw.listener.into_iter().enumerate() {
            let key = |k: &str| format!("listener[{i}].{k}");
            let parsed = listener(l, &key).map_err(|(k, r)| invalid(k, r))?;
            if !names.insert(parsed.name.clone()) {
                return Err(invalid(
                    key("name"),
                    format!("listener name `{}` is used twice", parsed.name),
                ));
            }
            if parsed.listen.port() != 0 && !addrs.insert(parsed.listen) {
                return Err(invalid(
                    key("listen"),
                    format!("{} is used by two listeners", parsed.listen),
                ));
            }
            listeners.push(parsed);
        }
        let wal = wal_config(raw.wal).map_err(|(k, r)| invalid(k, r))?;
        let retention = raw
            .retention
            .map_or(RetentionPolicy::default(), |r| RetentionPolicy {
                max_age_ms: r.max_age_s.map(|s| s.saturating_mul(1000)),
                max_bytes: r.max_bytes,
            });
        let data_dir = raw
            .data_dir
            .unwrap_or_else(|| PathBuf::from("./orderly-data"));
        if data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir".into(), "must not be empty".into()));
        }
        let read_buffer_budget_bytes = raw
            .read_buffer_budget_bytes
            .unwrap_or(READ_BUFFER_BUDGET_BYTES_DEFAULT);
        if read_buffer_budget_bytes < READ_BUFFER_BUDGET_BYTES_MIN {
            return Err(invalid(
                "read_buffer_budget_bytes".into(),
                format!("must be at least {READ_BUFFER_BUDGET_BYTES_MIN}"),
            ));
        }
        let mut destinations = Vec::new();
        let mut dest_names = BTreeSet::new();
        for (i, d) in raw.destination.into_iter().enumerate() {
            let key = |k: &str| format!("destination[{i}].{k}");
            let parsed = destination(d, &key).map_err(|(k, r)| invalid(k, r))?;
            if !dest_names.insert(parsed.name.clone()) {
                return Err(invalid(
                    key("name"),
                    format!("destination name `{}` is used twice", parsed.name),
                ));
            }
            destinations.push(parsed);
        }
        for l in &mut listeners {
            for d in destinations.iter().filter(|d| d.queue == l.queue) {
                if let Ordering::Partitioned { key, .. } = &d.ordering {
                    if !l.partition_keys.contains(key) {
                        l.partition_keys.push(*key);
                    }
                }
            }
        }
        let queues = queue_configs(raw.queue, &listeners, &destinations, retention)
            .map_err(|(k, r)| invalid(k, r))?;
        Ok(Config {
            source: file.into(),
            data_dir,
            listeners,
            wal,
            retention,
            queues,
            destinations,
            read_buffer_budget_bytes,
        })
    }

    /// Every path under `data_dir`.
    pub fn layout(&self) -> crate::layout::DataDir {
        crate::layout::DataDir::new(&self.data_dir)
    }

    /// The directory of a queue's log.
    pub fn queue_dir(&self, queue: &str) -> PathBuf {
        self.layout().queue(queue)
    }

    /// The configuration of a queue (the defaults if it is not used).
    pub fn queue(&self, name: &str) -> QueueConfig {
        self.queues
            .iter()
            .find(|q| q.name == name)
            .cloned()
            .unwrap_or_else(|| QueueConfig::with_defaults(name, self.retention))
    }

    /// Distinct queue names: those listeners feed, then those destinations read.
    pub fn queue_names(&self) -> Vec<String> {
        let mut seen = BTreeSet::new();
        let fed = self.listeners.iter().map(|l| l.queue.clone());
        let read = self.destinations.iter().map(|d| d.queue.clone());
        fed.chain(read).filter(|q| seen.insert(q.clone())).collect()
    }
}

type KeyError = (String, String);

/// One `QueueConfig` per queue in use: declared ones checked, the rest
/// defaulted. A declared queue nothing uses is an error (a typo, most
/// likely, that would otherwise leave the intended queue on defaults).
fn queue_configs(
    raw: Vec<RawQueue>,
    listeners: &[ListenerConfig],
    destinations: &[DestinationConfig],
    global: RetentionPolicy,
) -> Result<Vec<QueueConfig>, KeyError> {
    let used: Vec<&str> = listeners
        .iter()
        .map(|l| l.queue.as_str())
        .chain(destinations.iter().map(|d| d.queue.as_str()))
        .collect();
    let mut out: Vec<QueueConfig> = Vec::new();
    for (i, q) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("queue[{i}].{k}");
        check_name(&q.name).map_err(|r| (key("name"), r))?;
        if out.iter().any(|o| o.name == q.name) {
            return Err((key("name"), format!("queue `{}` is declared twice", q.name)));
        }
        if !used.contains(&q.name.as_str()) {
            return Err((
                key("name"),
                format!(
                    "queue `{}` is declared but no listener or destination names it",
                    q.name
                ),
            ));
        }
        out.push(queue_config(q, global, &key)?);
    }
    for name in used {
        if !out.iter().any(|o| o.name == name) {
            out.push(QueueConfig::with_defaults(name, global));
        }
    }
    Ok(out)
}

fn queue_config(
    q: RawQueue,
    global: RetentionPolicy,
    key: &dyn Fn(&str) -> String,
) -> Result<QueueConfig, KeyError> {
    let mut c = QueueConfig::with_defaults(&q.name, global);
    if let Some(paths) = q.idempotency_key {
        c.idempotency_key = paths
            .iter()
            .map(|p| {
                FieldPath::parse(p).map_err(|e| (key("idempotency_key"), format!("`{p}`: {e}")))
            })
            .collect::<Result<_, _>>()?;
        if c.idempotency_key.len() > IDEMPOTENCY_KEY_FIELDS_MAX {
            return Err((
                key("idempotency_key"),
                format!("at most {IDEMPOTENCY_KEY_FIELDS_MAX} fields"),
            ));
        }
    }
    if let Some(w) = q.dedupe_window_s {
        if w == 0 || w > DEDUPE_WINDOW_S_MAX {
            return Err((
                key("dedupe_window_s"),
                format!("must be between 1 and {DEDUPE_WINDOW_S_MAX} (a year)"),
            ));
        }
        c.dedupe_window_ms = w * 1000;
    }
    c.on_key_conflict = match q.on_key_conflict.as_deref() {
        None | Some("reject") => KeyConflict::Reject,
        Some("accept") => KeyConflict::Accept,
        Some(other) => {
            return Err((
                key("on_key_conflict"),
                format!("`{other}`: expected \"reject\" or \"accept\""),
            ))
        }
    };
    if let Some(n) = q.dedupe_keys_max {
        if !(1..=DEDUPE_KEYS_MAX_LIMIT).contains(&n) {
            return Err((
                key("dedupe_keys_max"),
                format!("must be between 1 and {DEDUPE_KEYS_MAX_LIMIT}"),
            ));
        }
        c.dedupe_keys_max = n;
    }
    if let Some(h) = q.retention_hours {
        if h == 0 {
            return Err((key("retention_hours"), "must be at least 1".into()));
        }
        c.retention.max_age_ms = Some(h.saturating_mul(3600 * 1000));
    }
    Ok(c)
}

fn listener(l: RawListener, key: &dyn Fn(&str) -> String) -> Result<ListenerConfig, KeyError> {
    check_name(&l.name).map_err(|r| (key("name"), r))?;
    check_name(&l.queue).map_err(|r| (key("queue"), r))?;
    let listen: SocketAddr = l.listen.parse().map_err(|e| {
        (
            key("listen"),
            format!("`{}` is not an IP:port address ({e})", l.listen),
        )
    })?;
    let max_frame_bytes = l
        .max_frame_bytes
        .unwrap_or(crate::mllp::FRAME_BYTES_MAX_DEFAULT);
    if !(1024..=RECORD_PAYLOAD_BYTES_MAX).contains(&max_frame_bytes) {
        return Err((
            key("max_frame_bytes"),
            format!("must be between 1024 and {RECORD_PAYLOAD_BYTES_MAX}"),
        ));
    }
    let max_connections = l.max_connections.unwrap_or(LISTENER_CONNECTIONS_DEFAULT);
    if !(1..=LISTENER_CONNECTIONS_MAX).contains(&max_connections) {
        return Err((
            key("max_connections"),
            format!("must be between 1 and {LISTENER_CONNECTIONS_MAX}"),
        ));
    }
    let idle_timeout_s = l.idle_timeout_s.unwrap_or(IDLE_TIMEOUT_S_DEFAULT);
    let frame_timeout_s = l.frame_timeout_s.unwrap_or(FRAME_TIMEOUT_S_DEFAULT);
    for (k, v) in [
        ("idle_timeout_s", idle_timeout_s),
        ("frame_timeout_s", frame_timeout_s),
    ] {
        if !(1..=86_400).contains(&v) {
            return Err((key(k), "must be between 1 and 86400 seconds".into()));
        }
    }
    let frame_end_pause_ms = l.frame_end_pause_ms.unwrap_or(FRAME_END_PAUSE_MS_DEFAULT);
    if !(1..=FRAME_END_PAUSE_MS_MAX).contains(&frame_end_pause_ms) {
        return Err((
            key("frame_end_pause_ms"),
            format!("must be between 1 and {FRAME_END_PAUSE_MS_MAX}"),
        ));
    }
    let max_inflight = l.max_inflight.unwrap_or(CONNECTION_INFLIGHT_DEFAULT);
    if !(1..=CONNECTION_INFLIGHT_MAX).contains(&max_inflight) {
        return Err((
            key("max_inflight"),
            format!("must be between 1 and {CONNECTION_INFLIGHT_MAX}"),
        ));
    }
    let validation = match l.validation.as_deref().unwrap_or("minimal") {
        "minimal" => ValidationLevel::Minimal,
        "none" => ValidationLevel::None,
        other => {
            return Err((
                key("validation"),
                format!("`{other}` is not one of \"none\", \"minimal\""),
            ))
        }
    };
    let ack_policy = l
        .ack_mode
        .as_deref()
        .unwrap_or("auto")
        .parse()
        .map_err(|e| (key("ack_mode"), e))?;
    let acceptance = acceptance(
        &l.accept_message_types,
        &l.accept_processing_ids,
        &l.accept_versions,
        key,
    )?;
    Ok(ListenerConfig {
        name: l.name,
        listen,
        queue: l.queue,
        max_frame_bytes,
        max_connections,
        idle_timeout_s,
        frame_timeout_s,
        frame_end_pause_ms,
        max_inflight,
        validation,
        ack_policy,
        acceptance,
        partition_keys: Vec::new(),
    })
}

fn acceptance(
    message_types: &[String],
    processing_ids: &[String],
    versions: &[String],
    key: &dyn Fn(&str) -> String,
) -> Result<Acceptance, KeyError> {
    let message_types = message_types
        .iter()
        .map(|t| Acceptance::message_type_entry(t))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|r| (key("accept_message_types"), r))?;
    for (k, list) in [
        ("accept_processing_ids", processing_ids),
        ("accept_versions", versions),
    ] {
        if let Some(bad) = list.iter().find(|v| {
            v.trim().is_empty() || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.')
        }) {
            return Err((
                key(k),
                format!("`{bad}` is not a plain value such as `P` or `2.5.1`"),
            ));
        }
    }
    Ok(Acceptance {
        message_types,
        processing_ids: processing_ids.to_vec(),
        versions: versions.to_vec(),
    })
}

/// Names become directory names and metric labels: keep them plain.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` must be 1-64 characters of A-Z, a-z, 0-9, '-' or '_'"
        ))
    }
}

fn destination(
    d: RawDestination,
    key: &dyn Fn(&str) -> String,
) -> Result<DestinationConfig, KeyError> {
    check_name(&d.name).map_err(|r| (key("name"), r))?;
    check_name(&d.queue).map_err(|r| (key("queue"), r))?;
    if d.connect
        .rsplit_once(':')
        .and_then(|(h, p)| (!h.is_empty()).then_some(p))
        .and_then(|p| p.parse::<u16>().ok())
        .is_none()
    {
        return Err((key("connect"), format!("`{}` is not HOST:PORT", d.connect)));
    }
    let ordering = match (
        d.ordering.as_deref().unwrap_or("strict"),
        d.partition_key,
        d.lanes,
    ) {
        ("strict", None, None | Some(1)) => Ordering::Strict,
        ("strict", Some(_), _) => {
            return Err((
                key("partition_key"),
                "only applies to ordering = \"partitioned\"".into(),
            ))
        }
        ("strict", None, Some(_)) => {
            return Err((
                key("lanes"),
                "only applies to ordering = \"partitioned\"".into(),
            ))
        }
        ("partitioned", None, _) => {
            return Err((
                key("partition_key"),
                "is required for ordering = \"partitioned\" (e.g. \"PID-3.1\")".into(),
            ))
        }
        ("partitioned", Some(k), lanes) => {
            let path =
                FieldPath::parse(&k).map_err(|e| (key("partition_key"), format!("`{k}`: {e}")))?;
            let lanes = lanes.unwrap_or(DESTINATION_LANES_DEFAULT);
            if !(1..=DESTINATION_LANES_MAX).contains(&lanes) {
                return Err((
                    key("lanes"),
                    format!("must be between 1 and {DESTINATION_LANES_MAX}"),
                ));
            }
            Ordering::Partitioned { key: path, lanes }
        }
        (other, _, _) => {
            return Err((
                key("ordering"),
                format!("`{other}` is not one of \"strict\", \"partitioned\""),
            ))
        }
    };
    let policy = |k: &str, v: Option<String>, default: FailurePolicy| match v.as_deref() {
        None => Ok(default),
        Some("block") => Ok(FailurePolicy::Block),
        Some("dead-letter") => Ok(FailurePolicy::DeadLetter),
        Some(other) => Err((
            key(k),
            format!("`{other}` is not one of \"block\", \"dead-letter\""),
        )),
    };
    let on_reject = policy("on_reject", d.on_reject, FailurePolicy::DeadLetter)?;
    let on_exhausted = policy("on_exhausted", d.on_exhausted, FailurePolicy::Block)?;
    let raw_codes = d.ack_codes.unwrap_or_default();
    let ack_codes = AckCodes::from_lists(
        raw_codes.success.as_deref(),
        raw_codes.retry.as_deref(),
        raw_codes.reject.as_deref(),
    )
    .map_err(|e| (key("ack_codes"), e))?;
    let ack_timeout_ms = d.ack_timeout_ms.unwrap_or(30_000);
    if !(10..=600_000).contains(&ack_timeout_ms) {
        return Err((
            key("ack_timeout_ms"),
            "must be between 10 and 600000".into(),
        ));
    }
    let cursor_sync_interval_ms = d
        .cursor_sync_interval_ms
        .unwrap_or(CURSOR_SYNC_INTERVAL_MS_DEFAULT);
    if cursor_sync_interval_ms > CURSOR_SYNC_INTERVAL_MS_MAX {
        return Err((
            key("cursor_sync_interval_ms"),
            format!("must be between 0 and {CURSOR_SYNC_INTERVAL_MS_MAX}"),
        ));
    }
    let replay_rate_limit_per_s = d
        .replay_rate_limit_per_s
        .unwrap_or(REPLAY_RATE_LIMIT_PER_S_DEFAULT);
    if !(1..=100_000).contains(&replay_rate_limit_per_s) {
        return Err((
            key("replay_rate_limit_per_s"),
            "must be between 1 and 100000 (the replay lane is always rate limited)".into(),
        ));
    }
    let reconcile_every_s = d.reconcile_every_s.unwrap_or(0);
    if reconcile_every_s != 0 && !(10..=7 * 24 * 3600).contains(&reconcile_every_s) {
        return Err((
            key("reconcile_every_s"),
            "must be 0 (never) or between 10 and 604800".into(),
        ));
    }
    let r = d.retry.unwrap_or_default();
    let retry = RetryConfig {
        max_attempts: r.max_attempts.unwrap_or(10),
        initial_backoff_ms: r.initial_backoff_ms.unwrap_or(200),
        max_backoff_ms: r.max_backoff_ms.unwrap_or(60_000),
        multiplier: r.multiplier.unwrap_or(2.0),
        jitter: r.jitter.unwrap_or(0.2),
    };
    if !(1..=RETRY_ATTEMPTS_MAX).contains(&retry.max_attempts) {
        return Err((
            key("retry.max_attempts"),
            format!("must be between 1 and {RETRY_ATTEMPTS_MAX}"),
        ));
    }
    if retry.initial_backoff_ms == 0
        || retry.max_backoff_ms < retry.initial_backoff_ms
        || retry.max_backoff_ms > 3_600_000
    {
        return Err((
            key("retry.max_backoff_ms"),
            "need 0 < initial_backoff_ms <= max_backoff_ms <= 3600000".into(),
        ));
    }
    if !(1.0..=10.0).contains(&retry.multiplier) || !(0.0..=1.0).contains(&retry.jitter) {
        return Err((
            key("retry.multiplier"),
            "multiplier must be within 1..10 and jitter within 0..1".into(),
        ));
    }
    let b = d.circuit_breaker.unwrap_or_default();
    let circuit_breaker = BreakerConfig {
        failure_threshold: b.failure_threshold.unwrap_or(5),
        open_ms: b.open_ms.unwrap_or(30_000),
    };
    if circuit_breaker.failure_threshold == 0 || circuit_breaker.open_ms == 0 {
        return Err((
            key("circuit_breaker.failure_threshold"),
            "failure_threshold and open_ms must be positive".into(),
        ));
    }
    let f = d.filter.unwrap_or_default();
    Ok(DestinationConfig {
        name: d.name,
        queue: d.queue,
        connect: d.connect,
        ordering,
        ack_timeout_ms,
        on_reject,
        on_exhausted,
        ack_codes,
        mllp_r2: d.mllp_r2.unwrap_or(false),
        rate_limit_per_s: d.rate_limit_per_s.unwrap_or(0),
        replay_rate_limit_per_s,
        reconcile_every_s,
        cursor_sync_interval_ms,
        filter: FilterConfig {
            message_types: f.message_types,
            sending_facilities: f.sending_facilities,
        },
        retry,
        circuit_breaker,
    })
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
    if let Some(z) = w.zero_fill_segments {
        c.prepare_segments = z;
    }
    if let Some(n) = w.batch_records_max {
        c.batch_records_max = n;
    }
    if let Some(n) = w.open_segments_max {
        c.open_segments_max = n;
    }
    c.fsync = match w.fsync.as_deref() {
        None | Some("always") => FsyncMode::Always,
        Some("never") => {
            tracing::warn!("wal.fsync = \"never\": acknowledged messages can be lost on power failure; for benchmarks only");
            FsyncMode::Never
        }
        Some(other) => {
            return Err((
                "wal.fsync".into(),
                format!("`{other}` is not one of \"always\", \"never\""),
            ))
        }
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
        assert!(c.wal.prepare_segments, "zero-filled spares by default");
    }

    #[test]
    fn zero_fill_segments_can_be_turned_off() {
        let text = "[[listener]]\nname='a'\nlisten='127.0.0.1:1'\nqueue='q'\n[wal]\nzero_fill_segments = false\n";
        let c = Config::parse(text, "w").expect("parses");
        assert!(!c.wal.prepare_segments);
    }

    #[test]
    fn open_segments_max_is_bounded() {
        let with = |n: usize| {
            let text = format!("[[listener]]\nname='a'\nlisten='127.0.0.1:1'\nqueue='q'\n[wal]\nopen_segments_max = {n}\n");
            Config::parse(&text, "w")
        };
        assert_eq!(with(8).expect("parses").wal.open_segments_max, 8);
        for bad in [0, crate::constants::OPEN_SEGMENTS_MAX + 1] {
            let e = with(bad).expect_err("out of range").to_string();
            assert!(e.contains("open_segments_max"), "{e}");
        }
    }

    #[test]
    fn ack_mode_and_accept_lists_are_checked_and_name_the_key() {
        let with = |extra: &str| {
            let text =
                format!("[[listener]]\nname='a'\nlisten='127.0.0.1:1'\nqueue='q'\n{extra}\n");
            Config::parse(&text, "w")
        };
        let c = with("ack_mode = 'strict'\naccept_message_types = ['ADT', 'ORU^R01']\naccept_versions = ['2.5.1']").expect("valid");
        assert_eq!(c.listeners[0].ack_policy, AckPolicy::Strict);
        assert_eq!(with("").unwrap().listeners[0].ack_policy, AckPolicy::Auto);
        for (bad, key) in [
            ("ack_mode = 'enhanced'", "ack_mode"),
            (
                "accept_message_types = ['ADT^A01^ADT_A01']",
                "accept_message_types",
            ),
            ("accept_message_types = ['']", "accept_message_types"),
            ("accept_processing_ids = ['P ']", "accept_processing_ids"),
            ("accept_versions = ['2.5;']", "accept_versions"),
        ] {
            let e = with(bad).expect_err(bad).to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
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
        assert_eq!(c.queue_names(), vec!["lab".to_string()]);
    }

    /// Issue 12: up to 1 GiB (base64 PDFs and images in OBX-5 exceed
    /// 16 MiB), nothing above, nothing below 1 KiB.
    #[test]
    fn max_frame_bytes_takes_up_to_one_gib() {
        let with = |n: u64| {
            Config::parse(
                &format!("[[listener]]\nname='l'\nlisten='127.0.0.1:1'\nqueue='q'\nmax_frame_bytes = {n}\n"),
                "t.toml",
            )
        };
        const GIB: u64 = 1 << 30;
        for ok in [1024, 16 << 20, (16 << 20) + 1, 64 << 20, GIB] {
            let c = with(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(c.listeners[0].max_frame_bytes as u64, ok);
        }
        for bad in [0, 1023, GIB + 1, 4 * GIB] {
            let e = with(bad).expect_err("out of range").to_string();
            assert!(e.contains("max_frame_bytes"), "{bad}: {e}");
        }
    }

    #[test]
    fn destination_contract_keys_parse() {
        let text = r#"
            [[listener]]
            name = "lab"
            listen = "127.0.0.1:2575"
            queue = "lab"
            [[destination]]
            name = "ehr"
            queue = "lab"
            connect = "127.0.0.1:6661"
            ordering = "partitioned"
            partition_key = "PID-3.1"
            lanes = 8
            ack_timeout_ms = 30000
            on_reject = "dead-letter"
            on_exhausted = "block"
            rate_limit_per_s = 0
            [destination.filter]
            message_types = ["ORU^R01"]
            sending_facilities = []
            [destination.retry]
            max_attempts = 10
            initial_backoff_ms = 200
            max_backoff_ms = 60000
            multiplier = 2.0
            jitter = 0.2
            [destination.circuit_breaker]
            failure_threshold = 5
            open_ms = 30000
        "#;
        let c = Config::parse(text, "d.toml").expect("valid");
        let d = &c.destinations[0];
        assert_eq!(d.lanes(), 8);
        assert_eq!(d.on_reject, FailurePolicy::DeadLetter);
        assert_eq!(d.on_exhausted, FailurePolicy::Block);
        assert_eq!(d.filter.message_types, vec!["ORU^R01".to_string()]);
        let strict_base = "[[listener]]\nname='a'\nlisten='127.0.0.1:1'\nqueue='q'\n[[destination]]\nname='d'\nqueue='q'\nconnect='h:1'\n";
        let strict = format!("{strict_base}lanes=4\n");
        assert!(Config::parse(&strict, "s")
            .unwrap_err()
            .to_string()
            .contains("destination[0].lanes"));
        let nokey = "[[listener]]\nname='a'\nlisten='127.0.0.1:1'\nqueue='q'\n[[destination]]\nname='d'\nqueue='q'\nconnect='h:1'\nordering='partitioned'\n";
        assert!(Config::parse(nokey, "s")
            .unwrap_err()
            .to_string()
            .contains("partition_key"));
        assert_eq!(d.cursor_sync_interval_ms, CURSOR_SYNC_INTERVAL_MS_DEFAULT);
        let paced = format!("{strict_base}cursor_sync_interval_ms = 0\n");
        let c = Config::parse(&paced, "p").expect("0 = back to back");
        assert_eq!(c.destinations[0].cursor_sync_interval_ms, 0);
        let too_slow = format!("{strict_base}cursor_sync_interval_ms = 1001\n");
        assert!(Config::parse(&too_slow, "p")
            .unwrap_err()
            .to_string()
            .contains("destination[0].cursor_sync_interval_ms"));
    }

    #[test]
    fn errors_name_file_key_and_reason() {
        let bad_addr = "[[listener]]\nname='a'\nlisten='nope'\nqueue='q'\n";
        let e = Config::parse(bad_addr, "x.toml").unwrap_err().to_string();
        assert!(
            e.contains("x.toml") && e.contains("listener[0].listen") && e.contains("nope"),
            "{e}"
        );
        let unknown = "[[listener]]\nname='a'\nlisten='127.0.0.1:1'\nqueue='q'\nbogus=1\n";
        let e = Config::parse(unknown, "y.toml").unwrap_err().to_string();
        assert!(e.contains("y.toml") && e.contains("bogus"), "{e}");
        let dup = "[[listener]]\nname='a'\nlisten='127.0.0.1:1'\nqueue='q'\n[[listener]]\nname='a'\nlisten='127.0.0.1:2'\nqueue='q'\n";
        assert!(Config::parse(dup, "z")
            .unwrap_err()
            .to_string()
            .contains("listener[1].name"));
        let fsync =
            "[[listener]]\nname='a'\nlisten='127.0.0.1:1'\nqueue='q'\n[wal]\nfsync='sometimes'\n";
        assert!(Config::parse(fsync, "w")
            .unwrap_err()
            .to_string()
            .contains("wal.fsync"));
        let bad_queue = "[[listener]]\nname='a'\nlisten='127.0.0.1:1'\nqueue='../etc'\n";
        assert!(Config::parse(bad_queue, "q")
            .unwrap_err()
            .to_string()
            .contains("listener[0].queue"));
    }
}
