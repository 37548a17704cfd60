//! The handshake state machines (spec §4), sans-IO: feed decoded frames in, get bytes to send
//! and finally a [`Session`].
//!
//! ```text
//! client                                   server
//!   ClientHello(range, mode, nonce, share,
//!               [suite offer, key hint])   ->
//!                                          <- ServerHello(version, mode, nonce, share, [suite])
//!                                          <- ServerFinished(HMAC(k_sf, TH))
//!   ClientFinished(HMAC(k_cf, TH))         ->
//!   requests ...                           ->   (processed only after ClientFinished verifies)
//! ```
//!
//! `TH = SHA-256(ClientHello frame || ServerHello frame)`, whole frames as sent. Every handshake
//! frame carries version 1 in its header, whatever is negotiated, so that a peer of any version
//! can read the hello ([`HANDSHAKE_VERSION`]). Version 2 adds the record-suite offer and the key
//! hint to the ClientHello and the chosen suite to the ServerHello (spec §4.2, §4.3); both hellos
//! are in TH, so the Finished MACs cover the offer and the choice.

use std::sync::Arc;

use bytes::BytesMut;
use rand::RngCore;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::crypto::{derive_keys_for, mac_eq, Key, RecordSuite, SessionKeys};
use crate::error::{ErrorCode, HandshakeError};
use crate::frame::{Frame, FrameDecoder, DEFAULT_MAX_BODY};
use crate::header::{FrameType, RequestId, Service, MIN_VERSION};
use crate::message::{
    ClientHello, ErrorBody, Finished, Message, Mode, ServerHello, SuiteId, SuiteOffer,
};
use crate::session::{Role, Session};

/// The header version of every handshake frame and of errors sent before one is agreed.
pub const HANDSHAKE_VERSION: u8 = 1;

/// The newest protocol version the handshake negotiates (spec §4.3). Frames outside a session
/// (the handshake's, trackers') still carry [`crate::VERSION`], 1.
pub const MAX_VERSION: u8 = 2;

/// Cap on handshake frame bodies; the largest legitimate one is an error frame.
pub const HANDSHAKE_MAX_BODY: u32 = 2048;

/// A frame decoder for the handshake phase.
pub fn handshake_decoder() -> FrameDecoder {
    let mut decoder = FrameDecoder::new(HANDSHAKE_MAX_BODY);
    decoder.set_version(HANDSHAKE_VERSION);
    decoder
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientHandshakeConfig {
    pub key: Key,
    /// Ask for encryption (default) or plaintext.
    pub mode: Mode,
    /// Cap on incoming frame bodies once established.
    pub max_body: u32,
    /// The record suites to offer, most preferred first; default
    /// [`RecordSuite::DEFAULT_SUITES`] (GCM, then CBC + HMAC). CBC + HMAC alone is offered as a
    /// version-1 hello, without key hint, which servers from before version 2 understand
    /// (spec §4.3). Plaintext entries are ignored; a list without an encrypted suite means the
    /// default.
    pub suites: Vec<RecordSuite>,
    /// Send the key's hint ([`Key::hint`]) in a version-2 hello, so that a server with many
    /// keys can tell which one to prove (default on; it links this key's connections for an
    /// observer, spec §11).
    pub send_key_hint: bool,
}

impl ClientHandshakeConfig {
    pub fn new(key: Key) -> Self {
        Self {
            key,
            mode: Mode::ENCRYPTED,
            max_body: DEFAULT_MAX_BODY,
            suites: RecordSuite::DEFAULT_SUITES.to_vec(),
            send_key_hint: true,
        }
    }

    /// Offers `suites`, most preferred first (see [`ClientHandshakeConfig::suites`]).
    pub fn with_suites(mut self, suites: Vec<RecordSuite>) -> Self {
        self.suites = suites;
        self
    }

    /// The offer this configuration sends: `None` for a version-1 hello (CBC + HMAC alone).
    fn offer(&self) -> Option<SuiteOffer> {
        let mut ids: Vec<SuiteId> = Vec::new();
        for id in self.suites.iter().filter_map(|s| s.id()) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        if ids.is_empty() {
            ids = RecordSuite::DEFAULT_SUITES
                .iter()
                .filter_map(|s| s.id())
                .collect();
        }
        if ids == [SuiteId::AES_256_CBC_HMAC_SHA256] {
            return None;
        }
        SuiteOffer::new(ids)
    }

    pub fn plaintext(mut self, plaintext: bool) -> Self {
        self.mode = if plaintext {
            Mode::PLAINTEXT
        } else {
            Mode::ENCRYPTED
        };
        self
    }
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerHandshakeConfig {
    /// Picks, per client, the key it must prove and who it is once it has.
    pub resolver: Arc<dyn KeyResolver>,
    /// Accept clients that ask for plaintext. Off by default.
    pub allow_plaintext: bool,
    pub max_body: u32,
    /// The record suites this server accepts; default [`RecordSuite::DEFAULT_SUITES`]. The
    /// client's preference picks among them (spec §4.3); `vec![Aes256CbcHmacSha256]` serves
    /// only the old suite.
    pub suites: Vec<RecordSuite>,
}

impl ServerHandshakeConfig {
    /// One key for every client: whoever proves it is [`Principal::key_holder`].
    pub fn new(key: Key) -> Self {
        Self::with_resolver(Arc::new(SingleKey::new(key)))
    }

    /// Keys and principals chosen per client by `resolver`.
    pub fn with_resolver(resolver: Arc<dyn KeyResolver>) -> Self {
        Self {
            resolver,
            allow_plaintext: false,
            max_body: DEFAULT_MAX_BODY,
            suites: RecordSuite::DEFAULT_SUITES.to_vec(),
        }
    }

    /// Accepts `suites` only (see [`ServerHandshakeConfig::suites`]).
    pub fn with_suites(mut self, suites: Vec<RecordSuite>) -> Self {
        self.suites = suites;
        self
    }
}

/// Who an authenticated client is and what it may do. The server's services consult it for
/// every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// A label for logs, e.g. `key holder`; never secret.
    pub name: String,
    pub permissions: Permissions,
    /// The directory beneath the served root that this principal sees as its root (`/`),
    /// as a relative path such as `team/bob`; `None` for the whole root.
    pub subtree: Option<String>,
}

impl Principal {
    /// The one principal of a single-key server: whoever holds the key reads the whole root.
    pub fn key_holder() -> Self {
        Self {
            name: "key holder".into(),
            permissions: Permissions::READ,
            subtree: None,
        }
    }
}

/// What a principal may do. Room to grow: a subtree, writing, a quota (issue 11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permissions {
    /// May list, stat, fetch and digest anything beneath the served root.
    pub read: bool,
    /// May upload (spec §3.12) beneath the served root; without it a put is `READ_ONLY`.
    pub write: bool,
}

impl Permissions {
    /// Reading the whole root: what every key holder may do by default.
    pub const READ: Self = Self {
        read: true,
        write: false,
    };
    /// Reading and uploading (`ferry-server --allow-upload`).
    pub const READ_WRITE: Self = Self {
        read: true,
        write: true,
    };
    /// Nothing: every request is answered `PERMISSION_DENIED`.
    pub const NONE: Self = Self {
        read: false,
        write: false,
    };
}

/// Picks the key a client must prove, and the principal it is once it has proven it.
///
/// Called once per handshake with the decoded ClientHello, after the version, suite and mode
/// checks (spec §4.4's order). The server must commit to one key before it answers (the key is
/// mixed into ServerFinished), so a resolver chooses on what the hello says: a version-2 hello
/// may carry the key's hint ([`ClientHello::key_hint`], [`Key::hint`]), which names the key
/// without revealing it; a version-1 hello, or one without a hint, says nothing about the key.
///
/// `None` refuses the client, and it fails exactly like a wrong key (spec §4.4): the server
/// still answers with ServerHello and ServerFinished, under a key nobody holds, so the client
/// fails to verify it and the same `AUTHENTICATION_FAILED` bytes follow. A refusal is thus no
/// oracle for which clients are known.
pub trait KeyResolver: Send + Sync + std::fmt::Debug {
    fn resolve(&self, hello: &ClientHello) -> Option<(Key, Principal)>;
}

/// The resolver of a server with one key: every client must prove it, and each one that does
/// is [`Principal::key_holder`].
#[derive(Debug, Clone)]
pub struct SingleKey {
    key: Key,
    principal: Principal,
}

impl SingleKey {
    pub fn new(key: Key) -> Self {
        Self {
            key,
            principal: Principal::key_holder(),
        }
    }
}

impl KeyResolver for SingleKey {
    fn resolve(&self, _hello: &ClientHello) -> Option<(Key, Principal)> {
        Some((self.key.clone(), self.principal.clone()))
    }
}

/// The key an unresolved client is answered under: derived from our ephemeral secret, which
/// never leaves this handshake, so nobody can prove it.
fn unresolvable_key(secret: &[u8; 32]) -> Key {
    let mut hash = Sha256::new();
    hash.update(b"ferry unresolved client v1");
    hash.update(secret);
    Key::from_bytes(hash.finalize().into())
}

/// Ephemeral randomness of one handshake; fixed only in test vectors.
#[derive(Clone)]
pub struct Randomness {
    pub nonce: [u8; 32],
    pub secret: [u8; 32],
}

impl Randomness {
    pub fn generate() -> Self {
        let mut nonce = [0u8; 32];
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        rand::rngs::OsRng.fill_bytes(&mut secret);
        Self { nonce, secret }
    }
}

impl std::fmt::Debug for Randomness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Randomness(<redacted>)")
    }
}

fn frame_bytes(message: &Message) -> Vec<u8> {
    let mut frame = Frame::from_message(RequestId::CONNECTION, message);
    frame.header.version = HANDSHAKE_VERSION;
    let mut out = Vec::with_capacity(frame.encoded_len());
    frame.encode(&mut out);
    out
}

/// The shared secret, refusing low-order points that would make it all zeros (spec §5.1).
fn agree(secret: &StaticSecret, peer_share: [u8; 32]) -> Result<[u8; 32], HandshakeError> {
    let shared = secret.diffie_hellman(&PublicKey::from(peer_share));
    if !shared.was_contributory() {
        return Err(HandshakeError::AuthenticationFailed);
    }
    Ok(shared.to_bytes())
}

/// A handshake frame's bytes exactly as they crossed the wire (handshake frames are never
/// encrypted) and its message. Malformed input, including a handshake frame with a request id,
/// fails exactly like a wrong key (spec §4.4); an error frame is the peer's refusal.
fn read_frame(frame: Frame) -> Result<(Vec<u8>, Message), HandshakeError> {
    let mut received = Vec::with_capacity(frame.encoded_len());
    frame.encode(&mut received);
    // Handshake frames belong to the connection: id 0 (spec §4.1).
    if frame.header.id != RequestId::CONNECTION {
        return Err(HandshakeError::AuthenticationFailed);
    }
    match frame.message() {
        Ok(Message::Error { body, .. }) => Err(refused(body)),
        Ok(message) => Ok((received, message)),
        Err(_) => Err(HandshakeError::AuthenticationFailed),
    }
}

/// Either side of the handshake, for drivers that move bytes without caring which.
pub trait Handshake {
    /// Handles one frame from the peer, appending replies to `dst`; returns the session once
    /// the peer has proven it holds the key.
    fn handle_frame(
        &mut self,
        frame: Frame,
        dst: &mut BytesMut,
    ) -> Result<Option<Session>, HandshakeError>;
}

impl Handshake for ClientHandshake {
    fn handle_frame(
        &mut self,
        frame: Frame,
        dst: &mut BytesMut,
    ) -> Result<Option<Session>, HandshakeError> {
        ClientHandshake::handle_frame(self, frame, dst)
    }
}

impl Handshake for ServerHandshake {
    fn handle_frame(
        &mut self,
        frame: Frame,
        dst: &mut BytesMut,
    ) -> Result<Option<Session>, HandshakeError> {
        ServerHandshake::handle_frame(self, frame, dst)
    }
}

fn transcript_hash(client_hello: &[u8], server_hello: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(client_hello);
    hash.update(server_hello);
    hash.finalize().into()
}

/// Appends the plaintext error frame that ends a failed handshake. Every authentication-class
/// failure sends the same bytes, so a wrong key looks like a malformed handshake.
pub fn write_error(error: &HandshakeError, dst: &mut BytesMut) {
    let body = match error {
        HandshakeError::AuthenticationFailed => {
            ErrorBody::from_code(ErrorCode::AUTHENTICATION_FAILED)
        }
        HandshakeError::PlaintextRefused => ErrorBody::from_code(ErrorCode::PLAINTEXT_REFUSED),
        other => ErrorBody::new(other.code(), other.to_string()),
    };
    dst.extend_from_slice(&frame_bytes(&Message::Error {
        service: Service::HANDSHAKE,
        body,
    }));
}

/// Maps an error frame received during the handshake to an error.
fn refused(body: ErrorBody) -> HandshakeError {
    match body.code {
        ErrorCode::AUTHENTICATION_FAILED => HandshakeError::AuthenticationFailed,
        ErrorCode::PLAINTEXT_REFUSED => HandshakeError::PlaintextRefused,
        _ => HandshakeError::Refused(body),
    }
}

fn session_for(
    role: Role,
    mode: Mode,
    suite: RecordSuite,
    version: u8,
    max_body: u32,
    keys: &SessionKeys,
) -> Session {
    let session = if mode == Mode::PLAINTEXT {
        Session::plaintext(version, max_body)
    } else {
        Session::new(
            version,
            max_body,
            role,
            suite,
            &keys.client_to_server,
            &keys.server_to_client,
        )
    };
    // Spec §5.7: the ServerFinished MAC, a function of the PSK, both shares and TH.
    session.with_channel_binding(keys.server_confirm)
}

/// What the server's suite choice needs: the first suite of the client's offer that the server
/// accepts and this implementation speaks (spec §4.3).
fn select_suite(offer: &SuiteOffer, accepted: &[RecordSuite]) -> Option<RecordSuite> {
    offer
        .select(|id| RecordSuite::from_id(id).is_some_and(|s| accepted.contains(&s)))
        .and_then(RecordSuite::from_id)
}

#[derive(Debug)]
enum ClientState {
    AwaitServerHello,
    AwaitServerFinished {
        version: u8,
        suite: RecordSuite,
        keys: Box<SessionKeys>,
    },
    Done,
}

/// The client side of the handshake.
pub struct ClientHandshake {
    config: ClientHandshakeConfig,
    secret: StaticSecret,
    client_hello: Vec<u8>,
    /// What the hello offered: versions and suites (CBC + HMAC alone for a version-1 hello).
    max_version: u8,
    offer: SuiteOffer,
    state: ClientState,
}

impl std::fmt::Debug for ClientHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientHandshake")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl ClientHandshake {
    /// Starts a handshake and appends the ClientHello frame to `dst`.
    pub fn start(config: ClientHandshakeConfig, dst: &mut BytesMut) -> Self {
        Self::start_with(config, Randomness::generate(), dst)
    }

    /// [`ClientHandshake::start`] with given randomness (test vectors).
    pub fn start_with(
        config: ClientHandshakeConfig,
        randomness: Randomness,
        dst: &mut BytesMut,
    ) -> Self {
        let secret = StaticSecret::from(randomness.secret);
        // CBC + HMAC alone is version 1's hello, which every server reads (spec §4.3).
        let offer = config.offer();
        let hello = ClientHello {
            min_version: MIN_VERSION,
            max_version: if offer.is_some() { MAX_VERSION } else { 1 },
            mode: config.mode,
            nonce: randomness.nonce,
            key_share: PublicKey::from(&secret).to_bytes(),
            key_hint: offer
                .as_ref()
                .filter(|_| config.send_key_hint)
                .map(|_| config.key.hint()),
            suites: offer.unwrap_or_default(),
            rest: bytes::Bytes::new(),
        };
        let client_hello = frame_bytes(&Message::ClientHello(hello.clone()));
        dst.extend_from_slice(&client_hello);
        Self {
            config,
            secret,
            client_hello,
            max_version: hello.max_version,
            offer: hello.offered_suites(),
            state: ClientState::AwaitServerHello,
        }
    }

    /// Handles one frame from the server. Returns the session once the server has proven it
    /// holds the key; the ClientFinished frame has then been appended to `dst`.
    pub fn handle_frame(
        &mut self,
        frame: Frame,
        dst: &mut BytesMut,
    ) -> Result<Option<Session>, HandshakeError> {
        let is_error = frame.header.kind == FrameType::ERROR;
        let (received, message) = match read_frame(frame) {
            // A version-2 server answers an honest version-2 hello with ServerHello even when
            // the key is wrong, so this refusal comes from a server that could not read the
            // hello: one from before version 2 (spec §4.3).
            Err(HandshakeError::AuthenticationFailed)
                if is_error
                    && self.max_version >= 2
                    && matches!(self.state, ClientState::AwaitServerHello) =>
            {
                self.state = ClientState::Done;
                return Err(HandshakeError::HelloNotUnderstood);
            }
            other => other?,
        };
        match (
            std::mem::replace(&mut self.state, ClientState::Done),
            message,
        ) {
            (ClientState::AwaitServerHello, Message::ServerHello(hello)) => {
                let in_range = (MIN_VERSION..=self.max_version).contains(&hello.version);
                // The suite must be one we offered (a version-1 answer means CBC + HMAC).
                let suite = hello
                    .selected_suite()
                    .filter(|&id| self.offer.contains(id))
                    .and_then(RecordSuite::from_id);
                let Some(suite) = suite.filter(|_| in_range && hello.mode == self.config.mode)
                else {
                    return Err(HandshakeError::AuthenticationFailed);
                };
                let th = transcript_hash(&self.client_hello, &received);
                let shared = agree(&self.secret, hello.key_share)?;
                let keys = derive_keys_for(hello.version, &self.config.key, &shared, &th);
                self.state = ClientState::AwaitServerFinished {
                    version: hello.version,
                    suite,
                    keys: Box::new(keys),
                };
                Ok(None)
            }
            (
                ClientState::AwaitServerFinished {
                    version,
                    suite,
                    keys,
                },
                Message::ServerFinished(fin),
            ) => {
                if !mac_eq(&fin.mac, &keys.server_confirm) {
                    return Err(HandshakeError::AuthenticationFailed);
                }
                dst.extend_from_slice(&frame_bytes(&Message::ClientFinished(Finished {
                    mac: keys.client_confirm,
                })));
                Ok(Some(session_for(
                    Role::Client,
                    self.config.mode,
                    suite,
                    version,
                    self.config.max_body,
                    &keys,
                )))
            }
            _ => Err(HandshakeError::AuthenticationFailed),
        }
    }
}

#[derive(Debug)]
enum ServerState {
    AwaitClientHello,
    AwaitClientFinished {
        version: u8,
        mode: Mode,
        suite: RecordSuite,
        keys: Box<SessionKeys>,
        /// `None` when the resolver refused the client: the handshake can only fail.
        principal: Option<Principal>,
    },
    Done,
}

/// The server side of the handshake.
#[derive(Debug)]
pub struct ServerHandshake {
    config: ServerHandshakeConfig,
    randomness: Option<Randomness>,
    state: ServerState,
    /// Set once the client has proven its key.
    principal: Option<Principal>,
}

impl ServerHandshake {
    pub fn new(config: ServerHandshakeConfig) -> Self {
        Self::with_randomness(config, Randomness::generate())
    }

    /// [`ServerHandshake::new`] with given randomness (test vectors).
    pub fn with_randomness(config: ServerHandshakeConfig, randomness: Randomness) -> Self {
        Self {
            config,
            randomness: Some(randomness),
            state: ServerState::AwaitClientHello,
            principal: None,
        }
    }

    /// Who the client is: `Some` once [`handle_frame`](Self::handle_frame) has returned the
    /// session, `None` before and after a failure.
    pub fn principal(&self) -> Option<&Principal> {
        self.principal.as_ref()
    }

    /// Takes the principal out, leaving `None`.
    pub fn take_principal(&mut self) -> Option<Principal> {
        self.principal.take()
    }

    /// Handles one frame from the client, appending replies to `dst`. Returns the session once
    /// the client has proven it holds the key. On error, send [`write_error`] and close.
    pub fn handle_frame(
        &mut self,
        frame: Frame,
        dst: &mut BytesMut,
    ) -> Result<Option<Session>, HandshakeError> {
        let (received, message) = read_frame(frame)?;
        match (
            std::mem::replace(&mut self.state, ServerState::Done),
            message,
        ) {
            (ServerState::AwaitClientHello, Message::ClientHello(hello)) => {
                let version = hello.max_version.min(MAX_VERSION);
                if version < hello.min_version || version < MIN_VERSION {
                    return Err(HandshakeError::NoCommonVersion {
                        ours_min: MIN_VERSION,
                        ours_max: MAX_VERSION,
                        theirs_min: hello.min_version,
                        theirs_max: hello.max_version,
                    });
                }
                // Version 1 has one suite; version 2 takes the client's first acceptable one.
                let offer = if version < 2 {
                    SuiteOffer::new([SuiteId::AES_256_CBC_HMAC_SHA256])
                        .expect("a one-suite offer is valid")
                } else {
                    hello.offered_suites()
                };
                let Some(suite) = select_suite(&offer, &self.config.suites) else {
                    return Err(HandshakeError::NoCommonSuite {
                        ours: self.config.suites.iter().filter_map(|s| s.id()).collect(),
                        theirs: offer.suites().to_vec(),
                    });
                };
                if hello.mode == Mode::PLAINTEXT && !self.config.allow_plaintext {
                    return Err(HandshakeError::PlaintextRefused);
                }
                let randomness = self
                    .randomness
                    .take()
                    .ok_or(HandshakeError::AuthenticationFailed)?;
                let secret = StaticSecret::from(randomness.secret);
                let server_hello = frame_bytes(&Message::ServerHello(ServerHello {
                    version,
                    mode: hello.mode,
                    nonce: randomness.nonce,
                    key_share: PublicKey::from(&secret).to_bytes(),
                    suite: if version >= 2 { suite.id() } else { None },
                }));
                let th = transcript_hash(&received, &server_hello);
                let shared = agree(&secret, hello.key_share)?;
                let (key, principal) = match self.config.resolver.resolve(&hello) {
                    Some((key, principal)) => (key, Some(principal)),
                    None => (unresolvable_key(&randomness.secret), None),
                };
                let keys = derive_keys_for(version, &key, &shared, &th);
                dst.extend_from_slice(&server_hello);
                dst.extend_from_slice(&frame_bytes(&Message::ServerFinished(Finished {
                    mac: keys.server_confirm,
                })));
                self.state = ServerState::AwaitClientFinished {
                    version,
                    mode: hello.mode,
                    suite,
                    keys: Box::new(keys),
                    principal,
                };
                Ok(None)
            }
            (
                ServerState::AwaitClientFinished {
                    version,
                    mode,
                    suite,
                    keys,
                    principal,
                },
                Message::ClientFinished(fin),
            ) => {
                if !mac_eq(&fin.mac, &keys.client_confirm) {
                    return Err(HandshakeError::AuthenticationFailed);
                }
                // Unreachable in practice (nobody holds the unresolvable key), but a refused
                // client is never established.
                let Some(principal) = principal else {
                    return Err(HandshakeError::AuthenticationFailed);
                };
                self.principal = Some(principal);
                Ok(Some(session_for(
                    Role::Server,
                    mode,
                    suite,
                    version,
                    self.config.max_body,
                    &keys,
                )))
            }
            _ => Err(HandshakeError::AuthenticationFailed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::FrameType;

    /// Runs both state machines against each other in memory.
    fn run(
        client: ClientHandshakeConfig,
        server: ServerHandshakeConfig,
    ) -> Result<(Session, Session), (HandshakeError, BytesMut)> {
        let mut c2s = BytesMut::new();
        let mut s2c = BytesMut::new();
        let mut client = ClientHandshake::start(client, &mut c2s);
        let mut server = ServerHandshake::new(server);
        let (mut cdec, mut sdec) = (handshake_decoder(), handshake_decoder());
        let mut client_session = None;
        loop {
            while let Some(frame) = sdec.decode(&mut c2s).unwrap() {
                match server.handle_frame(frame, &mut s2c) {
                    Ok(Some(session)) => {
                        return Ok((client_session.expect("client done first"), session))
                    }
                    Ok(None) => {}
                    Err(e) => {
                        let mut out = BytesMut::new();
                        write_error(&e, &mut out);
                        return Err((e, out));
                    }
                }
            }
            while let Some(frame) = cdec.decode(&mut s2c).unwrap() {
                match client.handle_frame(frame, &mut c2s) {
                    Ok(Some(session)) => client_session = Some(session),
                    Ok(None) => {}
                    Err(e) => return Err((e, BytesMut::new())),
                }
            }
        }
    }

    #[test]
    fn matching_keys_agree_and_talk() {
        let key = Key::generate();
        let (mut client, mut server) = run(
            ClientHandshakeConfig::new(key.clone()),
            ServerHandshakeConfig::new(key),
        )
        .unwrap();
        assert_eq!(client.mode(), Mode::ENCRYPTED);
        let mut wire = BytesMut::new();
        client
            .write_message(RequestId(1), &Message::Ping("hi".into()), &mut wire)
            .unwrap();
        let frame = server.read_frame(&mut wire).unwrap().unwrap();
        assert_eq!(frame.message().unwrap(), Message::Ping("hi".into()));
    }

    #[test]
    fn wrong_key_fails_the_same_way_as_garbage() {
        let (error, _) = run(
            ClientHandshakeConfig::new(Key::generate()),
            ServerHandshakeConfig::new(Key::generate()),
        )
        .expect_err("must fail");
        assert_eq!(error, HandshakeError::AuthenticationFailed);

        // What an attacker without the key sees: it completes the exchange with a guessed
        // ClientFinished, and gets exactly the bytes a garbage ClientHello gets.
        let mut server = ServerHandshake::new(ServerHandshakeConfig::new(Key::generate()));
        let mut c2s = BytesMut::new();
        let _client = ClientHandshake::start(ClientHandshakeConfig::new(Key::generate()), &mut c2s);
        let hello = handshake_decoder().decode(&mut c2s).unwrap().unwrap();
        server.handle_frame(hello, &mut BytesMut::new()).unwrap();
        let guess = Frame::from_message(
            RequestId(0),
            &Message::ClientFinished(Finished { mac: [0x42; 32] }),
        );
        let error = server
            .handle_frame(guess, &mut BytesMut::new())
            .unwrap_err();
        let mut wrong_key_bytes = BytesMut::new();
        write_error(&error, &mut wrong_key_bytes);

        let mut server = ServerHandshake::new(ServerHandshakeConfig::new(Key::generate()));
        let garbage = Frame {
            header: crate::Header::new(
                FrameType::CLIENT_HELLO,
                Service::HANDSHAKE,
                RequestId(0),
                3,
            ),
            body: "abc".into(),
        };
        let error = server
            .handle_frame(garbage, &mut BytesMut::new())
            .unwrap_err();
        let mut garbage_bytes = BytesMut::new();
        write_error(&error, &mut garbage_bytes);
        assert_eq!(garbage_bytes, wrong_key_bytes);
    }

    /// A resolver that answers every hello the same way, and checks it was given the hello.
    #[derive(Debug)]
    struct Fixed(Option<(Key, Principal)>);

    impl KeyResolver for Fixed {
        fn resolve(&self, hello: &ClientHello) -> Option<(Key, Principal)> {
            assert_eq!(hello.max_version, MAX_VERSION);
            self.0.clone()
        }
    }

    /// Runs a handshake to completion and returns the principal the server established.
    fn established_principal(
        client: ClientHandshakeConfig,
        server: ServerHandshakeConfig,
    ) -> Option<Principal> {
        let mut c2s = BytesMut::new();
        let mut s2c = BytesMut::new();
        let mut client = ClientHandshake::start(client, &mut c2s);
        let mut server = ServerHandshake::new(server);
        let (mut cdec, mut sdec) = (handshake_decoder(), handshake_decoder());
        let hello = sdec.decode(&mut c2s).unwrap().unwrap();
        assert!(server.handle_frame(hello, &mut s2c).unwrap().is_none());
        assert_eq!(server.principal(), None, "nobody is established yet");
        while let Some(frame) = cdec.decode(&mut s2c).unwrap() {
            client.handle_frame(frame, &mut c2s).unwrap();
        }
        let finished = sdec.decode(&mut c2s).unwrap().unwrap();
        server.handle_frame(finished, &mut s2c).unwrap()?;
        server.principal().cloned()
    }

    #[test]
    fn one_key_is_one_principal_with_read_access() {
        let key = Key::from_bytes([3; 32]);
        let principal = established_principal(
            ClientHandshakeConfig::new(key.clone()),
            ServerHandshakeConfig::new(key),
        );
        assert_eq!(principal, Some(Principal::key_holder()));
        assert!(Principal::key_holder().permissions.read);
    }

    #[test]
    fn the_resolver_picks_the_key_and_names_the_principal() {
        let key = Key::from_bytes([4; 32]);
        let bob = Principal {
            name: "bob".into(),
            permissions: Permissions::NONE,
            subtree: None,
        };
        let server =
            ServerHandshakeConfig::with_resolver(Arc::new(Fixed(Some((key.clone(), bob.clone())))));
        assert_eq!(
            established_principal(ClientHandshakeConfig::new(key), server),
            Some(bob)
        );
    }

    #[test]
    fn an_unresolved_client_fails_exactly_like_a_wrong_key() {
        let key = Key::from_bytes([5; 32]);
        let refuse = || ServerHandshakeConfig::with_resolver(Arc::new(Fixed(None)));
        let wrong_key = || ServerHandshakeConfig::new(Key::from_bytes([6; 32]));
        let randomness = || Randomness {
            nonce: [8; 32],
            secret: [9; 32],
        };
        // The client sees the same shape of answer (ServerHello, ServerFinished) and fails
        // the same way, after the same frames.
        let mut answers = Vec::new();
        for server in [refuse(), wrong_key()] {
            let mut c2s = BytesMut::new();
            let mut s2c = BytesMut::new();
            let mut client =
                ClientHandshake::start(ClientHandshakeConfig::new(key.clone()), &mut c2s);
            let mut server = ServerHandshake::with_randomness(server, randomness());
            let hello = handshake_decoder().decode(&mut c2s).unwrap().unwrap();
            assert!(server.handle_frame(hello, &mut s2c).unwrap().is_none());
            let lengths = {
                let mut copy = s2c.clone();
                let mut dec = handshake_decoder();
                let mut lengths = Vec::new();
                while let Some(frame) = dec.decode(&mut copy).unwrap() {
                    lengths.push((frame.header.kind, frame.encoded_len()));
                }
                lengths
            };
            let mut dec = handshake_decoder();
            let hello = dec.decode(&mut s2c).unwrap().unwrap();
            client.handle_frame(hello, &mut c2s).unwrap();
            let finished = dec.decode(&mut s2c).unwrap().unwrap();
            let client_error = client.handle_frame(finished, &mut c2s).unwrap_err();
            // An attacker's guessed ClientFinished gets the same bytes from both servers.
            let guess = Frame::from_message(
                RequestId(0),
                &Message::ClientFinished(Finished { mac: [0x42; 32] }),
            );
            let server_error = server
                .handle_frame(guess, &mut BytesMut::new())
                .unwrap_err();
            let mut bytes = BytesMut::new();
            write_error(&server_error, &mut bytes);
            assert_eq!(server.principal(), None);
            answers.push((lengths, client_error, bytes));
        }
        assert_eq!(answers[0], answers[1]);
        assert_eq!(answers[0].1, HandshakeError::AuthenticationFailed);
    }

    const GCM: RecordSuite = RecordSuite::Aes256Gcm;
    const CBC: RecordSuite = RecordSuite::Aes256CbcHmacSha256;

    /// The suite both ends agreed on, and the version.
    fn agreed(client: ClientHandshakeConfig, server: ServerHandshakeConfig) -> (RecordSuite, u8) {
        let (mut c, mut s) = run(client, server).expect("handshake completes");
        let (c_send, _) = (c.version(), ());
        assert_eq!(c_send, s.version());
        // Both directions work under the agreed suite.
        let mut wire = BytesMut::new();
        c.write_message(RequestId(1), &Message::Ping("up".into()), &mut wire)
            .unwrap();
        assert_eq!(
            s.read_frame(&mut wire).unwrap().unwrap().message().unwrap(),
            Message::Ping("up".into())
        );
        s.write_message(RequestId(1), &Message::Pong("down".into()), &mut wire)
            .unwrap();
        assert_eq!(
            c.read_frame(&mut wire).unwrap().unwrap().message().unwrap(),
            Message::Pong("down".into())
        );
        let (c_half, _) = c.into_split();
        let (s_half, _) = s.into_split();
        assert_eq!(c_half.suite(), s_half.suite());
        (c_half.suite(), c_send)
    }

    #[test]
    fn default_ends_agree_on_gcm_in_version_2() {
        let key = Key::from_bytes([1; 32]);
        assert_eq!(
            agreed(
                ClientHandshakeConfig::new(key.clone()),
                ServerHandshakeConfig::new(key)
            ),
            (GCM, 2)
        );
    }

    #[test]
    fn the_old_suite_on_either_end_agrees_on_cbc_hmac() {
        let key = Key::from_bytes([2; 32]);
        // A client offering CBC + HMAC alone speaks version 1 (what old servers read).
        let client = ClientHandshakeConfig::new(key.clone()).with_suites(vec![CBC]);
        assert_eq!(
            agreed(client, ServerHandshakeConfig::new(key.clone())),
            (CBC, 1)
        );
        // A server accepting CBC + HMAC alone picks it from a default offer, in version 2.
        let server = ServerHandshakeConfig::new(key.clone()).with_suites(vec![CBC]);
        assert_eq!(
            agreed(ClientHandshakeConfig::new(key.clone()), server),
            (CBC, 2)
        );
        // The client's preference decides.
        let client = ClientHandshakeConfig::new(key.clone()).with_suites(vec![CBC, GCM]);
        assert_eq!(agreed(client, ServerHandshakeConfig::new(key)), (CBC, 2));
    }

    #[test]
    fn no_common_suite_is_reported_with_both_lists() {
        let key = Key::from_bytes([3; 32]);
        let client = ClientHandshakeConfig::new(key.clone()).with_suites(vec![CBC]);
        let server = ServerHandshakeConfig::new(key).with_suites(vec![GCM]);
        let (error, frame) = run(client, server).expect_err("no common suite");
        assert_eq!(
            error,
            HandshakeError::NoCommonSuite {
                ours: vec![SuiteId::AES_256_GCM],
                theirs: vec![SuiteId::AES_256_CBC_HMAC_SHA256],
            }
        );
        assert_eq!(error.code(), ErrorCode::UNSUPPORTED_VERSION);
        assert!(frame.len() > 12, "an informational error frame is sent");
    }

    #[test]
    fn the_hello_carries_the_offer_and_the_key_hint() {
        let key = Key::from_bytes([4; 32]);
        let hello = |config: ClientHandshakeConfig| {
            let mut wire = BytesMut::new();
            ClientHandshake::start(config, &mut wire);
            match handshake_decoder()
                .decode(&mut wire)
                .unwrap()
                .unwrap()
                .message()
                .unwrap()
            {
                Message::ClientHello(hello) => hello,
                other => panic!("not a hello: {other:?}"),
            }
        };
        let v2 = hello(ClientHandshakeConfig::new(key.clone()));
        assert_eq!((v2.min_version, v2.max_version), (1, 2));
        assert_eq!(
            v2.suites.suites(),
            [SuiteId::AES_256_GCM, SuiteId::AES_256_CBC_HMAC_SHA256]
        );
        assert_eq!(v2.key_hint(), Some(key.hint()));
        let mut quiet = ClientHandshakeConfig::new(key.clone());
        quiet.send_key_hint = false;
        assert_eq!(hello(quiet).key_hint(), None);
        // The old suite alone is version 1's 67-byte hello: no offer, no hint.
        let v1 = hello(ClientHandshakeConfig::new(key).with_suites(vec![CBC]));
        assert_eq!((v1.min_version, v1.max_version), (1, 1));
        assert!(v1.suites.is_empty());
        assert_eq!(v1.key_hint(), None);
        assert_eq!(Message::ClientHello(v1).encoded_len(), ClientHello::LEN);
    }

    /// A resolver that routes by key hint, as a server with many keys does.
    #[derive(Debug)]
    struct ByHint(Vec<Key>);

    impl KeyResolver for ByHint {
        fn resolve(&self, hello: &ClientHello) -> Option<(Key, Principal)> {
            let hint = hello.key_hint()?;
            let key = self.0.iter().find(|k| k.hint() == hint)?;
            Some((key.clone(), Principal::key_holder()))
        }
    }

    #[test]
    fn a_resolver_finds_the_key_by_its_hint() {
        let keys: Vec<Key> = (10..14).map(|b| Key::from_bytes([b; 32])).collect();
        let server = || ServerHandshakeConfig::with_resolver(Arc::new(ByHint(keys.clone())));
        for key in &keys {
            assert_eq!(
                established_principal(ClientHandshakeConfig::new(key.clone()), server()),
                Some(Principal::key_holder())
            );
        }
    }

    #[test]
    fn a_version_1_server_refusing_our_hello_gets_a_clear_error() {
        // What a server from before version 2 does with a longer hello: it does not decode,
        // so it answers AUTHENTICATION_FAILED before any ServerHello (spec §4.4).
        let mut c2s = BytesMut::new();
        let mut client = ClientHandshake::start(
            ClientHandshakeConfig::new(Key::from_bytes([5; 32])),
            &mut c2s,
        );
        let mut refusal = BytesMut::new();
        write_error(&HandshakeError::AuthenticationFailed, &mut refusal);
        let frame = handshake_decoder().decode(&mut refusal).unwrap().unwrap();
        let error = client.handle_frame(frame, &mut c2s).unwrap_err();
        assert_eq!(error, HandshakeError::HelloNotUnderstood);
        assert!(error.to_string().contains("--suite cbc-hmac"), "{error}");

        // A version-1 hello refused the same way is just a failed authentication.
        let mut c2s = BytesMut::new();
        let mut client = ClientHandshake::start(
            ClientHandshakeConfig::new(Key::from_bytes([5; 32])).with_suites(vec![CBC]),
            &mut c2s,
        );
        let mut refusal = BytesMut::new();
        write_error(&HandshakeError::AuthenticationFailed, &mut refusal);
        let frame = handshake_decoder().decode(&mut refusal).unwrap().unwrap();
        assert_eq!(
            client.handle_frame(frame, &mut c2s).unwrap_err(),
            HandshakeError::AuthenticationFailed
        );
    }

    #[test]
    fn a_server_hello_choosing_a_suite_we_did_not_offer_fails() {
        let key = Key::from_bytes([6; 32]);
        let mut c2s = BytesMut::new();
        let mut client = ClientHandshake::start(
            ClientHandshakeConfig::new(key.clone()).with_suites(vec![GCM]),
            &mut c2s,
        );
        let hello = ServerHello {
            version: 2,
            mode: Mode::ENCRYPTED,
            nonce: [1; 32],
            key_share: [9; 32],
            suite: Some(SuiteId::AES_256_CBC_HMAC_SHA256),
        };
        let frame = Frame::from_message(RequestId(0), &Message::ServerHello(hello));
        assert_eq!(
            client.handle_frame(frame, &mut c2s).unwrap_err(),
            HandshakeError::AuthenticationFailed
        );
    }

    #[test]
    fn plaintext_needs_the_servers_consent() {
        let key = Key::generate();
        let client = ClientHandshakeConfig::new(key.clone()).plaintext(true);
        let (error, _) =
            run(client.clone(), ServerHandshakeConfig::new(key.clone())).expect_err("refused");
        assert_eq!(error, HandshakeError::PlaintextRefused);
        let mut server = ServerHandshakeConfig::new(key);
        server.allow_plaintext = true;
        let (c, s) = run(client, server).unwrap();
        assert_eq!((c.mode(), s.mode()), (Mode::PLAINTEXT, Mode::PLAINTEXT));
    }

    #[test]
    fn low_order_key_share_is_refused() {
        let mut server = ServerHandshake::new(ServerHandshakeConfig::new(Key::generate()));
        let hello = Message::ClientHello(ClientHello {
            min_version: 1,
            max_version: 1,
            mode: Mode::ENCRYPTED,
            nonce: [0; 32],
            key_share: [0; 32],
            suites: SuiteOffer::default(),
            key_hint: None,
            rest: bytes::Bytes::new(),
        });
        let frame = Frame::from_message(RequestId(0), &hello);
        assert_eq!(
            server
                .handle_frame(frame, &mut BytesMut::new())
                .unwrap_err(),
            HandshakeError::AuthenticationFailed
        );
    }

    #[test]
    fn disjoint_versions_are_reported() {
        let mut server = ServerHandshake::new(ServerHandshakeConfig::new(Key::generate()));
        let hello = Message::ClientHello(ClientHello {
            min_version: 7,
            max_version: 9,
            mode: Mode::ENCRYPTED,
            nonce: [0; 32],
            key_share: [9; 32],
            suites: SuiteOffer::new([SuiteId::AES_256_GCM]).unwrap(),
            key_hint: None,
            rest: bytes::Bytes::new(),
        });
        let frame = Frame::from_message(RequestId(0), &hello);
        assert!(matches!(
            server.handle_frame(frame, &mut BytesMut::new()),
            Err(HandshakeError::NoCommonVersion { theirs_min: 7, .. })
        ));
    }

    #[test]
    fn handshake_frames_with_a_request_id_are_refused() {
        let mut c2s = BytesMut::new();
        let _client = ClientHandshake::start(ClientHandshakeConfig::new(Key::generate()), &mut c2s);
        let mut hello = handshake_decoder().decode(&mut c2s).unwrap().unwrap();
        hello.header.id = RequestId(5);
        let mut server = ServerHandshake::new(ServerHandshakeConfig::new(Key::generate()));
        assert_eq!(
            server
                .handle_frame(hello, &mut BytesMut::new())
                .unwrap_err(),
            HandshakeError::AuthenticationFailed
        );
    }

    #[test]
    fn requests_before_finished_are_refused() {
        let mut server = ServerHandshake::new(ServerHandshakeConfig::new(Key::generate()));
        let frame = Frame::from_message(RequestId(1), &Message::Ping("x".into()));
        assert_eq!(
            server
                .handle_frame(frame, &mut BytesMut::new())
                .unwrap_err(),
            HandshakeError::AuthenticationFailed
        );
    }
}
