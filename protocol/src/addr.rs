//! The one socket-address encoding on the wire: the swarm's PEX messages (spec/P2P.md §3.11)
//! and tracker announce replies (§5.1), and the hub's hints and reflected addresses
//! (spec/HUB.md) all carry addresses this way.
//!
//! ```text
//!  family u8 | addr           | port u16
//!  4         | IPv4, 4 bytes  | big-endian     (7 bytes)
//!  6         | IPv6, 16 bytes | big-endian     (19 bytes)
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{Buf, BufMut};

/// Encoded length of an IPv4 address.
pub const V4_LEN: usize = 7;
/// Encoded length of an IPv6 address.
pub const V6_LEN: usize = 19;

/// Why an address could not be decoded. Callers add their own context (message kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    #[error("truncated address: needed {needed} bytes, got {got}")]
    Truncated { needed: usize, got: usize },
    #[error("address family {0} is neither 4 nor 6")]
    BadFamily(u8),
}

/// Exact length of [`encode`]'s output for `addr`.
pub fn encoded_len(addr: &SocketAddr) -> usize {
    if addr.is_ipv4() {
        V4_LEN
    } else {
        V6_LEN
    }
}

/// Appends `addr`.
pub fn encode(addr: &SocketAddr, dst: &mut impl BufMut) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            dst.put_u8(4);
            dst.put_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            dst.put_u8(6);
            dst.put_slice(&ip.octets());
        }
    }
    dst.put_u16(addr.port());
}

/// Reads one address from the front of `src`. On error `src` may be partly consumed.
pub fn decode(src: &mut impl Buf) -> Result<SocketAddr, AddrError> {
    need(src, 1)?;
    let ip = match src.get_u8() {
        4 => {
            need(src, V4_LEN - 1)?;
            IpAddr::V4(Ipv4Addr::from(src.get_u32()))
        }
        6 => {
            need(src, V6_LEN - 1)?;
            IpAddr::V6(Ipv6Addr::from(src.get_u128()))
        }
        other => return Err(AddrError::BadFamily(other)),
    };
    Ok(SocketAddr::new(ip, src.get_u16()))
}

fn need(src: &impl Buf, n: usize) -> Result<(), AddrError> {
    if src.remaining() < n {
        return Err(AddrError::Truncated {
            needed: n,
            got: src.remaining(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<SocketAddr> {
        vec![
            "10.0.0.1:6881".parse().unwrap(),
            "0.0.0.0:0".parse().unwrap(),
            "[2001:db8::1]:443".parse().unwrap(),
            "[::ffff:1.2.3.4]:65535".parse().unwrap(),
        ]
    }

    #[test]
    fn roundtrip_and_length() {
        for addr in samples() {
            let mut out = Vec::new();
            encode(&addr, &mut out);
            assert_eq!(out.len(), encoded_len(&addr), "{addr}");
            let mut src = &out[..];
            assert_eq!(decode(&mut src), Ok(addr));
            assert!(src.is_empty());
        }
    }

    #[test]
    fn known_bytes() {
        let mut out = Vec::new();
        encode(&"1.2.3.4:258".parse().unwrap(), &mut out);
        assert_eq!(out, [4, 1, 2, 3, 4, 0x01, 0x02]);
    }

    #[test]
    fn every_truncation_and_bad_family_is_an_error() {
        for addr in samples() {
            let mut out = Vec::new();
            encode(&addr, &mut out);
            for cut in 0..out.len() {
                let mut src = &out[..cut];
                let needed = if cut == 0 { 1 } else { out.len() - 1 };
                assert_eq!(
                    decode(&mut src),
                    Err(AddrError::Truncated {
                        needed,
                        got: cut.saturating_sub(1),
                    }),
                    "{addr} cut at {cut}"
                );
            }
        }
        let mut src = &[5u8, 0, 0, 0, 0, 0, 0][..];
        assert_eq!(decode(&mut src), Err(AddrError::BadFamily(5)));
    }
}
