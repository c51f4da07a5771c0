//! Times on the command line: RFC 3339 (`2026-11-27T08:00:00Z`,
//! `2026-11-27T09:00:00+01:00`, fractions allowed) or relative to now
//! (`90s`, `30m`, `2h`, `7d`: that long ago). Returned as ms since the epoch.

/// Parses `text` (see the module doc) against `now_ms`.
pub fn parse_time(text: &str, now_ms: u64) -> Result<u64, String> {
    let t = text.trim();
    if let Some(ms) = relative_ms(t) {
        return Ok(now_ms.saturating_sub(ms));
    }
    rfc3339_ms(t).ok_or_else(|| {
        format!("`{text}`: expected RFC 3339 (2026-11-27T08:00:00Z) or a duration ago (90s, 30m, 2h, 7d)")
    })
}

fn relative_ms(t: &str) -> Option<u64> {
    let unit = t.chars().last()?;
    let n: u64 = t[..t.len() - unit.len_utf8()].parse().ok()?;
    let per = match unit {
        's' => 1_000,
        'm' => 60_000,
        'h' => 3_600_000,
        'd' => 86_400_000,
        _ => return None,
    };
    n.checked_mul(per)
}

fn rfc3339_ms(t: &str) -> Option<u64> {
    let b = t.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = t.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut rest = &t[19..];
    let mut frac_ms = 0i64;
    if let Some(f) = rest.strip_prefix('.') {
        let digits = f.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let ms_digits = &f[..digits.min(3)];
        frac_ms = ms_digits.parse::<i64>().ok()? * 10i64.pow(3 - ms_digits.len() as u32);
        rest = &f[digits..];
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6
            && rest.is_ascii()
            && (rest.starts_with('+') || rest.starts_with('-'))
            && &rest[3..4] == ":" =>
        {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            let oh: i64 = rest[1..3].parse().ok()?;
            let om: i64 = rest[4..6].parse().ok()?;
            sign * (oh * 60 + om)
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3600 + mi * 60 + s - offset_min * 60;
    u64::try_from(secs * 1000 + frac_ms).ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A UTF-8 character across the offset's colon position made the
    /// byte slice panic (the CLI died instead of saying the time is bad).
    #[test]
    fn a_non_ascii_offset_is_an_error_not_a_panic() {
        assert!(parse_time("2026-11-27T08:00:00+a\u{e9}00", 0).is_err());
    }

    #[test]
    fn rfc3339_matches_known_epoch_values() {
        // Values from `date -u -d ... +%s`.
        assert_eq!(parse_time("1970-01-01T00:00:00Z", 0), Ok(0));
        assert_eq!(parse_time("2026-11-27T08:00:00Z", 0), Ok(1_795_766_400_000));
        assert_eq!(
            parse_time("2026-11-27T09:00:00+01:00", 0),
            Ok(1_795_766_400_000)
        );
        assert_eq!(
            parse_time("2024-02-29T12:34:56.789Z", 0),
            Ok(1_709_210_096_789)
        );
        assert_eq!(
            parse_time("2000-03-01T00:00:00-05:30", 0),
            Ok(951_888_600_000)
        );
    }

    #[test]
    fn relative_times_count_back_from_now() {
        let now = 10_000_000;
        assert_eq!(parse_time("90s", now), Ok(now - 90_000));
        assert_eq!(parse_time("2h", now), Ok(now - 7_200_000));
        assert_eq!(parse_time("7d", now + 604_800_000), Ok(now));
    }

    #[test]
    fn nonsense_is_refused() {
        for bad in [
            "",
            "h",
            "2x",
            "2026-11-27",
            "2026-13-01T00:00:00Z",
            "2026-11-27T08:00:00",
            "yesterday",
        ] {
            assert!(parse_time(bad, 0).is_err(), "{bad}");
        }
    }
}
