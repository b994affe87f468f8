//! Go-style durations ("10s", "1m30s", "500ms", "72h"), the spelling Consul uses in its API
//! and config, so that definitions copied from Consul keep working.

use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a duration (use e.g. \"10s\", \"1m30s\", \"500ms\")")]
pub struct DurationError {
    pub input: String,
}

/// Parses a Go duration. A bare number is taken as seconds only if it is `0`.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let err = || DurationError {
        input: input.to_string(),
    };
    let s = input.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(err());
    }
    let mut total: u128 = 0; // nanoseconds
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        if num_end == 0 {
            return Err(err());
        }
        let (num, tail) = rest.split_at(num_end);
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(err()),
        };
        let (int, frac) = match num.split_once('.') {
            Some((i, f)) => (i, f),
            None => (num, ""),
        };
        if int.is_empty() && frac.is_empty() {
            return Err(err());
        }
        let int: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| err())?
        };
        let mut part = int.checked_mul(scale).ok_or_else(err)?;
        if !frac.is_empty() {
            let digits = frac.len().min(18) as u32;
            let f: u128 = frac[..digits as usize].parse().map_err(|_| err())?;
            part = part
                .checked_add(f * scale / 10u128.pow(digits))
                .ok_or_else(err)?;
        }
        total = total.checked_add(part).ok_or_else(err)?;
        rest = tail;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| err())?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// Formats a duration the way Go prints it (used when echoing definitions back).
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if ms.is_multiple_of(3_600_000) {
        format!("{}h0m0s", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        let m = ms / 60_000;
        if m >= 60 {
            format!("{}h{}m0s", m / 60, m % 60)
        } else {
            format!("{m}m0s")
        }
    } else if ms.is_multiple_of(1000) {
        let s = ms / 1000;
        if s >= 60 {
            let m = s / 60;
            if m >= 60 {
                format!("{}h{}m{}s", m / 60, m % 60, s % 60)
            } else {
                format!("{m}m{}s", s % 60)
            }
        } else {
            format!("{s}s")
        }
    } else if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{}s", ms as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("72h").unwrap(), Duration::from_secs(72 * 3600));
        assert_eq!(parse("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse("0").unwrap(), Duration::ZERO);
        assert_eq!(parse("0s").unwrap(), Duration::ZERO);
        for bad in [
            "",
            "10",
            "s",
            "10x",
            "-1s",
            "1..5s",
            "99999999999999999999999h",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format(Duration::from_secs(10)), "10s");
        assert_eq!(format(Duration::from_secs(90)), "1m30s");
        assert_eq!(format(Duration::from_secs(300)), "5m0s");
        assert_eq!(format(Duration::from_millis(250)), "250ms");
        assert_eq!(format(Duration::ZERO), "0s");
    }
}
