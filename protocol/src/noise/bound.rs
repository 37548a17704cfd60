//! Noise XX run inside another protocol's messages, bound to its channel: the same pattern,
//! cipher suite and key checks as the identity handshake (spec §13.2, §13.4), with the caller's
//! prologue and no Ferry framing. The swarm's peer handshake carries these messages to prove
//! both peers' node identities inside an established swarm session, with that session's channel
//! binding (spec §5.7) in the prologue (spec/P2P.md §3.3).
//!
//! Sans-IO: [`BoundXx::write`] gives the next message, [`BoundXx::read`] takes the peer's;
//! after three messages the remote static key is proven and [`BoundXx::handshake_hash`] is set.

use super::{contributory, read, remote_static, write, NOISE_PARAMS};
use crate::error::HandshakeError;
use crate::identity::{Identity, NodeId};

/// Length of message 1 (`e`), message 2 (`e, ee, s, es` with an empty payload) and message 3
/// (`s, se` with an empty payload).
pub const MESSAGE_LENS: [usize; 3] = [32, 32 + 48 + 16, 48 + 16];

/// One side of a bound Noise XX handshake.
pub struct BoundXx {
    identity: Identity,
    noise: Box<snow::HandshakeState>,
    initiator: bool,
    /// Messages written or read so far (0..=3).
    step: usize,
    remote: Option<[u8; 32]>,
    hash: Option<[u8; 32]>,
}

impl std::fmt::Debug for BoundXx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundXx")
            .field("initiator", &self.initiator)
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
}

impl BoundXx {
    /// The initiator (it writes message 1), proving `identity`, with `prologue`.
    pub fn initiator(identity: &Identity, prologue: &[u8]) -> Result<Self, HandshakeError> {
        Self::new(identity, prologue, true, None)
    }

    /// The responder (it reads message 1).
    pub fn responder(identity: &Identity, prologue: &[u8]) -> Result<Self, HandshakeError> {
        Self::new(identity, prologue, false, None)
    }

    /// Either side with a fixed ephemeral secret: test vectors only (a fixed ephemeral key
    /// throws away forward secrecy).
    pub fn dangerous_with_ephemeral(
        identity: &Identity,
        prologue: &[u8],
        initiator: bool,
        ephemeral: [u8; 32],
    ) -> Result<Self, HandshakeError> {
        Self::new(identity, prologue, initiator, Some(ephemeral))
    }

    fn new(
        identity: &Identity,
        prologue: &[u8],
        initiator: bool,
        ephemeral: Option<[u8; 32]>,
    ) -> Result<Self, HandshakeError> {
        let params = NOISE_PARAMS
            .parse()
            .map_err(|_| HandshakeError::AuthenticationFailed)?;
        let mut builder = snow::Builder::new(params)
            .local_private_key(identity.secret_bytes())
            .prologue(prologue);
        if let Some(e) = ephemeral.as_ref() {
            builder = builder.fixed_ephemeral_key_for_testing_only(e);
        }
        let noise = if initiator {
            builder.build_initiator()
        } else {
            builder.build_responder()
        }
        .map_err(|_| HandshakeError::AuthenticationFailed)?;
        Ok(Self {
            identity: identity.clone(),
            noise: Box::new(noise),
            initiator,
            step: 0,
            remote: None,
            hash: None,
        })
    }

    /// Whether it is our turn to write: messages 1 and 3 are the initiator's, 2 the responder's.
    fn ours(&self) -> bool {
        self.step < 3 && (self.step % 2 == 0) == self.initiator
    }

    /// Our next message, with an empty payload.
    pub fn write(&mut self) -> Result<Vec<u8>, HandshakeError> {
        if !self.ours() {
            return Err(HandshakeError::AuthenticationFailed);
        }
        let message = write(&mut self.noise, &[])?;
        self.advance()?;
        Ok(message)
    }

    /// The peer's next message: refused unless it is exactly the expected length with an empty
    /// payload, its ephemeral and static keys are not low-order (spec §13.4) and its AEAD
    /// checks pass.
    pub fn read(&mut self, message: &[u8]) -> Result<(), HandshakeError> {
        if self.step >= 3 || self.ours() || message.len() != MESSAGE_LENS[self.step] {
            return Err(HandshakeError::AuthenticationFailed);
        }
        if self.step < 2 {
            // Messages 1 and 2 open with the sender's ephemeral key.
            contributory(&self.identity, message)?;
        }
        let payload = read(&mut self.noise, message)?;
        if !payload.is_empty() {
            return Err(HandshakeError::AuthenticationFailed);
        }
        if self.step >= 1 {
            // Message 2 (read by the initiator) and 3 (by the responder) carry the static key.
            let remote = remote_static(&self.noise)?;
            contributory(&self.identity, &remote)?;
            self.remote = Some(remote);
        }
        self.advance()
    }

    fn advance(&mut self) -> Result<(), HandshakeError> {
        self.step += 1;
        if self.step == 3 {
            let hash = self
                .noise
                .get_handshake_hash()
                .try_into()
                .map_err(|_| HandshakeError::AuthenticationFailed)?;
            self.hash = Some(hash);
        }
        Ok(())
    }

    /// The peer's proven static key: `Some` from message 2 on for the initiator, after message
    /// 3 for the responder.
    pub fn remote_static(&self) -> Option<&[u8; 32]> {
        self.remote.as_ref()
    }

    /// The peer's node id, once its static key is proven.
    pub fn remote_id(&self) -> Option<NodeId> {
        self.remote.as_ref().map(NodeId::from_public_key)
    }

    /// Whether this side writes message 1.
    pub fn is_initiator(&self) -> bool {
        self.initiator
    }

    /// Whether all three messages are done.
    pub fn is_finished(&self) -> bool {
        self.step == 3
    }

    /// Noise's handshake hash `h` after message 3: the same on both sides, unique to this run.
    pub fn handshake_hash(&self) -> Option<&[u8; 32]> {
        self.hash.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(prologue_a: &[u8], prologue_b: &[u8]) -> (BoundXx, BoundXx) {
        let a = Identity::from_secret([1; 32]);
        let b = Identity::from_secret([2; 32]);
        (
            BoundXx::initiator(&a, prologue_a).unwrap(),
            BoundXx::responder(&b, prologue_b).unwrap(),
        )
    }

    #[test]
    fn both_sides_prove_their_ids_and_agree_on_h() {
        let (mut i, mut r) = pair(b"same", b"same");
        let m1 = i.write().unwrap();
        assert_eq!(m1.len(), MESSAGE_LENS[0]);
        r.read(&m1).unwrap();
        let m2 = r.write().unwrap();
        assert_eq!(m2.len(), MESSAGE_LENS[1]);
        i.read(&m2).unwrap();
        assert_eq!(i.remote_id(), Some(Identity::from_secret([2; 32]).id()));
        assert_eq!(r.remote_id(), None);
        let m3 = i.write().unwrap();
        assert_eq!(m3.len(), MESSAGE_LENS[2]);
        r.read(&m3).unwrap();
        assert_eq!(r.remote_id(), Some(Identity::from_secret([1; 32]).id()));
        assert!(i.is_finished() && r.is_finished());
        assert_eq!(i.handshake_hash(), r.handshake_hash());
        assert!(i.handshake_hash().is_some());
    }

    #[test]
    fn another_prologue_fails_at_message_2() {
        let (mut i, mut r) = pair(b"channel one", b"channel two");
        r.read(&i.write().unwrap()).unwrap();
        let m2 = r.write().unwrap();
        assert!(i.read(&m2).is_err());
        assert_eq!(i.remote_id(), None);
    }

    #[test]
    fn out_of_turn_wrong_length_and_low_order_keys_are_refused() {
        let (mut i, mut r) = pair(b"p", b"p");
        assert!(r.write().is_err(), "the responder cannot write first");
        let m1 = i.write().unwrap();
        assert!(i.write().is_err(), "the initiator cannot write twice");
        assert!(r.read(&m1[..31]).is_err());
        let (_, mut r) = pair(b"p", b"p");
        assert!(r.read(&[0u8; 32]).is_err(), "a low-order ephemeral key");
        let (_, mut r) = pair(b"p", b"p");
        let mut flipped = m1.clone();
        flipped.push(0);
        assert!(r.read(&flipped).is_err(), "a payload is not allowed");
    }
}
