//! Durations and times as admins type them: `90`, `90s`, `15m`, `2h`, `3d`, `1h30m`, and
//! times as RFC 3339, Unix seconds, or a duration meaning "that long ago".

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Parses a duration into seconds. A bare number is seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n);
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err(format!("{s:?}: unknown unit {c:?} (use s, m, h, d or w)")),
        };
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?}: a number must come before {c:?}"))?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("{s:?}: too long"))?;
        num.clear();
    }
    if !num.is_empty() {
        return Err(format!("{s:?}: the last number has no unit"));
    }
    Ok(total)
}

/// Parses a point in time: RFC 3339, Unix seconds, or a duration before `now`.
pub fn parse_time(s: &str, now: i64) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t.unix_timestamp());
    }
    if let Ok(n) = s.parse::<i64>() {
        return Ok(n);
    }
    let ago = parse_duration(s).map_err(|_| {
        format!(
            "{s:?}: expected RFC 3339 (2026-01-31T12:00:00Z), Unix seconds, or a duration ago (24h)"
        )
    })?;
    Ok(now.saturating_sub(i64::try_from(ago).unwrap_or(i64::MAX)))
}

/// Formats Unix seconds as RFC 3339 in UTC.
pub fn format_time(t: i64) -> String {
    OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.format(&Rfc3339).ok())
        .unwrap_or_else(|| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), 90);
        assert_eq!(parse_duration("15m").unwrap(), 900);
        assert_eq!(parse_duration("1h30m").unwrap(), 5400);
        assert_eq!(parse_duration("72h").unwrap(), 259_200);
        assert_eq!(parse_duration("3d").unwrap(), 259_200);
        for bad in ["", "h", "5x", "1h30", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times() {
        assert_eq!(
            parse_time("2026-01-01T00:00:00Z", 0).unwrap(),
            1_767_225_600
        );
        assert_eq!(parse_time("1000", 5000).unwrap(), 1000);
        assert_eq!(parse_time("1h", 5000).unwrap(), 1400);
        assert!(parse_time("yesterday", 0).is_err());
        assert_eq!(format_time(1_767_225_600), "2026-01-01T00:00:00Z");
    }
}
