//! The signer's one source of time.
//!
//! Everything in the signer that reads the time — certificate validity, CRL
//! thisUpdate, revocation dates, audit entries, replication events, health —
//! asks a [`Clock`]. Production uses [`SystemClock`]; tests that need a
//! clock set back or ahead use [`ManualClock`] (in process) or libfaketime
//! (for a whole `signerd`).
//!
//! ```
//! use signer_clock::{Clock, ManualClock};
//! let clock = ManualClock::at_ms(1_700_000_000_000);
//! clock.advance_ms(1500);
//! assert_eq!(clock.now_secs(), 1_700_000_001);
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of wall-clock time.
pub trait Clock: Send + Sync {
    /// Unix time in milliseconds.
    fn now_ms(&self) -> i64;

    /// Unix time in whole seconds.
    fn now_secs(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }

    /// Unix time in microseconds (millisecond resolution for clocks that keep no more).
    fn now_us(&self) -> i64 {
        self.now_ms().saturating_mul(1000)
    }
}

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        self.now_us().div_euclid(1000)
    }

    fn now_us(&self) -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
            // A clock before 1970 is possible on a host without an RTC battery.
            Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
        }
    }
}

/// A clock that reads what it was set to: for tests.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock reading `ms` (Unix milliseconds).
    pub fn at_ms(ms: i64) -> ManualClock {
        ManualClock(AtomicI64::new(ms))
    }

    /// Sets the time.
    pub fn set_ms(&self, ms: i64) {
        self.0.store(ms, Ordering::SeqCst);
    }

    /// Moves the time on (or back, with a negative step).
    pub fn advance_ms(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A shared clock.
pub type SharedClock = Arc<dyn Clock>;

/// The system clock, shared.
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_units_agree() {
        let c = SystemClock;
        let (s, ms) = (c.now_secs(), c.now_ms());
        assert!((ms / 1000 - s).abs() <= 1);
        assert!(s > 1_600_000_000);
    }

    #[test]
    fn manual_clock_before_1970_rounds_down() {
        let c = ManualClock::at_ms(-1);
        assert_eq!(c.now_secs(), -1);
    }
}
