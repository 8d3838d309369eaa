//! Which addresses the transport accepts, in the form the `zeromq` crate parses.

use crate::error::{Error, Result};

/// Checks `address` and returns it as the `zeromq` crate wants it.
///
/// Only `tcp://host:port` is supported. `*` as the host (ZeroMQ's "all interfaces") becomes
/// `0.0.0.0`. `ipc://` and `inproc://` are refused: the `zeromq` build used here has no ipc
/// transport, and inproc has no meaning across processes.
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
    let normalized = format!("tcp://{host}:{port}");
    // Let the crate's own parser have the last word (hosts, IPv6 brackets).
    normalized
        .parse::<zeromq::Endpoint>()
        .map_err(|_| bad("the zeromq crate cannot parse it"))?;
    Ok(normalized)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_addresses_are_accepted_and_star_means_all_interfaces() {
        assert_eq!(parse("tcp://127.0.0.1:0").unwrap(), "tcp://127.0.0.1:0");
        assert_eq!(parse("tcp://*:5555").unwrap(), "tcp://0.0.0.0:5555");
        assert_eq!(parse("tcp://localhost:1").unwrap(), "tcp://localhost:1");
    }

    #[test]
    fn other_addresses_are_refused() {
        for address in [
            "ipc:///tmp/x",
            "inproc://x",
            "tcp://127.0.0.1",
            "tcp://:5",
            "tcp://h:99999",
            "x",
        ] {
            assert!(
                matches!(parse(address), Err(Error::Address { .. })),
                "{address}"
            );
        }
    }
}
