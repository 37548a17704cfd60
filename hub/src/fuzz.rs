//! The fuzzing entry point for the hub's bodies (`fuzz/fuzz_targets/hub.rs`).
//!
//! The first byte picks a body type and the rest is decoded as that body. Anything the decoder
//! accepts must encode back to a body that decodes to the same value; nothing may panic. Bodies
//! arrive from unauthenticated callers before any check of their meaning, so the decoders are
//! the hub's first line against hostile input.

use bytes::Bytes;

use crate::server::content::{AnnounceRequest, AnnounceResponse, PeersRequest, PeersResponse};
use crate::wire::{
    reflect, Event, NameRequest, PresenceRequest, PresenceResponse, PunchRequest, RegisterRequest,
    RegisterResponse, RelayRequest, RelayResponse, ResolveResponse, UdpTokenResponse, TOKEN_LEN,
};

/// Decodes `data[1..]` as the body type `data[0]` selects and checks the round trip; the
/// last selectors treat it as a UDP datagram on the hub's port (HUB.md §3.7).
pub fn fuzz_wire(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let body = Bytes::copy_from_slice(body);
    macro_rules! round_trip {
        ($ty:ty) => {
            if let Ok(value) = <$ty>::decode(body) {
                let again = <$ty>::decode(value.to_bytes());
                assert_eq!(again.as_ref().ok(), Some(&value), "re-encoded body differs");
            }
        };
    }
    match selector % 17 {
        0 => round_trip!(RegisterRequest),
        1 => round_trip!(RegisterResponse),
        2 => round_trip!(NameRequest),
        3 => round_trip!(ResolveResponse),
        4 => round_trip!(PresenceRequest),
        5 => round_trip!(PresenceResponse),
        6 => round_trip!(Event),
        7 => round_trip!(RelayRequest),
        8 => round_trip!(RelayResponse),
        9 => round_trip!(PunchRequest),
        10 => round_trip!(UdpTokenResponse),
        11 => round_trip!(AnnounceRequest),
        12 => round_trip!(AnnounceResponse),
        13 => round_trip!(PeersRequest),
        14 => round_trip!(PeersResponse),
        15 => {
            // A request the hub accepts is answered by a reply never larger than it.
            if let Some(token) = reflect::parse_request(&body) {
                let seen = "[2001:db8::1]:65535".parse().expect("a literal address");
                let reply = reflect::reply(&token, &seen);
                assert!(reply.len() <= body.len(), "the reflect reply amplifies");
                assert_eq!(reflect::parse_reply(&reply, &token), Some(seen));
            }
        }
        _ => {
            let token = [0x5a; TOKEN_LEN];
            if let Some(addr) = reflect::parse_reply(&body, &token) {
                assert_eq!(
                    reflect::parse_reply(&reflect::reply(&token, &addr), &token),
                    Some(addr)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every selector on a few shapes of input: the entry point itself must not panic.
    #[test]
    fn arbitrary_bodies_of_every_type_do_not_panic() {
        let shapes: [&[u8]; 5] = [
            &[],
            &[0],
            &[0, 5, b'a', b'l', b'i', b'c', b'e', 0, 0],
            &[1, 0, 0xff, 0xff],
            &[0xff; 64],
        ];
        for selector in 0..=255u8 {
            for shape in shapes {
                let mut data = vec![selector];
                data.extend_from_slice(shape);
                fuzz_wire(&data);
            }
        }
    }
}
