//! Retry backoff with jitter, the per-destination circuit breaker, and the
//! per-destination rate limiter. Pure state machines over a clock value.
use crate::config::{BreakerConfig, RetryConfig};
use parking_lot::Mutex;
use std::time::{Duration, Instant};

/// Delay before attempt `attempts + 1`, given `attempts` failures so far:
/// `initial * multiplier^(attempts-1)`, capped, then spread by ±`jitter`.
pub fn backoff_ms(r: &RetryConfig, attempts: u32, unit_random: f64) -> u64 {
    debug_assert!((0.0..=1.0).contains(&unit_random));
    let exp = r.multiplier.powi(attempts.saturating_sub(1).min(64) as i32);
    let base = (r.initial_backoff_ms as f64 * exp).min(r.max_backoff_ms as f64);
    let spread = 1.0 + r.jitter * (2.0 * unit_random - 1.0);
    (base * spread).max(1.0) as u64
}

/// A small xorshift generator for jitter: no need for cryptographic randomness.
pub struct Jitter(u64);

impl Jitter {
    pub fn new(seed: u64) -> Self {
        Jitter(seed | 1)
    }

    /// A value in `[0, 1]`.
    pub fn next_unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One trial attempt is allowed; `trial` says whether it is taken.
    HalfOpen {
        trial: bool,
    },
}

/// Closed → (failure_threshold consecutive transient failures) → Open for
/// `open_ms` → HalfOpen: one trial; success closes, failure reopens.
pub struct Breaker {
    config: BreakerConfig,
    state: Mutex<BreakerState>,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Breaker {
            config,
            state: Mutex::new(BreakerState::Closed { failures: 0 }),
        }
    }

    /// `Ok(())` if an attempt may go now, else how long to wait.
    pub fn permit(&self, now: Instant) -> Result<(), Duration> {
        let mut s = self.state.lock();
        match *s {
            BreakerState::Closed { .. } => Ok(()),
            BreakerState::Open { until } if now < until => Err(until - now),
            BreakerState::Open { .. } | BreakerState::HalfOpen { trial: false } => {
                *s = BreakerState::HalfOpen { trial: true };
                Ok(())
            }
            BreakerState::HalfOpen { trial: true } => Err(Duration::from_millis(50)),
        }
    }

    pub fn record(&self, success: bool, now: Instant) {
        let mut s = self.state.lock();
        *s = match (*s, success) {
            (_, true) => BreakerState::Closed { failures: 0 },
            (BreakerState::Closed { failures }, false)
                if failures + 1 < self.config.failure_threshold =>
            {
                BreakerState::Closed {
                    failures: failures + 1,
                }
            }
            (_, false) => {
                tracing::warn!(open_ms = self.config.open_ms, "circuit breaker open");
                BreakerState::Open {
                    until: now + Duration::from_millis(self.config.open_ms),
                }
            }
        };
    }

    /// An attempt that ended without telling us anything about the
    /// downstream (e.g. a permanent rejection) releases a half-open trial.
    pub fn release_trial(&self) {
        let mut s = self.state.lock();
        if *s == (BreakerState::HalfOpen { trial: true }) {
            *s = BreakerState::Closed { failures: 0 };
        }
    }

    pub fn state(&self) -> BreakerState {
        *self.state.lock()
    }
}

/// Token bucket: `rate` tokens a second, burst of one second's worth.
pub struct RateLimiter {
    rate: f64,
    bucket: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    /// `rate_per_s == 0` means unlimited.
    pub fn new(rate_per_s: u32) -> Self {
        RateLimiter {
            rate: f64::from(rate_per_s),
            bucket: Mutex::new((f64::from(rate_per_s), Instant::now())),
        }
    }

    /// Takes a token, or says how long until one is there.
    pub fn acquire(&self, now: Instant) -> Result<(), Duration> {
        if self.rate == 0.0 {
            return Ok(());
        }
        let mut b = self.bucket.lock();
        let refill = now.saturating_duration_since(b.1).as_secs_f64() * self.rate;
        b.0 = (b.0 + refill).min(self.rate.max(1.0));
        b.1 = now;
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.0) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry() -> RetryConfig {
        RetryConfig {
            max_attempts: 10,
            initial_backoff_ms: 200,
            max_backoff_ms: 60_000,
            multiplier: 2.0,
            jitter: 0.2,
        }
    }

    #[test]
    fn backoff_grows_exponentially_within_jitter_and_cap() {
        let r = retry();
        assert_eq!(backoff_ms(&r, 1, 0.5), 200);
        assert_eq!(backoff_ms(&r, 2, 0.5), 400);
        assert_eq!(backoff_ms(&r, 4, 0.5), 1600);
        assert_eq!(backoff_ms(&r, 30, 0.5), 60_000);
        assert_eq!(backoff_ms(&r, 1, 0.0), 160);
        assert_eq!(backoff_ms(&r, 1, 1.0), 240);
        let mut j = Jitter::new(7);
        assert!((0..1000)
            .map(|_| j.next_unit())
            .all(|u| (0.0..=1.0).contains(&u)));
    }

    #[test]
    fn breaker_opens_after_threshold_then_allows_one_trial() {
        let b = Breaker::new(BreakerConfig {
            failure_threshold: 3,
            open_ms: 1000,
        });
        let t0 = Instant::now();
        for _ in 0..2 {
            b.record(false, t0);
            assert!(b.permit(t0).is_ok());
        }
        b.record(false, t0);
        assert!(b.permit(t0 + Duration::from_millis(500)).is_err(), "open");
        let later = t0 + Duration::from_millis(1001);
        assert!(b.permit(later).is_ok(), "half-open trial");
        assert!(b.permit(later).is_err(), "only one trial");
        b.record(false, later);
        assert!(matches!(b.state(), BreakerState::Open { .. }));
        let much_later = later + Duration::from_millis(1001);
        assert!(b.permit(much_later).is_ok());
        b.record(true, much_later);
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
    }

    #[test]
    fn rate_limiter_spaces_tokens() {
        let r = RateLimiter::new(10);
        let t = Instant::now();
        let granted = (0..20).filter(|_| r.acquire(t).is_ok()).count();
        assert_eq!(granted, 10, "one second of burst");
        assert!(
            r.acquire(t + Duration::from_millis(100)).is_ok(),
            "refilled"
        );
        assert!(RateLimiter::new(0).acquire(t).is_ok());
    }
}
