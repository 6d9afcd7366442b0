//! Network groups: the part of an IP address one operator is likely to control (an
//! IPv4 /16, an IPv6 /48), as Bitcoin Core's address manager uses them. Limits per
//! group, rather than per address, make an eclipse cost many networks rather than a
//! few addresses.

use std::net::{IpAddr, Ipv6Addr};

/// The network group of an address, or `None` for a local one (loopback, private,
/// link-local, unique local, unspecified), which no group limit applies to: local and
/// private testnets run many nodes on one address or one /16, and an attacker on the
/// internet cannot reach a node from such addresses.
pub fn group(ip: IpAddr) -> Option<[u8; 7]> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            if v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
            {
                return None;
            }
            let [a, b, _, _] = v4.octets();
            Some([4, a, b, 0, 0, 0, 0])
        }
        IpAddr::V6(v6) => {
            if is_local_v6(&v6) {
                return None;
            }
            let o = v6.octets();
            Some([6, o[0], o[1], o[2], o[3], o[4], o[5]])
        }
    }
}

fn is_local_v6(v6: &Ipv6Addr) -> bool {
    let first = v6.segments()[0];
    v6.is_loopback()
        || v6.is_unspecified()
        // fc00::/7, unique local.
        || first & 0xfe00 == 0xfc00
        // fe80::/10, link-local.
        || first & 0xffc0 == 0xfe80
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(s: &str) -> Option<[u8; 7]> {
        group(s.parse().expect("an IP address"))
    }

    #[test]
    fn groups_are_ipv4_slash_16_and_ipv6_slash_48_and_local_addresses_have_none() {
        assert_eq!(g("203.0.113.1"), g("203.0.200.99"));
        assert_ne!(g("203.0.113.1"), g("203.1.113.1"));
        assert_eq!(g("::ffff:203.0.9.9"), g("203.0.113.1"), "IPv4-mapped");
        assert_eq!(g("2001:db8:1::1"), g("2001:db8:1:ffff::2"));
        assert_ne!(g("2001:db8:1::1"), g("2001:db8:2::1"));
        assert_ne!(
            g("2001:db8:1::1"),
            g("32.1.13.184"),
            "v4 and v6 never collide"
        );
        for local in [
            "127.0.0.1",
            "127.5.5.5",
            "10.1.2.3",
            "192.168.1.1",
            "172.16.0.1",
            "169.254.1.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert_eq!(g(local), None, "{local}");
        }
    }
}
