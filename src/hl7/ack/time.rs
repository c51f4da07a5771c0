//! The HL7 DTM timestamp written into an ACK's MSH-7.
//!
//! Built from Unix seconds with a pure calendar conversion (UTC), so the ACK
//! builder stays deterministic and reads no clock itself.

use std::time::{SystemTime, UNIX_EPOCH};

/// A UTC time formatted as `YYYYMMDDHHMMSS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Hl7Timestamp([u8; 14]);

impl Hl7Timestamp {
    /// The timestamp for `secs` seconds after 1970-01-01T00:00:00Z
    /// (years past 9999 are clamped to 9999-12-31T23:59:59).
    pub fn from_unix_seconds(secs: u64) -> Hl7Timestamp {
        const MAX: u64 = 253_402_300_799; // 9999-12-31T23:59:59Z
        let secs = secs.min(MAX);
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (y, m, d) = civil_from_days(days);
        let mut out = [0u8; 14];
        write_digits(&mut out[0..4], y);
        write_digits(&mut out[4..6], m);
        write_digits(&mut out[6..8], d);
        write_digits(&mut out[8..10], rem / 3600);
        write_digits(&mut out[10..12], rem / 60 % 60);
        write_digits(&mut out[12..14], rem % 60);
        Hl7Timestamp(out)
    }

    /// The timestamp of a `SystemTime` (times before 1970 become 1970).
    pub fn from_system_time(time: SystemTime) -> Hl7Timestamp {
        let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Hl7Timestamp::from_unix_seconds(secs)
    }

    /// The 14 ASCII digits.
    pub fn as_bytes(&self) -> &[u8; 14] {
        &self.0
    }
}

fn write_digits(out: &mut [u8], mut value: u64) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Howard Hinnant's days-to-civil algorithm, for days since 1970-01-01.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants_format_as_dtm() {
        assert_eq!(
            Hl7Timestamp::from_unix_seconds(0).as_bytes(),
            b"19700101000000"
        );
        // 2000-02-29T12:34:56Z, a leap day.
        assert_eq!(
            Hl7Timestamp::from_unix_seconds(951_827_696).as_bytes(),
            b"20000229123456"
        );
        assert_eq!(
            Hl7Timestamp::from_unix_seconds(u64::MAX).as_bytes(),
            b"99991231235959"
        );
    }
}
