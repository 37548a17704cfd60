//! Enrolment with a one-time code (spec §13.11), sans-IO: the code, and the SPAKE2 exchange
//! with key confirmation that proves both sides know it.
//!
//! ```text
//! client (SPAKE2 side A)                              server (side B)
//!   REQUEST(ENROL): nameplate, pake_a            ->   burns the invite, then
//!                                                <-   RESPONSE(ENROL): pake_b, confirm_b
//!   checks confirm_b, then
//!   DATA(ENROL): confirm_a                       ->   checks confirm_a, authorises
//!                                                <-   END(ENROL): name, root, write
//! ```
//!
//! A [`Code`] is `NAMEPLATE-ODDWORD-EVENWORD` (e.g. `7-crossover-clockwork`): the nameplate
//! picks the invite and is not secret; the two words are 16 secret bits. SPAKE2's identities are
//! the two static keys the identity handshake proved ([`Binding`]) and the confirmation keys
//! are salted with its handshake hash, so the exchange only succeeds between the two ends of
//! that one Noise session: a relay that terminates the handshake on each side gets two
//! sessions with different keys, and its confirmations fail.

mod words;

use std::fmt;

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use spake2::{Ed25519Group, Identity, Password, Spake2};
use subtle::ConstantTimeEq;

use crate::message::{EnrolConfirm, EnrolRequest, EnrolResponse, CONFIRM_LEN, PAKE_LEN};

pub use words::{EVEN_WORDS, ODD_WORDS};

/// HKDF-Expand labels of the two confirmation keys (spec §13.11.3).
pub mod labels {
    pub const SERVER_CONFIRM: &[u8] = b"ferry enrol v1 server confirm";
    pub const CLIENT_CONFIRM: &[u8] = b"ferry enrol v1 client confirm";
}

/// The largest nameplate the reference server hands out; any u32 above 0 is legal on the wire.
pub const MAX_NAMEPLATE: u32 = 999;

/// A one-time code: `NAMEPLATE-ODD-EVEN`, the odd word from [`ODD_WORDS`] by `words[0]`, the
/// even word from [`EVEN_WORDS`] by `words[1]` (magic-wormhole's order).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Code {
    pub nameplate: u32,
    pub words: [u8; 2],
}

/// Never prints the words: a code in a log line would be a leak.
impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Code({}-…)", self.nameplate)
    }
}

/// The code as the user types it: `7-crossover-clockwork`.
impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{}-{}",
            self.nameplate, ODD_WORDS[self.words[0] as usize], EVEN_WORDS[self.words[1] as usize]
        )
    }
}

/// A text that is not a code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not an enrolment code: expected a number and two words, like 7-crossover-clockwork"
)]
pub struct CodeError(pub String);

impl std::str::FromStr for Code {
    type Err = CodeError;

    /// Accepts either case and surrounding whitespace; the words must come from their own
    /// lists in their own places, so a swapped or mistyped word is caught here, before it
    /// costs the code.
    fn from_str(text: &str) -> Result<Self, CodeError> {
        let error = || CodeError(text.to_owned());
        let lower = text.trim().to_ascii_lowercase();
        let mut parts = lower.split('-');
        let (Some(number), Some(odd), Some(even), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(error());
        };
        if number.is_empty() || number.len() > 10 || !number.bytes().all(|b| b.is_ascii_digit()) {
            return Err(error());
        }
        let nameplate: u32 = number.parse().map_err(|_| error())?;
        let odd = ODD_WORDS.iter().position(|w| *w == odd).ok_or_else(error)?;
        let even = EVEN_WORDS
            .iter()
            .position(|w| *w == even)
            .ok_or_else(error)?;
        if nameplate == 0 {
            return Err(error());
        }
        Ok(Self {
            nameplate,
            words: [odd as u8, even as u8],
        })
    }
}

impl Code {
    /// A fresh code for `nameplate`, its words from `rng`.
    pub fn generate(nameplate: u32, rng: &mut impl rand::RngCore) -> Self {
        let mut words = [0u8; 2];
        rng.fill_bytes(&mut words);
        Self { nameplate, words }
    }

    /// SPAKE2's password: the code's canonical text (decimal nameplate, lowercase words).
    pub fn password(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }
}

/// What ties an enrolment to one identity-handshake session (spec §13.11.3): both static keys
/// and the handshake hash `h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    pub client_static: [u8; 32],
    pub server_static: [u8; 32],
    pub handshake_hash: [u8; 32],
}

/// Why an enrolment exchange failed. Deliberately coarse: a peer learns only that the code did
/// not match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnrolError {
    /// The peer's SPAKE2 message is not a valid group element (or not of the other side).
    #[error("the peer's SPAKE2 message is malformed")]
    BadMessage,
    /// The peer's key confirmation does not match: another code, or another session.
    #[error("the code did not match")]
    Mismatch,
}

/// The two confirmation MACs (spec §13.11.3):
///
/// ```text
/// PRK       = HKDF-Extract(salt = h, IKM = K)
/// k_server  = HKDF-Expand(PRK, "ferry enrol v1 server confirm", 32)
/// k_client  = HKDF-Expand(PRK, "ferry enrol v1 client confirm", 32)
/// T         = u32_be(nameplate) || pake_a || pake_b
/// confirm_b = HMAC-SHA256(k_server, T)        confirm_a = HMAC-SHA256(k_client, T)
/// ```
pub fn confirmations(
    key: &[u8],
    handshake_hash: &[u8; 32],
    nameplate: u32,
    pake_a: &[u8; PAKE_LEN],
    pake_b: &[u8; PAKE_LEN],
) -> ([u8; CONFIRM_LEN], [u8; CONFIRM_LEN]) {
    let hkdf = Hkdf::<Sha256>::new(Some(handshake_hash), key);
    let mac = |label: &[u8]| {
        let mut k = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's limit, so this cannot fail.
        hkdf.expand(label, &mut k)
            .expect("32 bytes is a valid HKDF-SHA256 length");
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&k).expect("HMAC takes a key of any length");
        mac.update(&nameplate.to_be_bytes());
        mac.update(pake_a);
        mac.update(pake_b);
        let out: [u8; CONFIRM_LEN] = mac.finalize().into_bytes().into();
        out
    };
    (mac(labels::SERVER_CONFIRM), mac(labels::CLIENT_CONFIRM))
}

fn identities(binding: &Binding) -> (Identity, Identity) {
    (
        Identity::new(&binding.client_static),
        Identity::new(&binding.server_static),
    )
}

/// The client's side: [`ClientEnrol::start`] gives the request; [`ClientEnrol::handle_response`]
/// checks the server's confirmation and gives the client's.
pub struct ClientEnrol {
    spake: Spake2<Ed25519Group>,
    binding: Binding,
    nameplate: u32,
    pake_a: [u8; PAKE_LEN],
}

impl fmt::Debug for ClientEnrol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientEnrol")
            .field("nameplate", &self.nameplate)
            .finish_non_exhaustive()
    }
}

impl ClientEnrol {
    pub fn start(code: &Code, binding: Binding) -> (Self, EnrolRequest) {
        Self::start_with_rng(code, binding, rand::rngs::OsRng)
    }

    /// [`ClientEnrol::start`] with the SPAKE2 scalar drawn from `rng` (vectors use a fixed one).
    pub fn start_with_rng(
        code: &Code,
        binding: Binding,
        rng: impl rand::RngCore + rand::CryptoRng,
    ) -> (Self, EnrolRequest) {
        let (id_a, id_b) = identities(&binding);
        let (spake, message) = Spake2::<Ed25519Group>::start_a_with_rng(
            &Password::new(code.password()),
            &id_a,
            &id_b,
            rng,
        );
        // SPAKE2 over Ed25519 always writes the side byte and a 32-byte element.
        let pake_a: [u8; PAKE_LEN] = message
            .try_into()
            .expect("a SPAKE2 Ed25519 message is 33 bytes");
        let request = EnrolRequest {
            nameplate: code.nameplate,
            pake: pake_a,
        };
        (
            Self {
                spake,
                binding,
                nameplate: code.nameplate,
                pake_a,
            },
            request,
        )
    }

    /// Checks the server's confirmation (constant time) and returns the client's. An error
    /// means the server does not know this code for this session: send nothing more.
    pub fn handle_response(self, response: &EnrolResponse) -> Result<EnrolConfirm, EnrolError> {
        let key = self
            .spake
            .finish(&response.pake)
            .map_err(|_| EnrolError::BadMessage)?;
        let (server, client) = confirmations(
            &key,
            &self.binding.handshake_hash,
            self.nameplate,
            &self.pake_a,
            &response.pake,
        );
        if !bool::from(server.ct_eq(&response.confirm)) {
            return Err(EnrolError::Mismatch);
        }
        Ok(EnrolConfirm { confirm: client })
    }
}

/// The server's side: [`ServerEnrol::respond`] answers a request for a code it holds (and has
/// already burned); [`ServerEnrol::check`] verifies the client's confirmation.
pub struct ServerEnrol {
    expected: [u8; CONFIRM_LEN],
}

impl fmt::Debug for ServerEnrol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerEnrol").finish_non_exhaustive()
    }
}

impl ServerEnrol {
    pub fn respond(
        code: &Code,
        binding: Binding,
        request: &EnrolRequest,
    ) -> Result<(Self, EnrolResponse), EnrolError> {
        Self::respond_with_rng(code, binding, request, rand::rngs::OsRng)
    }

    /// [`ServerEnrol::respond`] with the SPAKE2 scalar drawn from `rng`.
    pub fn respond_with_rng(
        code: &Code,
        binding: Binding,
        request: &EnrolRequest,
        rng: impl rand::RngCore + rand::CryptoRng,
    ) -> Result<(Self, EnrolResponse), EnrolError> {
        let (id_a, id_b) = identities(&binding);
        let (spake, message) = Spake2::<Ed25519Group>::start_b_with_rng(
            &Password::new(code.password()),
            &id_a,
            &id_b,
            rng,
        );
        let pake_b: [u8; PAKE_LEN] = message
            .try_into()
            .expect("a SPAKE2 Ed25519 message is 33 bytes");
        let key = spake
            .finish(&request.pake)
            .map_err(|_| EnrolError::BadMessage)?;
        let (server, client) = confirmations(
            &key,
            &binding.handshake_hash,
            request.nameplate,
            &request.pake,
            &pake_b,
        );
        Ok((
            Self { expected: client },
            EnrolResponse {
                pake: pake_b,
                confirm: server,
            },
        ))
    }

    /// Whether the client's confirmation matches, compared in constant time.
    pub fn check(&self, confirm: &EnrolConfirm) -> Result<(), EnrolError> {
        if bool::from(self.expected.ct_eq(&confirm.confirm)) {
            Ok(())
        } else {
            Err(EnrolError::Mismatch)
        }
    }
}

/// A deterministic "random" source for vectors and tests: repeats `seed`.
#[derive(Debug, Clone)]
pub struct FixedRng(pub [u8; 32]);

impl rand::RngCore for FixedRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for (i, b) in dest.iter_mut().enumerate() {
            *b = self.0[i % 32];
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

/// Only for vectors and tests: a fixed source is no secret.
impl rand::CryptoRng for FixedRng {}

/// Fuzz entry: the server's side of the exchange over arbitrary request and confirmation
/// bodies. Nothing may panic, and only the right confirmation may pass.
#[cfg(any(fuzzing, test))]
pub fn fuzz_enrol(data: &[u8]) {
    use bytes::Bytes;
    let code = Code {
        nameplate: 7,
        words: [0x3c, 0x3b],
    };
    let binding = Binding {
        client_static: [1; 32],
        server_static: [2; 32],
        handshake_hash: [3; 32],
    };
    let (request, confirm) = data.split_at(data.len().min(EnrolRequest::LEN));
    let Ok(request) = EnrolRequest::decode(Bytes::copy_from_slice(request)) else {
        return;
    };
    let Ok((server, _)) =
        ServerEnrol::respond_with_rng(&code, binding, &request, FixedRng([5; 32]))
    else {
        return;
    };
    if let Ok(confirm) = EnrolConfirm::decode(Bytes::copy_from_slice(confirm)) {
        let _ = server.check(&confirm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(client: u8, server: u8, hash: u8) -> Binding {
        Binding {
            client_static: [client; 32],
            server_static: [server; 32],
            handshake_hash: [hash; 32],
        }
    }

    fn code(text: &str) -> Code {
        text.parse().unwrap()
    }

    /// Runs the exchange; `Ok(())` when both confirmations verified.
    fn exchange(
        client_code: &Code,
        client: Binding,
        server_code: &Code,
        server: Binding,
    ) -> Result<(), EnrolError> {
        let (c, request) = ClientEnrol::start(client_code, client);
        let (s, response) = ServerEnrol::respond(server_code, server, &request)?;
        let confirm = c.handle_response(&response)?;
        s.check(&confirm)
    }

    #[test]
    fn codes_parse_and_print_in_magic_wormholes_format() {
        let c = code("7-crossover-clockwork");
        assert_eq!(c.nameplate, 7);
        assert_eq!(c.words, [0x3c, 0x3b]);
        assert_eq!(c.to_string(), "7-crossover-clockwork");
        assert_eq!(code("  7-CrossOver-Clockwork\n"), c);
        assert_eq!(c.password(), b"7-crossover-clockwork");
        assert_eq!(format!("{c:?}"), "Code(7-…)");
        for bad in [
            "",
            "7",
            "7-crossover",
            "7-clockwork-crossover", // each word in its own list
            "0-crossover-clockwork",
            "x-crossover-clockwork",
            "7-crossover-clockwork-extra",
            "99999999999-crossover-clockwork",
            "7-crossovr-clockwork",
        ] {
            assert!(bad.parse::<Code>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_word_lists_are_the_pgp_lists_and_unambiguous() {
        assert_eq!(ODD_WORDS[0], "adroitness");
        assert_eq!(EVEN_WORDS[0], "aardvark");
        assert_eq!(ODD_WORDS[255], "yucatan");
        assert_eq!(EVEN_WORDS[255], "zulu");
        let mut all: Vec<&str> = EVEN_WORDS.iter().chain(ODD_WORDS.iter()).copied().collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 512);
        for b in 0..=255u8 {
            let c = Code {
                nameplate: 12,
                words: [b, 255 - b],
            };
            assert_eq!(c.to_string().parse::<Code>().unwrap(), c);
        }
    }

    #[test]
    fn the_same_code_on_the_same_session_enrols() {
        let c = code("7-crossover-clockwork");
        assert_eq!(exchange(&c, binding(1, 2, 3), &c, binding(1, 2, 3)), Ok(()));
    }

    #[test]
    fn a_wrong_code_fails_the_servers_confirmation_at_the_client() {
        let (c, request) = ClientEnrol::start(&code("7-crossover-clockwork"), binding(1, 2, 3));
        let (_, response) =
            ServerEnrol::respond(&code("7-crossover-cobra"), binding(1, 2, 3), &request).unwrap();
        assert_eq!(c.handle_response(&response), Err(EnrolError::Mismatch));
    }

    /// A relay that runs one Noise session with the client and another with the server has
    /// to present its own static key on at least one side and gets two handshake hashes, so
    /// relaying the SPAKE2 messages between the sessions fails confirmation even with the
    /// right code (spec §13.11.5).
    #[test]
    fn a_relayed_exchange_fails_confirmation_even_with_the_right_code() {
        let c = code("7-crossover-clockwork");
        // The client saw the relay's static key (9), the server saw the relay as client (8).
        assert_eq!(
            exchange(&c, binding(1, 9, 3), &c, binding(8, 2, 4)),
            Err(EnrolError::Mismatch)
        );
        // Each key alone is enough: a different server key, a different client key, or only
        // a different handshake hash.
        for (client, server) in [
            (binding(1, 9, 3), binding(1, 2, 3)),
            (binding(8, 2, 3), binding(1, 2, 3)),
            (binding(1, 2, 4), binding(1, 2, 3)),
        ] {
            assert_eq!(
                exchange(&c, client, &c, server),
                Err(EnrolError::Mismatch),
                "{client:?} {server:?}"
            );
        }
    }

    #[test]
    fn a_forged_client_confirmation_is_refused() {
        let c = code("7-crossover-clockwork");
        let (_, request) = ClientEnrol::start(&c, binding(1, 2, 3));
        let (s, response) = ServerEnrol::respond(&c, binding(1, 2, 3), &request).unwrap();
        // Echoing the server's own confirmation back is not the client's.
        let echo = EnrolConfirm {
            confirm: response.confirm,
        };
        assert_eq!(s.check(&echo), Err(EnrolError::Mismatch));
    }

    use crate::handshake::{handshake_decoder, write_error};
    use crate::identity::Identity;
    use crate::noise::{
        AllowList, ClientIdentityConfig, ClientIdentityHandshake, ServerIdentityConfig,
        ServerIdentityHandshake,
    };
    use crate::HandshakeError;
    use bytes::BytesMut;
    use std::sync::Arc;

    /// One identity handshake in memory against a server that admits nobody; returns the
    /// client's binding, the server's enrolment binding, and the server's error frame bytes.
    fn handshake(
        enrol: bool,
        enrolment: bool,
    ) -> (
        Option<Binding>,
        Result<Option<Binding>, HandshakeError>,
        BytesMut,
    ) {
        let mut client_config = ClientIdentityConfig::new(Identity::from_secret([1; 32]), None);
        client_config.enrol = enrol;
        let mut server_config = ServerIdentityConfig::with_resolver(
            Identity::from_secret([2; 32]),
            Arc::new(AllowList::new()),
        );
        server_config.enrolment = enrolment;
        let (mut c2s, mut s2c, mut error) = (BytesMut::new(), BytesMut::new(), BytesMut::new());
        let mut client = ClientIdentityHandshake::start(client_config, &mut c2s).unwrap();
        let mut server = ServerIdentityHandshake::new(server_config);
        fn step(
            server: &mut ServerIdentityHandshake,
            c2s: &mut BytesMut,
            s2c: &mut BytesMut,
        ) -> Result<Option<crate::Session>, HandshakeError> {
            let frame = handshake_decoder().decode(c2s).unwrap().unwrap();
            server.handle_frame(frame, s2c)
        }
        assert!(step(&mut server, &mut c2s, &mut s2c).unwrap().is_none());
        let frame = handshake_decoder().decode(&mut s2c).unwrap().unwrap();
        assert!(client.handle_frame(frame, &mut c2s).unwrap().is_some());
        let server_result = step(&mut server, &mut c2s, &mut s2c);
        let server_result = match server_result {
            Ok(session) => {
                assert!(session.is_some());
                Ok(server.enrolment())
            }
            Err(e) => {
                write_error(&e, &mut error);
                Err(e)
            }
        };
        (client.binding(), server_result, error)
    }

    #[test]
    fn an_enrolling_stranger_gets_an_enrolment_session_bound_to_both_keys() {
        let (client, server, _) = handshake(true, true);
        let server = server.unwrap().expect("an enrolment session");
        assert_eq!(client, Some(server));
        assert_eq!(
            server.client_static,
            *Identity::from_secret([1; 32]).public_key()
        );
        assert_eq!(
            server.server_static,
            *Identity::from_secret([2; 32]).public_key()
        );
    }

    /// No oracle (spec §13.4, §13.11.5): a stranger that does not ask to enrol fails with
    /// the same bytes on a server that takes enrolments as on one that does not, and a
    /// server that takes none refuses an enrolling client with those bytes too.
    #[test]
    fn strangers_that_do_not_enrol_and_enrolments_nobody_takes_fail_alike() {
        let (_, plain, plain_bytes) = handshake(false, false);
        let (_, taking, taking_bytes) = handshake(false, true);
        let (_, refused, refused_bytes) = handshake(true, false);
        for result in [&plain, &taking, &refused] {
            assert!(matches!(result, Err(HandshakeError::AuthenticationFailed)));
        }
        assert_eq!(plain_bytes, taking_bytes);
        assert_eq!(plain_bytes, refused_bytes);
        assert!(!plain_bytes.is_empty());
    }

    #[test]
    fn fuzz_entry_survives_garbage() {
        fuzz_enrol(&[]);
        fuzz_enrol(&[0x41; 80]);
        let mut data = vec![0, 0, 0, 7, 0x41];
        data.extend_from_slice(&[0xff; 64]);
        fuzz_enrol(&data);
    }
}
