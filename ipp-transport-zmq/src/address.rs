//! Which addresses the transport accepts.

use crate::error::{Error, Result};

/// Checks `address` and returns it normalized (`tcp://host:port`).
///
/// Only `tcp://host:port` is supported. `*` as the host (ZeroMQ's "all interfaces") becomes
/// `0.0.0.0`. `ipc://` and `inproc://` are refused: there is no ipc
/// transport here, and inproc has no meaning across processes.
pub(crate) fn parse(address: &str) -> Result<String> {
    let bad = |reason| Error::Address {
        address: address.to_owned(),
        reason,
    };
    let Some(rest) = address.strip_prefix("tcp://") else {
        return Err(bad("only tcp://host:port addresses are supported"));
    };
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| bad("expected tcp://host:port"))?;
    if host.is_empty() {
        return Err(bad("empty host"));
    }
    if port.parse::<u16>().is_err() {
        return Err(bad("port is not a number from 0 to 65535"));
    }
    let host = if host == "*" { "0.0.0.0" } else { host };
    let bracketed = host.starts_with('[') || host.ends_with(']');
    if bracketed && !(host.starts_with('[') && host.ends_with(']') && host.len() > 2) {
        return Err(bad("unbalanced brackets around an IPv6 host"));
    }
    if !bracketed && host.contains(':') {
        return Err(bad("an IPv6 host must be in brackets: tcp://[::1]:port"));
    }
    if host.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err(bad("the host contains spaces or slashes"));
    }
    Ok(format!("tcp://{host}:{port}"))
}

/// The `host:port` part of an address [`parse`] accepted.
pub(crate) fn host_port(address: &str) -> &str {
    address.strip_prefix("tcp://").unwrap_or(address)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_addresses_are_accepted_and_star_means_all_interfaces() {
        assert_eq!(parse("tcp://127.0.0.1:0").unwrap(), "tcp://127.0.0.1:0");
        assert_eq!(parse("tcp://*:5555").unwrap(), "tcp://0.0.0.0:5555");
        assert_eq!(parse("tcp://localhost:1").unwrap(), "tcp://localhost:1");
        assert_eq!(parse("tcp://[::1]:7").unwrap(), "tcp://[::1]:7");
        assert_eq!(host_port("tcp://[::1]:7"), "[::1]:7");
    }

    #[test]
    fn other_addresses_are_refused() {
        for address in [
            "ipc:///tmp/x",
            "inproc://x",
            "tcp://127.0.0.1",
            "tcp://:5",
            "tcp://h:99999",
            "tcp://::1:5",
            "tcp://[::1:5",
            "x",
        ] {
            assert!(
                matches!(parse(address), Err(Error::Address { .. })),
                "{address}"
            );
        }
    }
}
