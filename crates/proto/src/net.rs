//! Where secrets may travel in the clear.

/// True for a URL host that names this machine: `localhost` (any case), an IPv4 address in
/// 127.0.0.0/8, or `::1` (with or without brackets, as URL hosts write it). Clients and agents
/// accept `http://` / `ws://` only to such a host.
pub fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for yes in [
            "localhost",
            "LocalHost",
            "127.0.0.1",
            "127.8.0.1",
            "[::1]",
            "::1",
        ] {
            assert!(is_loopback_host(yes), "{yes}");
        }
        for no in [
            "",
            "example.org",
            "localhost.evil.org",
            "127.0.0.1.evil.org",
            "10.0.0.1",
            "[::2]",
            "[::1",
        ] {
            assert!(!is_loopback_host(no), "{no}");
        }
    }
}
