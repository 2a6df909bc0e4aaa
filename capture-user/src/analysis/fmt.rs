//! Times, durations and addresses as people read them in texts (the bottom of the analysis
//! chain, so that every output prints them alike).

/// A reference-clock time as UTC `HH:MM:SS.mmmuuu` (what people read in summaries).
pub fn fmt_time(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let sub = ns.rem_euclid(1_000_000_000);
    let day = secs.rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}.{:06}", day / 3600, day / 60 % 60, day % 60, sub / 1000)
}

/// A duration with a unit that fits it: ns, µs, ms or s.
pub fn fmt_ns(ns: i64) -> String {
    let a = ns.unsigned_abs();
    let sign = if ns < 0 { "-" } else { "" };
    if a >= 1_000_000_000 {
        format!("{sign}{:.3} s", a as f64 / 1e9)
    } else if a >= 1_000_000 {
        format!("{sign}{:.3} ms", a as f64 / 1e6)
    } else if a >= 1_000 {
        format!("{sign}{:.1} µs", a as f64 / 1e3)
    } else {
        format!("{sign}{a} ns")
    }
}

/// An address as every output prints it: IPv6 in brackets, so that a port can follow.
pub fn fmt_addr(a: std::net::IpAddr) -> String {
    match a {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// An address and port: `10.0.0.1:7000`, `[fd00::1]:7000`.
pub fn fmt_endpoint(a: std::net::IpAddr, port: u16) -> String {
    format!("{}:{port}", fmt_addr(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_wrap_at_midnight_and_keep_microseconds() {
        assert_eq!(fmt_time(0), "00:00:00.000000");
        assert_eq!(fmt_time(86_400_000_000_000 + 3_723_000_456_789), "01:02:03.000456");
        assert_eq!(fmt_time(-1_000), "23:59:59.999999");
    }

    #[test]
    fn ipv6_endpoints_are_bracketed_and_ipv4_ones_are_not() {
        assert_eq!(fmt_endpoint("10.0.0.1".parse().unwrap(), 7000), "10.0.0.1:7000");
        assert_eq!(fmt_endpoint("fd00::1".parse().unwrap(), 7000), "[fd00::1]:7000");
        assert_eq!(fmt_addr("fd00::1".parse().unwrap()), "[fd00::1]");
    }

    #[test]
    fn durations_pick_their_unit() {
        assert_eq!(fmt_ns(999), "999 ns");
        assert_eq!(fmt_ns(1_500), "1.5 µs");
        assert_eq!(fmt_ns(-2_500_000), "-2.500 ms");
        assert_eq!(fmt_ns(3_000_000_000), "3.000 s");
    }
}
