//! `ferry join CODE ferry://[ID@]HOST[:PORT]/`: enrols this machine's identity on a server with
//! a one-time code from `ferry-server invite` (spec §13.11), and pins the server's id in the
//! known-servers file, in one step.
//!
//! The identity handshake asks for an enrolment session; then one ENROL exchange: SPAKE2 over
//! the code, bound to both static keys and the handshake hash, with key confirmation both
//! ways. The server's confirmation is checked first, so a server that does not know the code
//! (an impostor at the address, or a relay between two sessions) never gets ours. Each hint
//! is tried in turn until one completes the handshake.

use std::time::Duration;

use bytes::BytesMut;
use ferry_client::error::ClientError;
use ferry_common::known_servers;
use ferry_common::url::Hint;
use ferry_protocol::enrol::{ClientEnrol, Code};
use ferry_protocol::frame_wake::FrameWake;
use ferry_protocol::identity::NodeId;
use ferry_protocol::message::{EnrolEnd, ENROL_WRITE};
use ferry_protocol::noise::{ClientIdentityConfig, ClientIdentityError};
use ferry_protocol::{ErrorCode, Message, RequestId, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{trust, Context};
use crate::cli::JoinArgs;

/// How long the whole exchange after the handshake may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// The request id of the one ENROL.
const ENROL_ID: RequestId = RequestId(1);

pub async fn run(ctx: &Context, args: JoinArgs) -> Result<(), ClientError> {
    let code: Code = args
        .code
        .parse()
        .map_err(|e: ferry_protocol::enrol::CodeError| ClientError::Usage(e.to_string()))?;
    let identity = ctx.identity()?;
    // An id in the address, or a pin, must answer; otherwise the code itself proves the server.
    let server_id = match args.url.server_id {
        Some(id) => Some(id),
        None => trust::pin_for(&args.url)?.map(|pin| pin.id),
    };
    let mut last = None;
    for hint in args.url.hints() {
        let mut config = ClientIdentityConfig::new(identity.clone(), server_id);
        config.suites = ferry_protocol::crypto::RecordSuite::parse_selection(&ctx.global.suite)
            .unwrap_or_else(|_| ferry_protocol::crypto::RecordSuite::DEFAULT_SUITES.to_vec());
        config.max_body = ferry_protocol::DEFAULT_MAX_BODY;
        match connect(ctx, &hint, config).await {
            Ok((stream, session, proven, binding, leftover)) => {
                let end = exchange(stream, session, &code, binding, leftover).await?;
                let file = trust::path()?;
                known_servers::add(&file, &hint, &proven)
                    .map_err(|e| ClientError::Local(e.to_string()))?;
                let access = if end.flags & ENROL_WRITE != 0 {
                    "read-write"
                } else {
                    "read-only"
                };
                let root = if end.root.is_empty() {
                    "/".to_owned()
                } else {
                    format!("{}/", end.root)
                };
                println!(
                    "enrolled on {} as {} ({access}, root {root}); its id {proven} is pinned in {}",
                    hint.authority(),
                    end.name,
                    file.display()
                );
                return Ok(());
            }
            Err(error) => last = Some(error),
        }
    }
    Err(last.unwrap_or_else(|| ClientError::Usage("the address has no host".into())))
}

type Connected = (
    FrameWake<TcpStream>,
    Session,
    NodeId,
    ferry_protocol::enrol::Binding,
    BytesMut,
);

/// Connects to one hint and runs the handshake, asking for an enrolment session.
async fn connect(
    ctx: &Context,
    hint: &Hint,
    config: ClientIdentityConfig,
) -> Result<Connected, ClientError> {
    let secs = ctx.global.connect_timeout.as_secs();
    let timeout = |what: &str| ClientError::Timeout {
        what: format!("connecting to {} ({what})", hint.authority()),
        secs,
    };
    let stream = tokio::time::timeout(
        ctx.global.connect_timeout,
        TcpStream::connect(hint.authority()),
    )
    .await
    .map_err(|_| timeout("tcp"))?
    .map_err(|source| ClientError::Resolve {
        host: hint.authority(),
        reason: source.to_string(),
    })?;
    let addr = stream.peer_addr().map_err(|source| ClientError::Resolve {
        host: hint.authority(),
        reason: source.to_string(),
    })?;
    let mut stream = ferry_protocol::transport::tcp_stream(stream);
    let handshake = tokio::time::timeout(
        ctx.global.connect_timeout,
        ferry_protocol::tokio::client_enrol_handshake(&mut stream, config),
    )
    .await
    .map_err(|_| timeout("handshake"))?;
    match handshake {
        Ok((session, proven, binding, leftover)) => {
            Ok((stream, session, proven, binding, leftover))
        }
        Err(ClientIdentityError::WrongServer { expected, proven }) => {
            Err(ClientError::WrongServer {
                addr,
                expected,
                proven,
            })
        }
        Err(ClientIdentityError::Failed(error)) => Err(ClientError::Local(format!(
            "the server at {addr} refused the enrolment handshake ({error}): it may not take \
             enrolments (it must run with --identity), or it is not a Ferry server"
        ))),
    }
}

/// The ENROL exchange over an established enrolment session.
async fn exchange(
    mut stream: FrameWake<TcpStream>,
    session: Session,
    code: &Code,
    binding: ferry_protocol::enrol::Binding,
    leftover: BytesMut,
) -> Result<EnrolEnd, ClientError> {
    let (mut send, mut recv) = session.into_split();
    let mut rx = leftover;
    let work = async {
        let (enrol, request) = ClientEnrol::start(code, binding);
        let mut out = BytesMut::new();
        send.write_message(ENROL_ID, &Message::EnrolRequest(request), &mut out)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        stream.write_all(&out).await.map_err(lost)?;
        let response = match next(&mut stream, &mut recv, &mut rx).await? {
            Message::EnrolResponse(response) => response,
            other => return Err(unexpected(other)),
        };
        let confirm = enrol.handle_response(&response).map_err(|_| {
            ClientError::Local(format!(
                "the code {}-… did not match the server's: it was mistyped, or the server is \
                 not the one that issued it; the code is used up now, ask for a new one",
                code.nameplate
            ))
        })?;
        out.clear();
        send.write_message(ENROL_ID, &Message::EnrolConfirm(confirm), &mut out)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        stream.write_all(&out).await.map_err(lost)?;
        match next(&mut stream, &mut recv, &mut rx).await? {
            Message::EnrolEnd(end) => Ok(end),
            other => Err(unexpected(other)),
        }
    };
    let result = tokio::time::timeout(EXCHANGE_TIMEOUT, work)
        .await
        .map_err(|_| ClientError::Timeout {
            what: "waiting for the server to enrol us".into(),
            secs: EXCHANGE_TIMEOUT.as_secs(),
        })?;
    // The session has done its one thing; closing tells the server so.
    let _ = stream.shutdown().await;
    result
}

fn lost(e: std::io::Error) -> ClientError {
    ClientError::ConnectionLost(e.to_string())
}

/// An error frame ends the exchange with the server's sentence; anything else is a protocol
/// error.
fn unexpected(message: Message) -> ClientError {
    match message {
        // A refused code exits 1 like the client's own mismatch: the same mistake.
        Message::Error { body, .. } if body.code == ErrorCode::ENROLMENT_FAILED => {
            ClientError::Local(format!(
                "the server refused the enrolment: {}",
                body.message
            ))
        }
        Message::Error { body, .. } => ClientError::Remote(body),
        other => ClientError::Protocol(format!("unexpected {:?} during enrolment", other.kind())),
    }
}

/// The next message for the enrolment (or the connection), reading as needed; pings are
/// answered by nobody, since the exchange is short.
async fn next(
    stream: &mut FrameWake<TcpStream>,
    recv: &mut ferry_protocol::RecvHalf,
    rx: &mut BytesMut,
) -> Result<Message, ClientError> {
    loop {
        if let Some(frame) = recv
            .read_frame(rx)
            .map_err(|e| ClientError::Protocol(e.to_string()))?
        {
            let id = frame.header.id;
            let message = frame
                .message()
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            if id == ENROL_ID || id == RequestId::CONNECTION {
                if matches!(message, Message::Ping(_) | Message::Pong(_)) {
                    continue;
                }
                return Ok(message);
            }
            continue;
        }
        rx.reserve(4096);
        let n = stream.read_buf(rx).await.map_err(lost)?;
        if n == 0 {
            return Err(ClientError::ConnectionLost(
                "the server closed the connection during enrolment".into(),
            ));
        }
    }
}
