//! Duration strings understood by both Istio (Go `time.ParseDuration`, CEL `duration()`) and
//! Envoy (protobuf JSON `Duration`): whole seconds as `"30s"`, otherwise seconds with exactly
//! three fractional digits (`"0.250s"`).

/// Formats milliseconds (rounded to whole ms; negative or NaN → 0) as `"<s>s"` or `"<s>.<ms>s"`.
pub fn format_ms(ms: f64) -> String {
    let ms = if ms.is_finite() && ms > 0.0 {
        ms.round() as u64
    } else {
        0
    };
    let (s, frac) = (ms / 1000, ms % 1000);
    if frac == 0 {
        format!("{s}s")
    } else {
        format!("{s}.{frac:03}s")
    }
}

/// Parses a Go duration string (`"1h2m3.5s"`, `"250ms"`, `"0s"`) into milliseconds.
/// Returns `None` for anything Go's `time.ParseDuration` would refuse (a sign is refused too:
/// meshtune never writes negative durations).
pub fn parse_go_ms(s: &str) -> Option<f64> {
    if s == "0" {
        return Some(0.0);
    }
    if s.is_empty() {
        return None;
    }
    let mut rest = s;
    let mut total = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num = &rest[..num_len];
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return None;
        }
        let value: f64 = num.parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-6,
            "us" | "µs" | "μs" => 1e-3,
            "ms" => 1.0,
            "s" => 1e3,
            "m" => 60e3,
            "h" => 3600e3,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_whole_and_fractional_seconds() {
        assert_eq!(format_ms(30_000.0), "30s");
        assert_eq!(format_ms(0.0), "0s");
        assert_eq!(format_ms(250.0), "0.250s");
        assert_eq!(format_ms(1_500.4), "1.500s");
        assert_eq!(format_ms(10.0), "0.010s");
        assert_eq!(format_ms(-5.0), "0s");
        assert_eq!(format_ms(f64::NAN), "0s");
    }

    #[test]
    fn formatted_durations_parse_back_as_go_durations() {
        for ms in [0.0, 1.0, 10.0, 250.0, 999.0, 1_000.0, 61_001.0, 300_000.0] {
            assert_eq!(parse_go_ms(&format_ms(ms)), Some(ms), "{ms}");
        }
    }

    #[test]
    fn parses_go_syntax_and_refuses_garbage() {
        assert_eq!(parse_go_ms("1h2m3.5s"), Some(3_723_500.0));
        assert_eq!(parse_go_ms("250ms"), Some(250.0));
        assert_eq!(parse_go_ms("1500us"), Some(1.5));
        for bad in ["", "10", "1x", "s", "1.2.3s", "-1s", "1 s", "abc"] {
            assert_eq!(parse_go_ms(bad), None, "{bad:?}");
        }
    }
}
