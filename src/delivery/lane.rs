//! One delivery lane: reads its queue in log order, takes the messages its
//! router assigns to it, delivers each, and moves its cursor only after a
//! positive ACK (or a durable dead-letter record). A failing head is retried
//! with backoff, then handled by policy; a blocked head holds the lane (and
//! only this lane) until an operator retries or skips it.
use super::dlq::{self, Context};
use super::journal::{self, Attempt, Channel, Verdict};
use super::link::{Link, Outcome};
use super::policy::RateLimiter;
use super::policy::{backoff_ms, Jitter};
use super::{Destination, LaneCommand, LaneShared};
use crate::config::FailurePolicy;
use crate::constants::DELIVERY_POLL_MS;
use crate::cursor::CursorStore;
use crate::cursor::{clamp_to_log_start, ErrorClass, HeadState, HeadStatus, LaneCursor};
use crate::wal::meta::{MetaKey, MetaView};
use crate::wal::Log;
use crate::wal::{now_ms, Offset, OwnedRecord, WalError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(DELIVERY_POLL_MS);
/// Filtered or other-lane records skipped before the cursor is committed anyway.
const SKIPPED_BEFORE_COMMIT: u64 = 1024;
/// Damaged records one `skip` of a damaged head dead-letters after it (the
/// rest of the run needs another skip): bounds one command's time.
const DAMAGED_RUN_SKIP_MAX: usize = 10_000;
/// Messages one `clear` moves per lane (each one fsync'd dead-letter
/// append): bounds one command's time; the answer says when more remain.
const CLEAR_MAX: usize = 5_000;

pub struct Lane {
    dest: Arc<Destination>,
    lane: u16,
    stop: Arc<AtomicBool>,
    link: Link,
    jitter: Jitter,
    reader: crate::wal::LogReader,
    next: Offset,
    head: Option<HeadState>,
    /// The record at the head of the lane, once read.
    current: Option<OwnedRecord>,
    skipped_uncommitted: u64,
    /// The queue's partition lanes, or the destination's replay lane.
    channel: Channel,
    /// Journal records of attempts since the last cursor submit.
    journal: Vec<Vec<u8>>,
    /// Waiting for lane 0 to pass an unreadable record (see `fill_current`).
    stalled: bool,
}

impl Lane {
    pub fn new(
        dest: Arc<Destination>,
        channel: Channel,
        lane: u16,
        stop: Arc<AtomicBool>,
        start: LaneCursor,
    ) -> Lane {
        let log = match channel {
            Channel::Live => &dest.log,
            Channel::Replay => &dest.replay.log,
        };
        let mut next = clamp_to_log_start(&start, log.start_offset());
        if channel == Channel::Replay && next > log.end_offset() {
            // The replay log lost records its lane had already sent (a
            // restored backup): new resends would land below the cursor
            // and never go out. Go on from the log's end.
            tracing::error!(destination = %dest.config.name, cursor = next.0, end = log.end_offset().0, "replay cursor past the end of the replay log; continuing at its end (resends queued before the loss are gone: check `dlq list --status resubmitted`)");
            next = log.end_offset();
        }
        if next != start.next_offset {
            tracing::error!(destination = %dest.config.name, channel = channel.name(), lane, from = start.next_offset.0, to = next.0, "cursor points before the log's start (deleted by retention); continuing at the start");
        }
        let head = start.head.filter(|h| h.offset == next);
        let reader = log.reader(next);
        let seed = now_ms() ^ (u64::from(lane) << 32) ^ dest.config.name.len() as u64;
        let link = Link::new(
            &dest.config.connect,
            dest.config.ack_codes,
            dest.config.mllp_r2,
        );
        let l = Lane {
            dest,
            lane,
            stop,
            link,
            jitter: Jitter::new(seed),
            reader,
            next,
            head,
            current: None,
            skipped_uncommitted: 0,
            channel,
            journal: Vec::new(),
            stalled: false,
        };
        l.update_status();
        l
    }

    /// How operators name this lane: its number, or `replay`.
    fn label(&self) -> String {
        match self.channel {
            Channel::Live => self.lane.to_string(),
            Channel::Replay => "replay".into(),
        }
    }

    fn log(&self) -> &Log {
        match self.channel {
            Channel::Live => &self.dest.log,
            Channel::Replay => &self.dest.replay.log,
        }
    }

    fn cursors(&self) -> &CursorStore {
        match self.channel {
            Channel::Live => &self.dest.cursors,
            Channel::Replay => &self.dest.replay.cursors,
        }
    }

    fn shared(&self) -> &LaneShared {
        match self.channel {
            Channel::Live => &self.dest.lanes[usize::from(self.lane)],
            Channel::Replay => &self.dest.replay.lane,
        }
    }

    fn limiter(&self) -> &RateLimiter {
        match self.channel {
            Channel::Live => &self.dest.limiter,
            Channel::Replay => &self.dest.replay.limiter,
        }
    }

    /// The lane a record belongs to: the router's choice for the queue;
    /// the replay lane takes every record of its log.
    fn lane_of(
        channel: Channel,
        dest: &Destination,
        offset: Offset,
        meta: &[u8],
        payload: &[u8],
    ) -> Option<u16> {
        match channel {
            Channel::Live => dest.router.lane_of(offset, meta, payload),
            Channel::Replay => Some(0),
        }
    }

    /// The replay lane never blocks: a replayed or resubmitted message
    /// that fails goes (back) to the dead-letter queue, where it can be
    /// resubmitted again; live traffic's policy is the destination's.
    fn policy(&self, configured: FailurePolicy) -> FailurePolicy {
        match self.channel {
            Channel::Live => configured,
            Channel::Replay => FailurePolicy::DeadLetter,
        }
    }

    /// Where the head record came from in the queue, and the replay-log
    /// record that carries it (replay lane only).
    fn source_of(&self, rec: &OwnedRecord) -> (Offset, Option<Offset>) {
        match self.channel {
            Channel::Live => (rec.offset, None),
            Channel::Replay => (
                dlq::source_offset(&rec.meta).unwrap_or(Offset(u64::MAX)),
                Some(rec.offset),
            ),
        }
    }

    /// Notes an attempt for the journal; it becomes durable with the next
    /// cursor commit, before that commit.
    /// `h` is the head's failure state after this attempt (none for a
    /// first-time delivery); `ack_code` the answer's MSA-1 (`""` when
    /// nothing was sent or nothing came back).
    fn journal_attempt(&mut self, verdict: Verdict, h: Option<&HeadState>, ack_code: &str) {
        let Some(rec) = self.current.as_ref() else {
            return;
        };
        let (source_offset, replay_offset) = self.source_of(rec);
        let control_id = MetaView::new(&rec.meta)
            .get(MetaKey::ControlId)
            .unwrap_or_default();
        let attempt = Attempt {
            channel: self.channel,
            lane: self.lane,
            queue: &self.dest.config.queue,
            source_offset,
            replay_offset,
            control_id,
            attempt: h.map_or(1, |h| h.attempts),
            verdict,
            class: h.filter(|_| verdict != Verdict::Delivered).map(|h| h.class),
            ack_code,
            text: h
                .filter(|_| verdict != Verdict::Delivered)
                .map_or("", |h| h.text.as_str()),
        };
        let meta = journal::encode(&attempt, now_ms());
        self.journal.push(meta);
    }

    pub fn run(mut self) {
        // Sleeps on every downstream round trip, runs briefly between them.
        crate::sched::request_short_slice("delivery lane");
        while !self.stop.load(Ordering::Relaxed) {
            self.handle_commands(Duration::ZERO);
            if (self.channel == Channel::Live && self.dest.halted())
                || self.dest.paused.load(Ordering::Relaxed)
                || self
                    .head
                    .as_ref()
                    .is_some_and(|h| h.status == HeadStatus::Blocked)
            {
                self.handle_commands(POLL);
                continue;
            }
            match self.fill_current() {
                Ok(true) => self.attempt(),
                Ok(false) => self.wait_for_records(),
                Err(e) => self.on_unreadable(e),
            }
        }
        if self.skipped_uncommitted > 0 {
            self.commit();
        }
    }

    /// Ensures `current` holds the lane's next record; false if there is none yet.
    fn fill_current(&mut self) -> Result<bool, WalError> {
        if self.current.is_some() {
            return Ok(true);
        }
        loop {
            if self.reader.position() != self.next {
                self.reader.seek(self.next);
            }
            let rec = match self.reader.next() {
                Ok(Some(rec)) => rec,
                Ok(None) => return Ok(false),
                // A damaged record's key cannot be read: like a message
                // without one, it belongs to lane 0, which blocks on it
                // (visibly); the other lanes pass over it. A read error may
                // be transient, and then the record may be theirs: they
                // wait until lane 0 has passed it (delivered, skipped or
                // found it another lane's) and read it again first. So
                // does a damaged run holding a read error anywhere, even
                // when its first record failed its checks.
                Err(e @ (WalError::Corrupt { .. } | WalError::Unreadable { .. }))
                    if self.lane != 0 =>
                {
                    let read_error = matches!(e, WalError::Unreadable { .. })
                        || self.reader.damage_had_read_error();
                    if read_error && !lane_zero_passed(&self.dest, self.next) {
                        self.stalled = true;
                        return Ok(false);
                    }
                    // The whole damaged run at once (with a read error only
                    // as far as lane 0 has passed it).
                    let mut past = self.reader.damage_end().unwrap_or(Offset(self.next.0 + 1));
                    if read_error {
                        past = past.min(lane_zero_next(&self.dest));
                    }
                    self.pass_over_to(past.max(Offset(self.next.0 + 1)));
                    continue;
                }
                Err(e) => return Err(e),
            };
            if Self::lane_of(self.channel, &self.dest, rec.offset, rec.meta, rec.payload)
                == Some(self.lane)
            {
                self.current = Some(OwnedRecord::from(rec));
                return Ok(true);
            }
            self.pass_over();
        }
    }

    /// Moves past a record that is not this lane's.
    fn pass_over(&mut self) {
        self.pass_over_to(Offset(self.next.0 + 1));
    }

    /// Moves past records up to `end` that are not this lane's.
    fn pass_over_to(&mut self, end: Offset) {
        debug_assert!(end > self.next, "passing over moves forward");
        self.skipped_uncommitted += end.0 - self.next.0;
        self.next = end;
        if self.skipped_uncommitted >= SKIPPED_BEFORE_COMMIT {
            self.commit();
        }
    }

    fn wait_for_records(&mut self) {
        if self.skipped_uncommitted > 0 {
            self.commit();
        }
        if std::mem::take(&mut self.stalled) {
            self.handle_commands(POLL);
            return;
        }
        if !self.log().wait_for(self.next, POLL) {
            self.handle_commands(Duration::ZERO);
        }
    }

    /// One delivery attempt of `current`, unless backoff, breaker or rate limit say wait.
    fn attempt(&mut self) {
        let now = Instant::now();
        if let Some(h) = &self.head {
            let wait_ms = h.next_retry_ms.saturating_sub(now_ms());
            if wait_ms > 0 {
                self.handle_commands(Duration::from_millis(wait_ms).min(POLL));
                return;
            }
        }
        if let Err(wait) = self
            .dest
            .breaker
            .permit(now)
            .and_then(|_| self.limiter().acquire(now))
        {
            self.handle_commands(wait.min(POLL));
            return;
        }
        let rec = self.current.as_ref().expect("filled");
        let control_id = MetaView::new(&rec.meta)
            .get(MetaKey::ControlId)
            .unwrap_or_default()
            .to_vec();
        let timeout = Duration::from_millis(self.dest.config.ack_timeout_ms);
        match self
            .link
            .deliver(&rec.payload, &control_id, timeout, &self.stop)
        {
            Outcome::Delivered => {
                self.dest.breaker.record(true, Instant::now());
                let offset = rec.offset;
                let attempt = self.head.as_ref().map(|h| HeadState {
                    attempts: h.attempts + 1,
                    text: String::new(),
                    ..h.clone()
                });
                let code = self.link.last_ack_code().to_string();
                self.journal_attempt(Verdict::Delivered, attempt.as_ref(), &code);
                self.shared().delivered.fetch_add(1, Ordering::Relaxed);
                self.advance(Offset(offset.0 + 1));
            }
            Outcome::Failed { .. } if self.stop.load(Ordering::Relaxed) => {}
            Outcome::Failed { class, text, ack } => self.on_failure(class, text, ack),
        }
    }

    fn on_failure(&mut self, class: ErrorClass, text: String, ack: Option<Vec<u8>>) {
        let rec_offset = self.current.as_ref().expect("filled").offset;
        let now = now_ms();
        let mut h = self
            .head
            .take()
            .filter(|h| h.offset == rec_offset)
            .unwrap_or(HeadState {
                offset: rec_offset,
                attempts: 0,
                class,
                status: HeadStatus::Retrying,
                first_failure_ms: now,
                last_failure_ms: now,
                next_retry_ms: 0,
                text: String::new(),
            });
        h.attempts += 1;
        h.class = class;
        h.last_failure_ms = now;
        h.text =
            crate::cursor::record::truncate_utf8(&text, crate::constants::ERROR_TEXT_BYTES_MAX)
                .to_string();
        let dest = self.dest.clone();
        let cfg = &dest.config;
        let policy = if class.is_transient() {
            self.dest.breaker.record(false, Instant::now());
            if h.attempts < cfg.retry.max_attempts {
                h.status = HeadStatus::Retrying;
                h.next_retry_ms = now + backoff_ms(&cfg.retry, h.attempts, self.jitter.next_unit());
                tracing::warn!(destination = %cfg.name, channel = self.channel.name(), lane = self.lane, offset = rec_offset.0, attempts = h.attempts, class = class.name(), error = %h.text, retry_in_ms = h.next_retry_ms - now, "delivery failed; will retry");
                let code = self.link.last_ack_code().to_string();
                self.journal_attempt(Verdict::Retrying, Some(&h), &code);
                self.head = Some(h);
                self.commit();
                return;
            }
            self.policy(cfg.on_exhausted)
        } else {
            self.dest.breaker.release_trial();
            self.policy(cfg.on_reject)
        };
        match policy {
            FailurePolicy::DeadLetter => {
                let reason = if class.is_transient() {
                    "retries exhausted (on_exhausted = dead-letter)"
                } else {
                    "rejected (on_reject = dead-letter)"
                };
                // On failure the lane is blocked and the error logged by dead_letter.
                let _ = self.dead_letter(h, ack.as_deref(), reason);
            }
            FailurePolicy::Block => {
                let code = self.link.last_ack_code().to_string();
                self.block(h, &code)
            }
        }
    }

    /// Holds the lane at `h`; `ack_code` is the last answer's when an
    /// attempt just failed, `""` otherwise.
    fn block(&mut self, mut h: HeadState, ack_code: &str) {
        h.status = HeadStatus::Blocked;
        self.journal_attempt(Verdict::Blocked, Some(&h), ack_code);
        tracing::error!(destination = %self.dest.config.name, lane = self.lane, offset = h.offset.0, attempts = h.attempts, class = h.class.name(), error = %h.text, "lane blocked: nothing behind this message is delivered until an operator runs `orderly ctl retry` or `orderly ctl skip`");
        self.head = Some(h);
        self.commit();
    }

    /// Writes the head to the DLQ durably, then moves past it.
    fn dead_letter(
        &mut self,
        h: HeadState,
        ack: Option<&[u8]>,
        reason: &str,
    ) -> Result<(), String> {
        let rec = self.current.as_ref().expect("filled");
        let offset = rec.offset;
        let (source_offset, replay_offset) = self.source_of(rec);
        let ctx = Context {
            destination: &self.dest.config.name,
            lane: self.lane,
            channel: self.channel,
            queue: &self.dest.config.queue,
            source_offset,
            replay_offset,
            head: &h,
            last_ack: ack,
            reason,
        };
        match dlq::dead_letter(&self.dest.dlq, rec, &ctx) {
            Ok(a) => {
                tracing::warn!(destination = %self.dest.config.name, channel = self.channel.name(), lane = self.lane, offset = source_offset.0, dlq_offset = a.offset.0, class = h.class.name(), %reason, "message dead-lettered");
                let code = ack.map(journal::ack_code).unwrap_or_default();
                self.journal_attempt(Verdict::DeadLettered, Some(&h), &code);
                self.shared().dead_lettered.fetch_add(1, Ordering::Relaxed);
                self.advance(Offset(offset.0 + 1));
                Ok(())
            }
            Err(e) => {
                let mut h = h;
                h.text = format!("dead-letter write failed: {e}");
                let msg = h.text.clone();
                self.block(h, "");
                // Read it again on retry: for a damaged head `current` held
                // only what was left of its bytes, never to be sent.
                self.current = None;
                Err(msg)
            }
        }
    }

    fn on_unreadable(&mut self, e: WalError) {
        match e {
            WalError::Deleted { start, .. } => {
                tracing::error!(destination = %self.dest.config.name, lane = self.lane, from = self.next.0, to = start.0, "records deleted by retention before delivery; continuing at the queue start");
                self.next = start;
                self.commit();
            }
            other => {
                // `current` stays empty: a retry reads the record again, and
                // only a skip dead-letters what is left of it.
                let class = match other {
                    WalError::Unreadable { .. } => ErrorClass::Unreadable,
                    _ => ErrorClass::Corrupt,
                };
                let now = now_ms();
                let h = HeadState {
                    offset: self.next,
                    attempts: 1,
                    class,
                    status: HeadStatus::Blocked,
                    first_failure_ms: now,
                    last_failure_ms: now,
                    next_retry_ms: 0,
                    text: other.to_string(),
                };
                self.block(h, "");
            }
        }
    }

    fn advance(&mut self, next: Offset) {
        self.next = next;
        self.head = None;
        self.current = None;
        self.commit();
        while !self.cursors().wait_lead(self.lane, POLL) && !self.stop.load(Ordering::Relaxed) {
            // A failed cursor store answers at once; wait here instead of spinning.
            let wait = if self.cursors().failure().is_some() {
                POLL
            } else {
                Duration::ZERO
            };
            self.handle_commands(wait);
        }
    }

    fn commit(&mut self) {
        self.skipped_uncommitted = 0;
        let next = self.head.as_ref().map_or(self.next, |h| h.offset);
        let journal = std::mem::take(&mut self.journal);
        self.cursors().submit_with_journal(
            self.lane,
            LaneCursor {
                next_offset: next,
                head: self.head.clone(),
            },
            journal,
        );
        self.update_status();
    }

    fn update_status(&self) {
        let mut s = self.shared().status.lock();
        s.next_offset = self.head.as_ref().map_or(self.next, |h| h.offset);
        s.head = self.head.clone();
    }

    /// Runs operator commands, waiting up to `wait` for the first.
    fn handle_commands(&mut self, wait: Duration) {
        let rx = self.shared().commands.1.clone();
        let first = if wait.is_zero() {
            rx.try_recv().ok()
        } else {
            rx.recv_timeout(wait).ok()
        };
        let mut cmd = first;
        while let Some(c) = cmd {
            self.run_command(c);
            cmd = rx.try_recv().ok();
        }
    }

    fn run_command(&mut self, cmd: LaneCommand) {
        match cmd {
            LaneCommand::Wake => {}
            LaneCommand::Retry(reply) => {
                let result = match self.head.as_mut() {
                    Some(h) => {
                        h.status = HeadStatus::Retrying;
                        h.attempts = 0;
                        h.next_retry_ms = 0;
                        tracing::info!(destination = %self.dest.config.name, lane = self.lane, offset = h.offset.0, "operator retry");
                        self.commit();
                        Ok(())
                    }
                    None => Err(format!(
                        "lane {} has no failed message at its head",
                        self.label()
                    )),
                };
                let _ = reply.send(result);
            }
            LaneCommand::ResetCursor(target, reply) => {
                let _ = reply.send(Ok(self.reset_cursor(target)));
            }
            LaneCommand::Clear(reason, reply) => {
                let _ = reply.send(self.clear(&reason));
            }
            LaneCommand::Skip(reason, reply) => {
                let result = match self.head.clone() {
                    Some(h) => self.skip(h, &reason),
                    None => Err(format!(
                        "lane {} has no failed message at its head",
                        self.label()
                    )),
                };
                let _ = reply.send(result);
            }
        }
    }

    /// Moves the cursor down to `target` (never up); the head's failure
    /// state goes with it if the head is at or after `target`.
    fn reset_cursor(&mut self, target: Offset) -> String {
        let at = self.head.as_ref().map_or(self.next, |h| h.offset);
        if at <= target {
            return format!("lane {}: at {at}, unchanged", self.label());
        }
        tracing::warn!(destination = %self.dest.config.name, lane = self.lane, from = at.0, to = target.0, "operator reset-cursor: messages from the new cursor on are delivered (again)");
        self.next = target;
        self.head = None;
        self.current = None;
        self.commit();
        format!("lane {}: {at} -> {target}", self.label())
    }

    fn skip(&mut self, h: HeadState, reason: &str) -> Result<(), String> {
        let mut h = h;
        if self.current.as_ref().is_none_or(|c| c.offset != h.offset) {
            let (rec, damage) = self.record_to_dead_letter(&h)?;
            if let Some(class) = damage {
                h.class = class;
            }
            self.current = Some(rec);
        }
        let reason = format!("operator skip: {reason}");
        tracing::warn!(destination = %self.dest.config.name, lane = self.lane, offset = h.offset.0, %reason, "operator skip");
        let damaged = matches!(h.class, ErrorClass::Corrupt | ErrorClass::Unreadable);
        self.dead_letter(h, None, &reason)?;
        if damaged {
            self.skip_damaged_run(&reason)?;
        }
        Ok(())
    }

    /// Dead-letters every message of this lane from its cursor to the
    /// log's end as it is now (class `cleared`, the operator's reason),
    /// each durable before the cursor passes it. Bounded per command; the
    /// answer says how many remain. A damaged record stops it (it needs a
    /// `skip`, which keeps what is left of its bytes).
    fn clear(&mut self, reason: &str) -> Result<String, String> {
        let end = self.log().end_offset();
        let reason = format!("operator clear: {reason}");
        let mut moved = 0usize;
        while self.next < end && moved < CLEAR_MAX {
            match self.fill_current() {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    return Err(format!(
                        "lane {}: {moved} message(s) moved, then offset {} cannot be read ({e}): skip it first",
                        self.label(), self.next
                    ))
                }
            }
            let offset = self.current.as_ref().expect("filled").offset;
            if offset >= end {
                break;
            }
            let now = now_ms();
            let h = match self.head.take().filter(|h| h.offset == offset) {
                Some(mut h) => {
                    h.text = format!("cleared while {}: {}", h.class.name(), h.text);
                    h.class = ErrorClass::Cleared;
                    h
                }
                None => HeadState {
                    offset,
                    attempts: 0,
                    class: ErrorClass::Cleared,
                    status: HeadStatus::Retrying,
                    first_failure_ms: now,
                    last_failure_ms: now,
                    next_retry_ms: 0,
                    text: "cleared by an operator before delivery".into(),
                },
            };
            self.dead_letter(h, None, &reason)?;
            moved += 1;
        }
        if self.skipped_uncommitted > 0 {
            self.commit();
        }
        let left = end.0.saturating_sub(self.next.0);
        tracing::warn!(destination = %self.dest.config.name, lane = self.lane, moved, %reason, "operator clear: pending messages moved to the dead-letter queue");
        Ok(if left > 0 && moved >= CLEAR_MAX {
            format!("lane {}: {moved} message(s) moved to the dead-letter queue; more remain, run clear again", self.label())
        } else {
            format!(
                "lane {}: {moved} message(s) moved to the dead-letter queue",
                self.label()
            )
        })
    }

    /// After a damaged head is skipped, the damaged records right after it
    /// (one damage event: a torn write, a bad sector) go to the dead-letter
    /// queue too, each with what is left of its bytes: one operator decision
    /// per damaged run, not per record. Bounded per command.
    fn skip_damaged_run(&mut self, reason: &str) -> Result<(), String> {
        for _ in 0..DAMAGED_RUN_SKIP_MAX {
            if self.next >= self.log().end_offset() {
                return Ok(());
            }
            let class = match self.log().read(self.next) {
                Err(WalError::Corrupt { .. }) => ErrorClass::Corrupt,
                Err(WalError::Unreadable { .. }) => ErrorClass::Unreadable,
                _ => return Ok(()),
            };
            let now = now_ms();
            let h = HeadState {
                offset: self.next,
                attempts: 0,
                class,
                status: HeadStatus::Blocked,
                first_failure_ms: now,
                last_failure_ms: now,
                next_retry_ms: 0,
                text: "damaged record in the run the operator skipped".into(),
            };
            let (rec, _) = self.record_to_dead_letter(&h)?;
            self.current = Some(rec);
            self.dead_letter(h, None, reason)?;
        }
        Ok(())
    }

    /// The head record for a dead-letter copy: the record itself, or, if it
    /// is damaged, what is left of its bytes (payload if its header still
    /// parses) with no metadata, and the class of the damage.
    fn record_to_dead_letter(
        &self,
        h: &HeadState,
    ) -> Result<(OwnedRecord, Option<ErrorClass>), String> {
        let remains = |payload: Vec<u8>| OwnedRecord {
            offset: h.offset,
            timestamp_ms: 0,
            meta: Vec::new(),
            payload,
        };
        match self.log().read(h.offset) {
            Ok(rec) => Ok((rec, None)),
            Err(e @ (WalError::Corrupt { .. } | WalError::Unreadable { .. })) => {
                let class = match e {
                    WalError::Unreadable { .. } => ErrorClass::Unreadable,
                    _ => ErrorClass::Corrupt,
                };
                let bytes = self.log().damaged_bytes(h.offset).ok().flatten();
                Ok((remains(bytes.unwrap_or_default()), Some(class)))
            }
            Err(WalError::Deleted { .. }) => Ok((remains(Vec::new()), None)),
            Err(e) => Err(format!(
                "cannot read offset {} to dead-letter it: {e}; nothing was skipped",
                h.offset.0
            )),
        }
    }
}

/// Whether lane 0 of `dest` has moved past `offset`.
fn lane_zero_passed(dest: &Destination, offset: Offset) -> bool {
    lane_zero_next(dest) > offset
}

/// The next offset lane 0 will read: it has passed everything below.
fn lane_zero_next(dest: &Destination) -> Offset {
    dest.lanes[0].status.lock().next_offset
}
