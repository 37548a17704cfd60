//! The identity handshake (spec §13), sans-IO: Noise XX through the `snow` crate, in which both
//! sides prove their long-term X25519 keys ([`Identity`]), then the ordinary Ferry record layer.
//!
//! ```text
//! client                                        server
//!   NOISE_1: e, offer(versions, suites)          ->
//!                                                <- NOISE_2: e, ee, s, es, choice(version, suite)
//!   NOISE_3: s, se, confirm(version, suite)      ->
//!   requests ...                                 ->   (processed only after NOISE_3 verifies)
//! ```
//!
//! The protocol name is [`NOISE_PARAMS`]; the prologue, [`PROLOGUE`], binds Ferry's handshake
//! version and these frame types. After message 3 the Noise split `(k1, k2)` and the handshake
//! hash `h` feed HKDF with Ferry labels ([`derive_record_keys`]), and the session is the same
//! [`Session`] the PSK handshake produces. Every failure sends the one `AUTHENTICATION_FAILED`
//! frame of spec §4.4, an unknown client identity included.
//!
//! [`AcceptHandshake`] serves both handshakes on one port: it picks by the first frame's type.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;
use hkdf::Hkdf;
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::crypto::{DirectionKeys, RecordSuite};
use crate::error::{ErrorCode, HandshakeError};
use crate::frame::{Frame, DEFAULT_MAX_BODY};
use crate::handshake::{
    Handshake, Permissions, Principal, ServerHandshake, ServerHandshakeConfig, HANDSHAKE_VERSION,
    MAX_VERSION,
};
use crate::header::{FrameType, Header, RequestId, Service, MIN_VERSION};
use crate::identity::{Identity, NodeId};
use crate::message::{ErrorBody, Message, Mode, SuiteId, SuiteOffer};
use crate::session::{Role, Session};

/// The Noise protocol name (spec §13.2).
pub const NOISE_PARAMS: &str = "Noise_XX_25519_ChaChaPoly_SHA256";

/// The Noise prologue: a label, the handshake frames' header version and the three frame
/// types, so that a transcript cannot be replayed into another protocol or framing.
pub const PROLOGUE: &[u8] = b"ferry identity handshake v1\x01\x08\x09\x0a";

/// HKDF-Expand labels of the record keys (spec §13.5).
pub mod labels {
    pub const C2S_ENC: &[u8] = b"ferry id v1 c2s enc";
    pub const C2S_MAC: &[u8] = b"ferry id v1 c2s mac";
    pub const C2S_IV: &[u8] = b"ferry id v1 c2s iv";
    pub const S2C_ENC: &[u8] = b"ferry id v1 s2c enc";
    pub const S2C_MAC: &[u8] = b"ferry id v1 s2c mac";
    pub const S2C_IV: &[u8] = b"ferry id v1 s2c iv";
}

/// The suite byte of a plaintext choice: no suite.
pub const NO_SUITE: SuiteId = SuiteId(0x00);

/// The byte a client appends to its NOISE_3 payload to ask for an enrolment session
/// (spec §13.11.2): encrypted, so only the server learns it.
pub const ENROL_INTENT: u8 = 0x01;

/// The name of an enrolment session's principal in logs: `enrolling ID`.
pub fn enrolling_name(client: &NodeId) -> String {
    format!("enrolling {client}")
}

/// Whether protocol `version` may use `suite`: version 1 knows only AES-256-CBC + HMAC-SHA256
/// (spec §4.3, as in the PSK handshake).
fn version_allows(version: u8, suite: RecordSuite) -> bool {
    version >= 2 || suite == RecordSuite::Aes256CbcHmacSha256
}

/// Message 1's payload: the client's version range, mode and record suites, most preferred
/// first. The suite list is the PSK hello's offer (spec §4.2, [`SuiteOffer`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub min_version: u8,
    pub max_version: u8,
    pub mode: Mode,
    pub suites: SuiteOffer,
}

/// Message 2's payload (the server's choice) and message 3's (the client's confirmation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub version: u8,
    pub mode: Mode,
    /// The chosen suite; [`NO_SUITE`] in plaintext mode.
    pub suite: SuiteId,
}

impl Offer {
    /// `min_version u8 | max_version u8 | mode u8 | count u8 | suites [u8; count]`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.min_version, self.max_version, self.mode.0];
        self.suites.encode(&mut out);
        out
    }

    /// `None` unless the layout is consumed exactly, 1 ≤ min ≤ max, the mode is 0x00 or
    /// 0x01, and the suites are a valid offer (1 to 16, none 0x00, none repeated).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (&[min_version, max_version, mode], suites) = bytes.split_first_chunk::<3>()?;
        let mode = Mode(mode);
        let mut suites = bytes::Bytes::copy_from_slice(suites);
        let offer = SuiteOffer::decode(&mut suites).ok()?;
        let valid = (1..=max_version).contains(&min_version)
            && (mode == Mode::ENCRYPTED || mode == Mode::PLAINTEXT)
            && suites.is_empty();
        valid.then_some(Self {
            min_version,
            max_version,
            mode,
            suites: offer,
        })
    }
}

impl Choice {
    /// `version u8 | mode u8 | suite u8`.
    pub fn encode(&self) -> [u8; 3] {
        [self.version, self.mode.0, self.suite.0]
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        match *bytes {
            [version, mode, suite] => Some(Self {
                version,
                mode: Mode(mode),
                suite: SuiteId(suite),
            }),
            _ => None,
        }
    }
}

/// The record keys of both directions: `PRK = HKDF-Extract(salt = h, IKM = k1 || k2)`, each key
/// `HKDF-Expand(PRK, label, 32)`, each 12-byte IV `HKDF-Expand(PRK, label, 12)` (spec §13.5). `k1` protects nothing itself: Noise's transport
/// ciphers are never used, the Ferry record layer is.
pub fn derive_record_keys(
    handshake_hash: &[u8; 32],
    k1: &[u8; 32],
    k2: &[u8; 32],
) -> (DirectionKeys, DirectionKeys) {
    let mut ikm = [0u8; 64];
    ikm[..32].copy_from_slice(k1);
    ikm[32..].copy_from_slice(k2);
    let hkdf = Hkdf::<Sha256>::new(Some(handshake_hash), &ikm);
    fn expand<const N: usize>(hkdf: &Hkdf<Sha256>, label: &[u8]) -> [u8; N] {
        let mut out = [0u8; N];
        // 12 or 32 bytes is far below HKDF-SHA256's 8160-byte limit, so this cannot fail.
        hkdf.expand(label, &mut out)
            .expect("a short output is a valid HKDF-SHA256 length");
        out
    }
    (
        DirectionKeys {
            enc: expand(&hkdf, labels::C2S_ENC),
            mac: expand(&hkdf, labels::C2S_MAC),
            iv: expand(&hkdf, labels::C2S_IV),
        },
        DirectionKeys {
            enc: expand(&hkdf, labels::S2C_ENC),
            mac: expand(&hkdf, labels::S2C_MAC),
            iv: expand(&hkdf, labels::S2C_IV),
        },
    )
}

/// Why a client's identity handshake failed: the server is not the one named, or anything
/// else (spec §4.4's failures).
#[derive(Debug, thiserror::Error)]
pub enum ClientIdentityError {
    #[error("the server proved id {proven}, not {expected}")]
    WrongServer { expected: NodeId, proven: NodeId },
    #[error(transparent)]
    Failed(#[from] crate::error::Error),
}

/// Decides who an identified client is, from the static key it proved (spec §13.6).
///
/// `None` refuses the client with the same `AUTHENTICATION_FAILED` frame as every other
/// failure, after message 3, exactly where a forged message 3 fails: no oracle for which ids
/// are known.
pub trait IdentityResolver: Send + Sync + std::fmt::Debug {
    fn resolve(&self, client: &NodeId, public_key: &[u8; 32]) -> Option<Principal>;
}

/// Every identity is welcome and named by its id, with read access: a server that only wants
/// clients to know whom they talk to.
#[derive(Debug, Clone, Copy, Default)]
pub struct AnyIdentity;

impl IdentityResolver for AnyIdentity {
    fn resolve(&self, client: &NodeId, _public_key: &[u8; 32]) -> Option<Principal> {
        Some(Principal {
            name: client.to_string(),
            permissions: Permissions::READ,
            subtree: None,
        })
    }
}

/// Only the listed identities, each with its principal.
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    clients: HashMap<NodeId, Principal>,
}

impl AllowList {
    pub fn new() -> Self {
        Self::default()
    }

    /// Admits `id` as `principal` (replacing an earlier entry).
    pub fn allow(mut self, id: NodeId, principal: Principal) -> Self {
        self.clients.insert(id, principal);
        self
    }
}

impl IdentityResolver for AllowList {
    fn resolve(&self, client: &NodeId, _public_key: &[u8; 32]) -> Option<Principal> {
        self.clients.get(client).cloned()
    }
}

/// Client settings of the identity handshake.
#[derive(Debug, Clone)]
pub struct ClientIdentityConfig {
    pub identity: Identity,
    /// The server that must answer: a server whose static key does not hash to this id is
    /// refused. `None` accepts any server (the caller pins it, e.g. trust on first use).
    pub server_id: Option<NodeId>,
    /// Encrypted (default) or plaintext records.
    pub mode: Mode,
    /// Record suites to offer, most preferred first. Default
    /// [`RecordSuite::DEFAULT_SUITES`].
    pub suites: Vec<RecordSuite>,
    /// Cap on incoming frame bodies once established.
    pub max_body: u32,
    /// Ask for an enrolment session (spec §13.11): the only request it allows is ENROL.
    pub enrol: bool,
}

impl ClientIdentityConfig {
    pub fn new(identity: Identity, server_id: Option<NodeId>) -> Self {
        Self {
            identity,
            server_id,
            mode: Mode::ENCRYPTED,
            suites: RecordSuite::DEFAULT_SUITES.to_vec(),
            max_body: DEFAULT_MAX_BODY,
            enrol: false,
        }
    }

    /// Ask for plaintext records (the server must allow it), as the PSK handshake's mode.
    pub fn plaintext(mut self, plaintext: bool) -> Self {
        self.mode = if plaintext {
            Mode::PLAINTEXT
        } else {
            Mode::ENCRYPTED
        };
        self
    }
}

/// Server settings of the identity handshake.
#[derive(Debug, Clone)]
pub struct ServerIdentityConfig {
    pub identity: Identity,
    pub resolver: Arc<dyn IdentityResolver>,
    /// Accept clients that offer only plaintext. Off by default.
    pub allow_plaintext: bool,
    /// The record suites this server accepts; default [`RecordSuite::DEFAULT_SUITES`].
    pub suites: Vec<RecordSuite>,
    pub max_body: u32,
    /// Admit clients that ask to enrol into an enrolment session (spec §13.11.2), whoever
    /// they are. Off by default: such a client is then refused like any other failure.
    pub enrolment: bool,
}

impl ServerIdentityConfig {
    /// Every client identity is accepted ([`AnyIdentity`]).
    pub fn new(identity: Identity) -> Self {
        Self::with_resolver(identity, Arc::new(AnyIdentity))
    }

    pub fn with_resolver(identity: Identity, resolver: Arc<dyn IdentityResolver>) -> Self {
        Self {
            identity,
            resolver,
            allow_plaintext: false,
            suites: RecordSuite::DEFAULT_SUITES.to_vec(),
            max_body: DEFAULT_MAX_BODY,
            enrolment: false,
        }
    }
}

/// The handshake hash `h` (spec §13.5), once the last message has been written or read.
fn handshake_hash(noise: &snow::HandshakeState) -> Result<[u8; 32], HandshakeError> {
    noise
        .get_handshake_hash()
        .try_into()
        .map_err(|_| HandshakeError::AuthenticationFailed)
}

/// A handshake frame's bytes: header version 1, service HANDSHAKE, id 0 (spec §4.1).
fn frame_bytes(kind: FrameType, body: &[u8]) -> Vec<u8> {
    let mut header = Header::new(kind, Service::HANDSHAKE, RequestId::CONNECTION, 0);
    header.version = HANDSHAKE_VERSION;
    header.length = body.len() as u32;
    let mut out = Vec::with_capacity(crate::header::HEADER_LEN + body.len());
    header.encode(&mut out);
    out.extend_from_slice(body);
    out
}

/// The body of the expected handshake frame. An error frame is the peer's refusal; anything
/// else, a request id or another service included, fails like a forgery (spec §4.4).
fn expect(frame: &Frame, kind: FrameType) -> Result<&[u8], HandshakeError> {
    if frame.header.id != RequestId::CONNECTION {
        return Err(HandshakeError::AuthenticationFailed);
    }
    if frame.header.kind == FrameType::ERROR {
        return match frame.message() {
            Ok(Message::Error { body, .. }) => Err(refused(body)),
            _ => Err(HandshakeError::AuthenticationFailed),
        };
    }
    if frame.header.kind != kind || frame.header.service != Service::HANDSHAKE {
        return Err(HandshakeError::AuthenticationFailed);
    }
    Ok(&frame.body)
}

fn refused(body: ErrorBody) -> HandshakeError {
    match body.code {
        ErrorCode::AUTHENTICATION_FAILED => HandshakeError::AuthenticationFailed,
        ErrorCode::PLAINTEXT_REFUSED => HandshakeError::PlaintextRefused,
        _ => HandshakeError::Refused(body),
    }
}

/// A peer key that is a low-order point would make a Diffie-Hellman output all zeros, known to
/// anyone (spec §5.1, §13.4). Every clamped scalar is a multiple of 8, so any one of them tells.
fn contributory(ours: &Identity, theirs: &[u8]) -> Result<[u8; 32], HandshakeError> {
    let theirs: [u8; 32] = theirs
        .get(..32)
        .and_then(|k| k.try_into().ok())
        .ok_or(HandshakeError::AuthenticationFailed)?;
    let shared = StaticSecret::from(*ours.secret_bytes()).diffie_hellman(&PublicKey::from(theirs));
    if !shared.was_contributory() {
        return Err(HandshakeError::AuthenticationFailed);
    }
    Ok(theirs)
}

fn noise(
    identity: &Identity,
    ephemeral: Option<&[u8; 32]>,
    initiator: bool,
) -> Result<Box<snow::HandshakeState>, HandshakeError> {
    let params = NOISE_PARAMS
        .parse()
        .map_err(|_| HandshakeError::AuthenticationFailed)?;
    let mut builder = snow::Builder::new(params)
        .local_private_key(identity.secret_bytes())
        .prologue(PROLOGUE);
    if let Some(e) = ephemeral {
        builder = builder.fixed_ephemeral_key_for_testing_only(e);
    }
    let state = if initiator {
        builder.build_initiator()
    } else {
        builder.build_responder()
    };
    state
        .map(Box::new)
        .map_err(|_| HandshakeError::AuthenticationFailed)
}

/// Noise's write_message into a fresh buffer (a Noise message is at most 65 535 bytes).
fn write(noise: &mut snow::HandshakeState, payload: &[u8]) -> Result<Vec<u8>, HandshakeError> {
    let mut out = vec![0u8; 65_535];
    let n = noise
        .write_message(payload, &mut out)
        .map_err(|_| HandshakeError::AuthenticationFailed)?;
    out.truncate(n);
    Ok(out)
}

fn read(noise: &mut snow::HandshakeState, message: &[u8]) -> Result<Vec<u8>, HandshakeError> {
    let mut payload = vec![0u8; message.len()];
    let n = noise
        .read_message(message, &mut payload)
        .map_err(|_| HandshakeError::AuthenticationFailed)?;
    payload.truncate(n);
    Ok(payload)
}

/// The session after message 3, from the split and the handshake hash.
fn session(
    noise: &mut snow::HandshakeState,
    role: Role,
    version: u8,
    suite: RecordSuite,
    max_body: u32,
) -> Result<Session, HandshakeError> {
    let hash: [u8; 32] = noise
        .get_handshake_hash()
        .try_into()
        .map_err(|_| HandshakeError::AuthenticationFailed)?;
    let (k1, k2) = noise.dangerously_get_raw_split();
    let (c2s, s2c) = derive_record_keys(&hash, &k1, &k2);
    // Spec §5.7: Noise's handshake hash is its channel binding (Noise §11.2).
    Ok(Session::new(version, max_body, role, suite, &c2s, &s2c).with_channel_binding(hash))
}

fn remote_static(noise: &snow::HandshakeState) -> Result<[u8; 32], HandshakeError> {
    noise
        .get_remote_static()
        .and_then(|k| k.try_into().ok())
        .ok_or(HandshakeError::AuthenticationFailed)
}

enum ClientState {
    AwaitMessage2,
    Done,
}

/// The client side of the identity handshake.
pub struct ClientIdentityHandshake {
    config: ClientIdentityConfig,
    noise: Box<snow::HandshakeState>,
    offer: Offer,
    state: ClientState,
    server_id: Option<NodeId>,
    mismatch: Option<(NodeId, NodeId)>,
    binding: Option<crate::enrol::Binding>,
}

impl std::fmt::Debug for ClientIdentityHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentityHandshake")
            .field("server_id", &self.server_id)
            .finish_non_exhaustive()
    }
}

impl ClientIdentityHandshake {
    /// Starts a handshake and appends the NOISE_1 frame to `dst`.
    pub fn start(config: ClientIdentityConfig, dst: &mut BytesMut) -> Result<Self, HandshakeError> {
        Self::start_with(config, None, dst)
    }

    /// [`ClientIdentityHandshake::start`] with a fixed ephemeral secret (test vectors only; a
    /// fixed ephemeral key throws away forward secrecy).
    pub fn start_with(
        config: ClientIdentityConfig,
        ephemeral: Option<[u8; 32]>,
        dst: &mut BytesMut,
    ) -> Result<Self, HandshakeError> {
        let suites = SuiteOffer::new(config.suites.iter().filter_map(|s| s.id()))
            .ok_or(HandshakeError::AuthenticationFailed)?;
        let mut noise = noise(&config.identity, ephemeral.as_ref(), true)?;
        let offer = Offer {
            min_version: MIN_VERSION,
            max_version: MAX_VERSION,
            mode: config.mode,
            suites,
        };
        let message = write(&mut noise, &offer.encode())?;
        dst.extend_from_slice(&frame_bytes(FrameType::NOISE_1, &message));
        Ok(Self {
            config,
            noise,
            offer,
            state: ClientState::AwaitMessage2,
            server_id: None,
            mismatch: None,
            binding: None,
        })
    }

    /// The server's id, once message 2 has proven it.
    pub fn server_id(&self) -> Option<NodeId> {
        self.server_id
    }

    /// Both static keys and the handshake hash, once the session has been returned: what an
    /// enrolment is bound to (spec §13.11.3).
    pub fn binding(&self) -> Option<crate::enrol::Binding> {
        self.binding
    }

    /// `(expected, proven)` when the server proved a key that does not hash to the id the
    /// config names; the handshake then failed with `AUTHENTICATION_FAILED`.
    pub fn server_id_mismatch(&self) -> Option<(NodeId, NodeId)> {
        self.mismatch
    }

    /// Handles one frame from the server. Returns the session once the server has proven its
    /// identity and the choice is acceptable; the NOISE_3 frame has then been appended to `dst`.
    pub fn handle_frame(
        &mut self,
        frame: Frame,
        dst: &mut BytesMut,
    ) -> Result<Option<Session>, HandshakeError> {
        let ClientState::AwaitMessage2 = std::mem::replace(&mut self.state, ClientState::Done)
        else {
            return Err(HandshakeError::AuthenticationFailed);
        };
        let body = expect(&frame, FrameType::NOISE_2)?;
        contributory(&self.config.identity, body)?;
        let payload = read(&mut self.noise, body)?;
        let server_key = remote_static(&self.noise)?;
        contributory(&self.config.identity, &server_key)?;
        let server_id = NodeId::from_public_key(&server_key);
        if let Some(expected) = self.config.server_id {
            if expected != server_id {
                self.mismatch = Some((expected, server_id));
                return Err(HandshakeError::AuthenticationFailed);
            }
        }
        let choice = Choice::decode(&payload).ok_or(HandshakeError::AuthenticationFailed)?;
        let version_ok =
            (self.offer.min_version..=self.offer.max_version).contains(&choice.version);
        let suite = chosen_suite(&self.offer, &choice)
            .filter(|_| version_ok && choice.mode == self.offer.mode)
            .filter(|&s| s == RecordSuite::Plaintext || version_allows(choice.version, s))
            .ok_or(HandshakeError::AuthenticationFailed)?;
        let mut payload3 = choice.encode().to_vec();
        if self.config.enrol {
            payload3.push(ENROL_INTENT);
        }
        let message = write(&mut self.noise, &payload3)?;
        self.binding = Some(crate::enrol::Binding {
            client_static: *self.config.identity.public_key(),
            server_static: server_key,
            handshake_hash: handshake_hash(&self.noise)?,
        });
        let session = session(
            &mut self.noise,
            Role::Client,
            choice.version,
            suite,
            self.config.max_body,
        )?;
        dst.extend_from_slice(&frame_bytes(FrameType::NOISE_3, &message));
        self.server_id = Some(server_id);
        Ok(Some(session))
    }
}

impl Handshake for ClientIdentityHandshake {
    fn handle_frame(
        &mut self,
        frame: Frame,
        dst: &mut BytesMut,
    ) -> Result<Option<Session>, HandshakeError> {
        ClientIdentityHandshake::handle_frame(self, frame, dst)
    }
}

/// The record suite a choice names, if the offer allows it: plaintext with no suite, or one of
/// the offered suites that we implement.
fn chosen_suite(offer: &Offer, choice: &Choice) -> Option<RecordSuite> {
    if choice.mode == Mode::PLAINTEXT {
        (choice.suite == NO_SUITE).then_some(RecordSuite::Plaintext)
    } else if offer.suites.contains(choice.suite) {
        RecordSuite::from_id(choice.suite)
    } else {
        None
    }
}

enum ServerState {
    AwaitMessage1,
    AwaitMessage3 { choice: Choice, suite: RecordSuite },
    Done,
}

/// The server side of the identity handshake.
pub struct ServerIdentityHandshake {
    config: ServerIdentityConfig,
    ephemeral: Option<[u8; 32]>,
    noise: Option<Box<snow::HandshakeState>>,
    state: ServerState,
    client_id: Option<NodeId>,
    principal: Option<Principal>,
    enrolment: Option<crate::enrol::Binding>,
}

impl std::fmt::Debug for ServerIdentityHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerIdentityHandshake")
            .field("client_id", &self.client_id)
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

impl ServerIdentityHandshake {
    pub fn new(config: ServerIdentityConfig) -> Self {
        Self::with_ephemeral(config, None)
    }

    /// [`ServerIdentityHandshake::new`] with a fixed ephemeral secret (test vectors only).
    pub fn with_ephemeral(config: ServerIdentityConfig, ephemeral: Option<[u8; 32]>) -> Self {
        Self {
            config,
            ephemeral,
            noise: None,
            state: ServerState::AwaitMessage1,
            client_id: None,
            principal: None,
            enrolment: None,
        }
    }

    /// `Some` when the session is an enrolment session (spec §13.11.2): the client asked to
    /// enrol, and the binding its enrolment must be made under.
    pub fn enrolment(&self) -> Option<crate::enrol::Binding> {
        self.enrolment
    }

    /// The client's id: `Some` once the session has been returned.
    pub fn client_id(&self) -> Option<NodeId> {
        self.client_id
    }

    /// Who the client is: `Some` once the session has been returned.
    pub fn principal(&self) -> Option<&Principal> {
        self.principal.as_ref()
    }

    /// Takes the principal out, leaving `None`.
    pub fn take_principal(&mut self) -> Option<Principal> {
        self.principal.take()
    }

    /// Handles one frame from the client, appending replies to `dst`. On error, send
    /// [`write_error`](crate::handshake::write_error) and close.
    pub fn handle_frame(
        &mut self,
        frame: Frame,
        dst: &mut BytesMut,
    ) -> Result<Option<Session>, HandshakeError> {
        match std::mem::replace(&mut self.state, ServerState::Done) {
            ServerState::AwaitMessage1 => {
                let body = expect(&frame, FrameType::NOISE_1)?;
                contributory(&self.config.identity, body)?;
                let mut noise = noise(&self.config.identity, self.ephemeral.as_ref(), false)?;
                let payload = read(&mut noise, body)?;
                let offer = Offer::decode(&payload).ok_or(HandshakeError::AuthenticationFailed)?;
                // Spec §4.3's negotiation, then the mode policy (§4.6), then the suite (§13.3),
                // in the PSK server's order.
                let version = offer.max_version.min(MAX_VERSION);
                if version < offer.min_version || version < MIN_VERSION {
                    return Err(HandshakeError::NoCommonVersion {
                        ours_min: MIN_VERSION,
                        ours_max: MAX_VERSION,
                        theirs_min: offer.min_version,
                        theirs_max: offer.max_version,
                    });
                }
                if offer.mode == Mode::PLAINTEXT && !self.config.allow_plaintext {
                    return Err(HandshakeError::PlaintextRefused);
                }
                let (id, suite) = if offer.mode == Mode::PLAINTEXT {
                    (NO_SUITE, RecordSuite::Plaintext)
                } else {
                    // The client's most preferred suite that we accept and the version allows.
                    let accepted = |id| {
                        RecordSuite::from_id(id).filter(|&s| {
                            self.config.suites.contains(&s) && version_allows(version, s)
                        })
                    };
                    let Some(id) = offer.suites.select(|id| accepted(id).is_some()) else {
                        return Err(HandshakeError::NoCommonSuite {
                            ours: self.config.suites.iter().filter_map(|s| s.id()).collect(),
                            theirs: offer.suites.suites().to_vec(),
                        });
                    };
                    let suite = accepted(id).ok_or(HandshakeError::AuthenticationFailed)?;
                    (id, suite)
                };
                let choice = Choice {
                    version,
                    mode: offer.mode,
                    suite: id,
                };
                let message = write(&mut noise, &choice.encode())?;
                dst.extend_from_slice(&frame_bytes(FrameType::NOISE_2, &message));
                self.noise = Some(noise);
                self.state = ServerState::AwaitMessage3 { choice, suite };
                Ok(None)
            }
            ServerState::AwaitMessage3 { choice, suite } => {
                let body = expect(&frame, FrameType::NOISE_3)?;
                let noise = self
                    .noise
                    .as_mut()
                    .ok_or(HandshakeError::AuthenticationFailed)?;
                let payload = read(noise, body)?;
                let client_key = remote_static(noise)?;
                contributory(&self.config.identity, &client_key)?;
                // The echoed choice, or (spec §13.11.2) the choice and the enrol intent, which
                // only a server that takes enrolments accepts.
                let enrolling = if Choice::decode(&payload) == Some(choice) {
                    false
                } else if self.config.enrolment
                    && payload.len() == 4
                    && payload[3] == ENROL_INTENT
                    && Choice::decode(&payload[..3]) == Some(choice)
                {
                    true
                } else {
                    return Err(HandshakeError::AuthenticationFailed);
                };
                let client_id = NodeId::from_public_key(&client_key);
                let principal = if enrolling {
                    // Whoever it is: the session may only enrol, and the client is decided by
                    // its code, not by the authorised clients.
                    self.enrolment = Some(crate::enrol::Binding {
                        client_static: client_key,
                        server_static: *self.config.identity.public_key(),
                        handshake_hash: handshake_hash(noise)?,
                    });
                    Principal {
                        name: enrolling_name(&client_id),
                        permissions: crate::handshake::Permissions::NONE,
                        subtree: None,
                    }
                } else {
                    self.config
                        .resolver
                        .resolve(&client_id, &client_key)
                        .ok_or(HandshakeError::AuthenticationFailed)?
                };
                let session = session(
                    noise,
                    Role::Server,
                    choice.version,
                    suite,
                    self.config.max_body,
                )?;
                self.noise = None;
                self.client_id = Some(client_id);
                self.principal = Some(principal);
                Ok(Some(session))
            }
            ServerState::Done => Err(HandshakeError::AuthenticationFailed),
        }
    }
}

impl Handshake for ServerIdentityHandshake {
    fn handle_frame(
        &mut self,
        frame: Frame,
        dst: &mut BytesMut,
    ) -> Result<Option<Session>, HandshakeError> {
        ServerIdentityHandshake::handle_frame(self, frame, dst)
    }
}

/// What a server accepts on one port: the PSK handshake, the identity handshake, or both.
#[derive(Debug, Clone, Default)]
pub struct AcceptConfig {
    pub psk: Option<ServerHandshakeConfig>,
    pub identity: Option<ServerIdentityConfig>,
}

/// A server handshake that picks PSK or identity by the first frame's type (spec §13.7):
/// `CLIENT_HELLO` or `NOISE_1`. A type whose handshake is not configured fails like a
/// forgery.
#[derive(Debug)]
pub enum AcceptHandshake {
    Start(AcceptConfig),
    Psk(Box<ServerHandshake>),
    Identity(Box<ServerIdentityHandshake>),
}

impl AcceptHandshake {
    pub fn new(config: AcceptConfig) -> Self {
        Self::Start(config)
    }

    /// Who the client is, once the session has been returned.
    pub fn take_principal(&mut self) -> Option<Principal> {
        match self {
            Self::Start(_) => None,
            Self::Psk(h) => h.take_principal(),
            Self::Identity(h) => h.take_principal(),
        }
    }

    /// The client's node id, when it proved one.
    pub fn client_id(&self) -> Option<NodeId> {
        match self {
            Self::Identity(h) => h.client_id(),
            _ => None,
        }
    }

    /// The enrolment binding, when the client asked for an enrolment session (spec §13.11.2).
    pub fn enrolment(&self) -> Option<crate::enrol::Binding> {
        match self {
            Self::Identity(h) => h.enrolment(),
            _ => None,
        }
    }

    pub fn handle_frame(
        &mut self,
        frame: Frame,
        dst: &mut BytesMut,
    ) -> Result<Option<Session>, HandshakeError> {
        if let Self::Start(config) = self {
            let config = std::mem::take(config);
            *self = match (frame.header.kind, config) {
                (FrameType::CLIENT_HELLO, AcceptConfig { psk: Some(c), .. }) => {
                    Self::Psk(Box::new(ServerHandshake::new(c)))
                }
                (
                    FrameType::NOISE_1,
                    AcceptConfig {
                        identity: Some(c), ..
                    },
                ) => Self::Identity(Box::new(ServerIdentityHandshake::new(c))),
                // Not a hello we serve (an error frame included): the PSK handshake's
                // answer to anything unexpected, so both ports look alike.
                _ => return Err(HandshakeError::AuthenticationFailed),
            };
        }
        match self {
            Self::Start(_) => Err(HandshakeError::AuthenticationFailed),
            Self::Psk(h) => h.handle_frame(frame, dst),
            Self::Identity(h) => h.handle_frame(frame, dst),
        }
    }
}

impl Handshake for AcceptHandshake {
    fn handle_frame(
        &mut self,
        frame: Frame,
        dst: &mut BytesMut,
    ) -> Result<Option<Session>, HandshakeError> {
        AcceptHandshake::handle_frame(self, frame, dst)
    }
}

/// Fuzz entry (`fuzz/fuzz_targets/identity_handshake.rs`): the first byte picks a side, the
/// rest is the peer's byte stream. The server ([`AcceptHandshake`], both handshakes) reads it
/// from the start; the client, after its real NOISE_1, reads it as the server's answer; the
/// third mode sends the server a real NOISE_1 first and the data as message 3. Every input
/// must fail or succeed cleanly, and an established session must read the rest without
/// panicking.
#[cfg(any(fuzzing, test))]
pub fn fuzz_identity_handshake(data: &[u8]) {
    use crate::handshake::handshake_decoder;
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let client_config = || ClientIdentityConfig::new(Identity::from_secret([1; 32]), None);
    let mut server_config = ServerIdentityConfig::new(Identity::from_secret([2; 32]));
    server_config.allow_plaintext = mode & 0x80 != 0;
    let mut buf = BytesMut::from(rest);
    let mut out = BytesMut::new();
    let mut decoder = handshake_decoder();
    let mut feed = |h: &mut dyn Handshake, buf: &mut BytesMut| {
        while let Ok(Some(frame)) = decoder.decode(buf) {
            match h.handle_frame(frame, &mut out) {
                Ok(None) => {}
                Ok(Some(mut session)) => {
                    while let Ok(Some(frame)) = session.read_frame(buf) {
                        let _ = frame.message();
                    }
                    return;
                }
                Err(_) => return,
            }
        }
    };
    match mode % 3 {
        0 => {
            let mut server = AcceptHandshake::new(AcceptConfig {
                psk: Some(ServerHandshakeConfig::new(crate::Key::from_bytes([7; 32]))),
                identity: Some(server_config),
            });
            feed(&mut server, &mut buf);
        }
        1 => {
            let mut hello = BytesMut::new();
            let Ok(mut client) = ClientIdentityHandshake::start(client_config(), &mut hello) else {
                return;
            };
            feed(&mut client, &mut buf);
        }
        _ => {
            let mut hello = BytesMut::new();
            let Ok(_client) =
                ClientIdentityHandshake::start_with(client_config(), Some([3; 32]), &mut hello)
            else {
                return;
            };
            let mut server = ServerIdentityHandshake::with_ephemeral(server_config, Some([4; 32]));
            hello.extend_from_slice(rest);
            feed(&mut server, &mut hello);
        }
    }
}

pub mod bound;

#[cfg(test)]
mod tests;
