//! Echo (spec §3.8): a ping is answered with a pong carrying the same payload. The connection's
//! reader answers it at once on the control queue; a ping is never a request in flight, so a
//! client can probe a connection whose data queue is full.

use bytes::Bytes;
use ferry_protocol::Message;

/// The answer to a ping.
pub(crate) fn pong(payload: Bytes) -> Message {
    Message::Pong(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pong_echoes_the_payload() {
        let payload = Bytes::from_static(b"are you there");
        assert_eq!(pong(payload.clone()), Message::Pong(payload));
    }
}
