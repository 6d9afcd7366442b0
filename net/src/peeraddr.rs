//! A peer's address as an operator writes it: `host:port`, with the host a name or an
//! IP address (`[v6]:port`), optionally pinned to the node id it must prove:
//! `NODEID@host:port`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use grapevine_ledger::Address;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A peer to dial: a host name or IP address and a port, and the node id it must prove
/// if pinned. Names are resolved at every dial (container and cluster addresses
/// change).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerAddr {
    /// The node id (node key address) the peer must prove; `None`: any.
    pub id: Option<Address>,
    /// A DNS name or an IP address.
    pub host: String,
    /// The peer port.
    pub port: u16,
}

/// Why a peer address does not parse.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a peer address: write host:port or NODEID@host:port")]
pub struct PeerAddrError(String);

impl PeerAddr {
    /// The socket address, when the host is an IP address (no resolution needed).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.host
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, self.port))
    }
}

impl From<SocketAddr> for PeerAddr {
    fn from(a: SocketAddr) -> Self {
        PeerAddr {
            id: None,
            host: a.ip().to_string(),
            port: a.port(),
        }
    }
}

impl FromStr for PeerAddr {
    type Err = PeerAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || PeerAddrError(s.to_string());
        let (id, rest) = match s.split_once('@') {
            Some((id, rest)) => (Some(id.parse::<Address>().map_err(|_| bad())?), rest),
            None => (None, s),
        };
        let (host, port) = match rest.strip_prefix('[') {
            Some(v6) => {
                let (host, port) = v6.split_once("]:").ok_or_else(bad)?;
                host.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
                (host, port)
            }
            None => rest.rsplit_once(':').ok_or_else(bad)?,
        };
        let port: u16 = port.parse().map_err(|_| bad())?;
        let valid_host = !host.is_empty()
            && host.len() <= 253
            && (host.contains(':')
                || host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_'));
        if !valid_host || port == 0 {
            return Err(bad());
        }
        Ok(PeerAddr {
            id,
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(id) = &self.id {
            write!(f, "{id}@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Serialize for PeerAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PeerAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use grapevine_ledger::Keypair;

    #[test]
    fn parses_names_addresses_and_pinned_ids() {
        let id = Keypair::from_seed(&[1; 32]).address();
        for (text, host, port, pinned) in [
            ("validator0:26656", "validator0", 26656, false),
            ("10.0.0.1:26656", "10.0.0.1", 26656, false),
            ("[::1]:9", "::1", 9, false),
            (
                &format!("{id}@node.example.org:26656") as &str,
                "node.example.org",
                26656,
                true,
            ),
        ] {
            let a: PeerAddr = text.parse().unwrap();
            assert_eq!(
                (a.host.as_str(), a.port, a.id.is_some()),
                (host, port, pinned),
                "{text}"
            );
            assert_eq!(a.to_string(), text, "round trip");
        }
        assert_eq!(
            "10.0.0.1:26656".parse::<PeerAddr>().unwrap().socket_addr(),
            Some("10.0.0.1:26656".parse().unwrap())
        );
        assert_eq!(
            "validator0:1".parse::<PeerAddr>().unwrap().socket_addr(),
            None
        );
        for bad in [
            "validator0",
            ":26656",
            "host:0",
            "host:99999",
            "notanid@host:1",
            "bad host:1",
            "[::1:9",
            "[zz]:9",
        ] {
            assert!(bad.parse::<PeerAddr>().is_err(), "{bad}");
        }
    }
}
