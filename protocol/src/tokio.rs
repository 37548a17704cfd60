//! The async adapter: runs the handshake over any `AsyncRead + AsyncWrite` and then exposes the
//! session as a `tokio_util::codec` codec. It only moves bytes; every decision is in the
//! sans-IO core.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder, Framed, FramedParts};

use crate::enrol::Binding;
use crate::error::Error;
use crate::error::HandshakeError;
use crate::frame::Frame;
use crate::handshake::{
    handshake_decoder, write_error, ClientHandshake, ClientHandshakeConfig, Handshake, Principal,
    ServerHandshake, ServerHandshakeConfig,
};
use crate::header::{FrameType, RequestId};
use crate::identity::NodeId;
use crate::message::Message;
use crate::noise::{
    AcceptConfig, AcceptHandshake, ClientIdentityConfig, ClientIdentityError,
    ClientIdentityHandshake,
};
use crate::session::Session;

/// A session as a tokio-util codec: decodes (and decrypts) frames, encodes (and encrypts)
/// `(id, message)` pairs.
#[derive(Debug)]
pub struct FerryCodec {
    session: Session,
}

impl FerryCodec {
    pub fn new(session: Session) -> Self {
        Self { session }
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    pub fn into_session(self) -> Session {
        self.session
    }
}

impl Decoder for FerryCodec {
    type Item = Frame;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, Error> {
        self.session.read_frame(src)
    }
}

impl Encoder<(RequestId, Message)> for FerryCodec {
    type Error = Error;

    fn encode(
        &mut self,
        (id, message): (RequestId, Message),
        dst: &mut BytesMut,
    ) -> Result<(), Error> {
        self.session.write_message(id, &message, dst)
    }
}

impl Encoder<(RequestId, &Message)> for FerryCodec {
    type Error = Error;

    fn encode(
        &mut self,
        (id, message): (RequestId, &Message),
        dst: &mut BytesMut,
    ) -> Result<(), Error> {
        self.session.write_message(id, message, dst)
    }
}

/// Runs the client handshake. Returns the session and any bytes that arrived after the
/// handshake (they belong to the session). Callers bound it with a timeout.
pub async fn client_handshake<S>(
    io: &mut S,
    config: ClientHandshakeConfig,
) -> Result<(Session, BytesMut), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut hello = BytesMut::new();
    let mut handshake = ClientHandshake::start(config, &mut hello);
    drive(io, &mut handshake, hello).await
}

/// Runs the server handshake. On failure the error frame has been sent (best effort) before
/// returning; the caller closes the connection. Callers bound it with a timeout.
pub async fn server_handshake<S>(
    io: &mut S,
    config: ServerHandshakeConfig,
) -> Result<(Session, BytesMut), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (session, _principal, leftover) = server_handshake_principal(io, config).await?;
    Ok((session, leftover))
}

/// [`server_handshake`], also returning who the client proved to be (the principal its
/// [`KeyResolver`](crate::handshake::KeyResolver) named).
pub async fn server_handshake_principal<S>(
    io: &mut S,
    config: ServerHandshakeConfig,
) -> Result<(Session, Principal, BytesMut), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut handshake = ServerHandshake::new(config);
    let (session, leftover) = drive(io, &mut handshake, BytesMut::new()).await?;
    // Set whenever the handshake returns a session.
    let principal = handshake
        .take_principal()
        .ok_or(HandshakeError::AuthenticationFailed)?;
    Ok((session, principal, leftover))
}

/// Moves bytes for either side: sends `out`, feeds frames to the state machine, sends what it
/// answers, and on failure sends the error frame unless the peer's own error caused it.
async fn drive<S, H>(
    io: &mut S,
    handshake: &mut H,
    mut out: BytesMut,
) -> Result<(Session, BytesMut), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handshake,
{
    let mut decoder = handshake_decoder();
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        if !out.is_empty() {
            io.write_all(&out).await?;
            io.flush().await?;
            out.clear();
        }
        let (step, peer_sent_error) = match decoder.decode(&mut buf) {
            Ok(Some(frame)) => {
                let is_error = frame.header.kind == FrameType::ERROR;
                (handshake.handle_frame(frame, &mut out), is_error)
            }
            Ok(None) => {
                if io.read_buf(&mut buf).await? == 0 {
                    return Err(Error::Closed);
                }
                continue;
            }
            // A malformed frame is treated exactly like a wrong key.
            Err(_) => (Err(HandshakeError::AuthenticationFailed), false),
        };
        match step {
            Ok(None) => {}
            Ok(Some(session)) => {
                io.write_all(&out).await?;
                io.flush().await?;
                return Ok((session, buf));
            }
            Err(error) => {
                // Never answer an error with an error (spec §4.4). The peer may already be
                // gone; the handshake error is what matters.
                if !peer_sent_error {
                    out.clear();
                    write_error(&error, &mut out);
                    let _ = io.write_all(&out).await;
                }
                let _ = io.shutdown().await;
                return Err(error.into());
            }
        }
    }
}

/// Runs the identity handshake as a client (spec §13). Returns the session, the server's
/// proven id and any bytes that arrived after the handshake. Callers bound it with a timeout.
pub async fn client_identity_handshake<S>(
    io: &mut S,
    config: ClientIdentityConfig,
) -> Result<(Session, NodeId, BytesMut), ClientIdentityError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut hello = BytesMut::new();
    let mut handshake = ClientIdentityHandshake::start(config, &mut hello).map_err(Error::from)?;
    let result = drive(io, &mut handshake, hello).await;
    if let Some((expected, proven)) = handshake.server_id_mismatch() {
        return Err(ClientIdentityError::WrongServer { expected, proven });
    }
    let (session, leftover) = result?;
    let server = handshake
        .server_id()
        .ok_or(Error::Handshake(HandshakeError::AuthenticationFailed))?;
    Ok((session, server, leftover))
}

/// The server side of both handshakes on one stream, picked by the first frame (spec §13.7):
/// returns the session, who the client proved to be and any bytes after the handshake. On
/// failure the error frame has been sent; the caller closes. Callers bound it with a timeout.
pub async fn server_accept<S>(
    io: &mut S,
    config: AcceptConfig,
) -> Result<(Session, Principal, BytesMut), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (session, principal, _, leftover) = server_accept_enrolment(io, config).await?;
    Ok((session, principal, leftover))
}

/// [`server_accept`], also returning the enrolment binding when the client asked for an
/// enrolment session (spec §13.11.2; only with [`ServerIdentityConfig::enrolment`]).
///
/// [`ServerIdentityConfig::enrolment`]: crate::noise::ServerIdentityConfig::enrolment
pub async fn server_accept_enrolment<S>(
    io: &mut S,
    config: AcceptConfig,
) -> Result<(Session, Principal, Option<Binding>, BytesMut), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut handshake = AcceptHandshake::new(config);
    let (session, leftover) = drive(io, &mut handshake, BytesMut::new()).await?;
    let enrolment = handshake.enrolment();
    // Set whenever the handshake returns a session.
    let principal = handshake
        .take_principal()
        .ok_or(HandshakeError::AuthenticationFailed)?;
    Ok((session, principal, enrolment, leftover))
}

/// Runs the identity handshake asking for an enrolment session (spec §13.11.2): returns the
/// session, the server's proven id, the binding the enrolment is made under and any bytes
/// after the handshake. Callers bound it with a timeout.
pub async fn client_enrol_handshake<S>(
    io: &mut S,
    mut config: ClientIdentityConfig,
) -> Result<(Session, NodeId, Binding, BytesMut), ClientIdentityError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    config.enrol = true;
    let mut hello = BytesMut::new();
    let mut handshake = ClientIdentityHandshake::start(config, &mut hello).map_err(Error::from)?;
    let result = drive(io, &mut handshake, hello).await;
    if let Some((expected, proven)) = handshake.server_id_mismatch() {
        return Err(ClientIdentityError::WrongServer { expected, proven });
    }
    let (session, leftover) = result?;
    let failed = || Error::Handshake(HandshakeError::AuthenticationFailed);
    let server = handshake.server_id().ok_or_else(failed)?;
    let binding = handshake.binding().ok_or_else(failed)?;
    Ok((session, server, binding, leftover))
}

fn framed<S: AsyncRead + AsyncWrite>(
    io: S,
    session: Session,
    leftover: BytesMut,
) -> Framed<S, FerryCodec> {
    let mut parts = FramedParts::new::<(RequestId, Message)>(io, FerryCodec::new(session));
    parts.read_buf = leftover;
    Framed::from_parts(parts)
}

/// Handshakes as a client and returns a framed connection.
pub async fn connect<S>(
    mut io: S,
    config: ClientHandshakeConfig,
) -> Result<Framed<S, FerryCodec>, Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (session, leftover) = client_handshake(&mut io, config).await?;
    Ok(framed(io, session, leftover))
}

/// Handshakes as a server and returns a framed connection.
pub async fn accept<S>(
    mut io: S,
    config: ServerHandshakeConfig,
) -> Result<Framed<S, FerryCodec>, Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (session, leftover) = server_handshake(&mut io, config).await?;
    Ok(framed(io, session, leftover))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Key;
    use futures::{SinkExt, StreamExt};

    #[tokio::test]
    async fn ping_pong_over_a_duplex_pipe() {
        let key = Key::generate();
        let (a, b) = tokio::io::duplex(64);
        let server_key = key.clone();
        let server = tokio::spawn(async move {
            let mut conn = accept(b, ServerHandshakeConfig::new(server_key))
                .await
                .unwrap();
            while let Some(frame) = conn.next().await {
                let frame = frame.unwrap();
                if let Message::Ping(payload) = frame.message().unwrap() {
                    conn.send((frame.header.id, Message::Pong(payload)))
                        .await
                        .unwrap();
                }
            }
        });
        let mut conn = connect(a, ClientHandshakeConfig::new(key)).await.unwrap();
        for i in 1..=3u32 {
            let payload = bytes::Bytes::from(vec![i as u8; 1000 * i as usize]);
            conn.send((RequestId(i), Message::Ping(payload.clone())))
                .await
                .unwrap();
            let frame = conn.next().await.unwrap().unwrap();
            assert_eq!(frame.header.id, RequestId(i));
            assert_eq!(frame.message().unwrap(), Message::Pong(payload));
        }
        drop(conn);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn the_server_learns_the_principal() {
        let key = Key::from_bytes([1; 32]);
        let (mut a, mut b) = tokio::io::duplex(4096);
        let server_key = key.clone();
        let server = tokio::spawn(async move {
            server_handshake_principal(&mut b, ServerHandshakeConfig::new(server_key))
                .await
                .map(|(_, principal, _)| principal)
        });
        client_handshake(&mut a, ClientHandshakeConfig::new(key))
            .await
            .unwrap();
        assert_eq!(server.await.unwrap().unwrap(), Principal::key_holder());
    }

    #[tokio::test]
    async fn wrong_key_is_authentication_failed_on_both_sides() {
        let (a, b) = tokio::io::duplex(4096);
        let server = tokio::spawn(async move {
            accept(b, ServerHandshakeConfig::new(Key::generate()))
                .await
                .err()
        });
        let client = connect(a, ClientHandshakeConfig::new(Key::generate()))
            .await
            .err()
            .unwrap();
        assert_eq!(client.code(), crate::ErrorCode::AUTHENTICATION_FAILED);
        let server = server.await.unwrap().unwrap();
        assert_eq!(server.code(), crate::ErrorCode::AUTHENTICATION_FAILED);
    }
}
