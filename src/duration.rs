//! Duration parsing shared by every option: bare seconds (`1.5`, consullock style) or a number
//! with a unit (`500ms`, `15s`, `2m`, `1h30m`, Consul/Go style).

use std::time::Duration;

/// Parses `text` as a duration; the error names the bad value.
pub(crate) fn parse(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("empty duration".to_string());
    }
    if let Ok(seconds) = trimmed.parse::<f64>() {
        return from_seconds(seconds).ok_or_else(|| format!("invalid duration `{text}`"));
    }
    parse_with_units(trimmed).ok_or_else(|| {
        format!(
            "invalid duration `{text}` (use seconds like `1.5` or units like `500ms`, `15s`, `2m`)"
        )
    })
}

/// Seconds as a Duration, refusing negative, NaN and absurdly large values.
pub(crate) fn from_seconds(seconds: f64) -> Option<Duration> {
    if seconds.is_finite() && (0.0..=1e9).contains(&seconds) {
        Some(Duration::from_secs_f64(seconds))
    } else {
        None
    }
}

/// Go's `time.ParseDuration` grammar without a sign: `(<number><unit>)+`.
fn parse_with_units(text: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return None;
        }
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    from_seconds(total)
}

/// Formats a duration the way Consul's API expects (`"15s"`, `"0s"`, `"1.5s"`).
pub(crate) fn to_consul(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis % 1000 == 0 {
        format!("{}s", millis / 1000)
    } else {
        format!("{millis}ms")
    }
}

/// Human form for messages (`"15s"`, `"1.5s"`, `"250ms"`).
pub(crate) fn display(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis < 1000 {
        format!("{millis}ms")
    } else if millis % 1000 == 0 {
        format!("{}s", millis / 1000)
    } else {
        let seconds = format!("{:.3}", duration.as_secs_f64());
        format!("{}s", seconds.trim_end_matches('0').trim_end_matches('.'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_numbers_are_seconds() {
        assert_eq!(parse("15").unwrap(), Duration::from_secs(15));
        assert_eq!(parse("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse("0").unwrap(), Duration::ZERO);
    }

    #[test]
    fn units_follow_go_syntax() {
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("1.5s").unwrap(), Duration::from_millis(1500));
    }

    #[test]
    fn bad_values_are_named() {
        for bad in ["", "abc", "-1", "5x", "s", "1..2s", "NaN", "inf"] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains(bad.trim()) || bad.is_empty(), "{err}");
        }
    }

    #[test]
    fn consul_format() {
        assert_eq!(to_consul(Duration::ZERO), "0s");
        assert_eq!(to_consul(Duration::from_secs(15)), "15s");
        assert_eq!(to_consul(Duration::from_millis(1500)), "1500ms");
        assert_eq!(display(Duration::from_millis(1500)), "1.5s");
        assert_eq!(display(Duration::from_millis(9500)), "9.5s");
        assert_eq!(display(Duration::from_secs(12)), "12s");
    }
}
