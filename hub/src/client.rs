//! The caller's side of the hub's services: one identity-handshake connection to the hub, with
//! register, release, move, resolve, punch and relay (spec/HUB.md §3).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_common::url::Hint;
use ferry_protocol::identity::{Identity, NodeId};
use ferry_protocol::noise::{ClientIdentityConfig, ClientIdentityError};
use ferry_protocol::{ErrorBody, ErrorCode, FrameType, RequestId, Service};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, FramedParts};

use crate::codec::{HubCodec, Out, Prefixed};
use crate::wire::{self, register_flags, Punch, ResolveResponse};

/// A relayed stream: the hub's splice to the other end. The end-to-end handshake runs over it.
pub type RelayStream = Prefixed<TcpStream>;

/// Why a hub request failed. One sentence each, with the numbers.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("cannot reach the hub at {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("the hub at {addr} proved id {proven}, not {expected}")]
    WrongHub {
        addr: SocketAddr,
        expected: NodeId,
        proven: NodeId,
    },
    #[error("handshake with the hub at {addr} failed: {reason}")]
    Handshake { addr: SocketAddr, reason: String },
    #[error("the hub refused: {message} ({code})", code = wire::code_name(*code))]
    Refused { code: ErrorCode, message: String },
    #[error("the hub broke the protocol: {0}")]
    Protocol(String),
    #[error("the hub closed the connection")]
    Closed,
    #[error("timed out after {secs} s {what}")]
    Timeout { what: String, secs: u64 },
}

impl HubError {
    /// The hub's error code, when it refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// One authenticated connection to a hub.
#[derive(Debug)]
pub struct HubConn {
    framed: Framed<TcpStream, HubCodec>,
    next_id: u32,
    hub_id: NodeId,
    addr: SocketAddr,
    local: SocketAddr,
}

/// Time allowed for each connection attempt and for each request.
pub const HUB_TIMEOUT: Duration = Duration::from_secs(10);

/// Between the starts of two attempts on the hub's addresses (RFC 8305 §5's recommended
/// Connection Attempt Delay).
pub const HUB_ATTEMPT_DELAY: Duration = Duration::from_millis(250);

impl HubConn {
    /// Connects to the hub's hints and runs the identity handshake; `hub_id`, when given, must
    /// be proven. The addresses of all hints are raced as Happy Eyeballs does (RFC 8305): one
    /// attempt starts every [`HUB_ATTEMPT_DELAY`] (at once when one fails), and the first to
    /// finish its handshake wins, so a hint that accepts and stalls costs one delay, not the
    /// whole timeout. A hub that proves another id is an answer, not a miss: it ends the race.
    pub async fn connect(
        hints: &[Hint],
        hub_id: Option<NodeId>,
        identity: &Identity,
    ) -> Result<HubConn, HubError> {
        let mut last = None;
        let mut addrs = Vec::new();
        for hint in hints {
            match hint.ip() {
                Some(ip) => addrs.push(SocketAddr::new(ip, hint.port)),
                None => match tokio::net::lookup_host(hint.authority()).await {
                    Ok(found) => addrs.extend(found),
                    Err(source) => {
                        last = Some(HubError::Connect {
                            addr: hint.authority(),
                            source,
                        })
                    }
                },
            }
        }
        let mut waiting = addrs.into_iter();
        let mut running = futures::stream::FuturesUnordered::new();
        let mut next_start = tokio::time::Instant::now();
        loop {
            let more = waiting.len() > 0;
            if running.is_empty() && !more {
                return Err(
                    last.unwrap_or(HubError::Protocol("the hub address has no hint".into()))
                );
            }
            tokio::select! {
                biased;
                Some(result) = running.next(), if !running.is_empty() => match result {
                    Ok(conn) => return Ok(conn),
                    Err(e @ HubError::WrongHub { .. }) => return Err(e),
                    Err(e) => {
                        last = Some(e);
                        next_start = tokio::time::Instant::now();
                    }
                },
                () = tokio::time::sleep_until(next_start), if more => {
                    if let Some(addr) = waiting.next() {
                        running.push(Self::connect_addr(addr, hub_id, identity));
                    }
                    next_start = tokio::time::Instant::now() + HUB_ATTEMPT_DELAY;
                }
            }
        }
    }

    /// One address.
    pub async fn connect_addr(
        addr: SocketAddr,
        hub_id: Option<NodeId>,
        identity: &Identity,
    ) -> Result<HubConn, HubError> {
        let attempt = async {
            // A reusable socket, so that a punch can leave from this connection's port, the one
            // the hub observed (PROTOCOL.md §14.3).
            let any = if addr.is_ipv4() {
                SocketAddr::from(([0, 0, 0, 0], 0))
            } else {
                SocketAddr::from(([0u16; 8], 0))
            };
            let mut stream = ferry_traversal::tcp::connect_reusable(any, addr)
                .await
                .map_err(|source| HubError::Connect {
                    addr: addr.to_string(),
                    source,
                })?;
            let _ = stream.set_nodelay(true);
            let local = stream.local_addr().map_err(|source| HubError::Connect {
                addr: addr.to_string(),
                source,
            })?;
            let config = ClientIdentityConfig::new(identity.clone(), hub_id);
            let (session, proven, leftover) =
                ferry_protocol::tokio::client_identity_handshake(&mut stream, config)
                    .await
                    .map_err(|e| match e {
                        ClientIdentityError::WrongServer { expected, proven } => {
                            HubError::WrongHub {
                                addr,
                                expected,
                                proven,
                            }
                        }
                        ClientIdentityError::Failed(e) => HubError::Handshake {
                            addr,
                            reason: e.to_string(),
                        },
                    })?;
            let mut parts = FramedParts::new::<Out>(stream, HubCodec::new(session));
            parts.read_buf = leftover;
            Ok(HubConn {
                framed: Framed::from_parts(parts),
                next_id: 1,
                hub_id: proven,
                addr,
                local,
            })
        };
        tokio::time::timeout(HUB_TIMEOUT, attempt)
            .await
            .map_err(|_| HubError::Timeout {
                what: format!("connecting to the hub at {addr}"),
                secs: HUB_TIMEOUT.as_secs(),
            })?
    }

    /// The id the hub proved.
    pub fn hub_id(&self) -> NodeId {
        self.hub_id
    }

    /// The hub's address.
    pub fn hub_addr(&self) -> SocketAddr {
        self.addr
    }

    /// This end's address of the connection.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn id(&mut self) -> RequestId {
        let id = RequestId(self.next_id);
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    pub(crate) async fn send(&mut self, out: Out) -> Result<(), HubError> {
        self.framed.send(out).await.map_err(|_| HubError::Closed)
    }

    /// Sends a request and waits for its response body, answering pings meanwhile.
    pub(crate) async fn request(
        &mut self,
        service: Service,
        body: Bytes,
    ) -> Result<(RequestId, Bytes), HubError> {
        let id = self.id();
        self.send(Out::new(FrameType::REQUEST, service, id, body))
            .await?;
        let body = tokio::time::timeout(HUB_TIMEOUT, self.answer(id))
            .await
            .map_err(|_| HubError::Timeout {
                what: format!("waiting for the hub's answer (service 0x{:02x})", service.0),
                secs: HUB_TIMEOUT.as_secs(),
            })??;
        Ok((id, body))
    }

    /// The next frame about `id`: a response's body, or the refusal.
    pub(crate) async fn answer(&mut self, id: RequestId) -> Result<Bytes, HubError> {
        loop {
            let frame = match self.framed.next().await {
                None => return Err(HubError::Closed),
                Some(Err(e)) => return Err(HubError::Protocol(e.to_string())),
                Some(Ok(frame)) => frame,
            };
            let h = frame.header;
            match h.kind {
                FrameType::PING => {
                    self.send(Out::new(FrameType::PONG, h.service, h.id, frame.body))
                        .await?
                }
                FrameType::ERROR if h.id == id || h.id.0 == 0 => {
                    let body = ErrorBody::decode(frame.body)
                        .map_err(|e| HubError::Protocol(e.to_string()))?;
                    return Err(HubError::Refused {
                        code: body.code,
                        message: body.message,
                    });
                }
                FrameType::RESPONSE | FrameType::DATA if h.id == id => return Ok(frame.body),
                _ => {}
            }
        }
    }

    /// Binds `name` to this identity; `invite` on an invite-only hub.
    pub async fn register(&mut self, name: &str, invite: Option<&str>) -> Result<NodeId, HubError> {
        let req = wire::RegisterRequest {
            flags: 0,
            name: name.to_string(),
            invite: invite.unwrap_or("").to_string(),
            to: None,
        };
        self.register_request(req).await
    }

    /// Releases `name` (only its holder may).
    pub async fn release(&mut self, name: &str) -> Result<NodeId, HubError> {
        let req = wire::RegisterRequest {
            flags: register_flags::RELEASE,
            name: name.to_string(),
            invite: String::new(),
            to: None,
        };
        self.register_request(req).await
    }

    /// Moves `name` to another node id (only its holder may).
    pub async fn move_to(&mut self, name: &str, to: NodeId) -> Result<NodeId, HubError> {
        let req = wire::RegisterRequest {
            flags: 0,
            name: name.to_string(),
            invite: String::new(),
            to: Some(to),
        };
        self.register_request(req).await
    }

    async fn register_request(&mut self, req: wire::RegisterRequest) -> Result<NodeId, HubError> {
        let (_, body) = self.request(wire::REGISTER, req.to_bytes()).await?;
        let resp =
            wire::RegisterResponse::decode(body).map_err(|e| HubError::Protocol(e.to_string()))?;
        Ok(resp.id)
    }

    /// `name`'s node id and hints.
    pub async fn resolve(&mut self, name: &str) -> Result<ResolveResponse, HubError> {
        let req = wire::NameRequest {
            name: name.to_string(),
        };
        let (_, body) = self.request(wire::RESOLVE, req.to_bytes()).await?;
        ResolveResponse::decode(body).map_err(|e| HubError::Protocol(e.to_string()))
    }

    /// Measures the round trip to the hub with a ping.
    pub async fn rtt(&mut self) -> Result<Duration, HubError> {
        let nonce: [u8; 8] = rand::random();
        let started = Instant::now();
        self.send(Out::new(
            FrameType::PING,
            Service::ECHO,
            RequestId(0),
            Bytes::copy_from_slice(&nonce),
        ))
        .await?;
        let wait = async {
            loop {
                let frame = match self.framed.next().await {
                    None => return Err(HubError::Closed),
                    Some(Err(e)) => return Err(HubError::Protocol(e.to_string())),
                    Some(Ok(frame)) => frame,
                };
                if frame.header.kind == FrameType::PONG && frame.body.as_ref() == nonce {
                    return Ok(started.elapsed());
                }
            }
        };
        tokio::time::timeout(HUB_TIMEOUT, wait)
            .await
            .map_err(|_| HubError::Timeout {
                what: "waiting for the hub's pong".into(),
                secs: HUB_TIMEOUT.as_secs(),
            })?
    }

    /// Asks the hub to coordinate a punch to `name` (HUB.md §3.6): returns when and where to
    /// dial; the node is told the same about us.
    pub async fn punch(
        &mut self,
        name: &str,
        rtt: Duration,
        addrs: Vec<SocketAddr>,
    ) -> Result<Punch, HubError> {
        let req = wire::PunchRequest {
            name: name.to_string(),
            rtt_ms: rtt.as_millis().min(u128::from(u32::MAX)) as u32,
            addrs,
        };
        let (_, body) = self.request(wire::PUNCH, req.to_bytes()).await?;
        Punch::decode(body).map_err(|e| HubError::Protocol(e.to_string()))
    }

    /// A token for this connection's UDP reflect requests (HUB.md §3.7): the hub then takes the
    /// source of a request carrying it as this connection's UDP address, and gives it to the
    /// other side of a punch.
    pub async fn udp_token(&mut self) -> Result<[u8; wire::TOKEN_LEN], HubError> {
        let (_, body) = self.request(wire::UDP_TOKEN, Bytes::new()).await?;
        let resp =
            wire::UdpTokenResponse::decode(body).map_err(|e| HubError::Protocol(e.to_string()))?;
        Ok(resp.token)
    }

    /// Asks to be relayed to `name`. The connection becomes the relayed stream; the returned id
    /// is the node the hub says is at the other end, which the end-to-end handshake must still
    /// prove.
    pub async fn relay(self, name: &str) -> Result<(RelayStream, NodeId), HubError> {
        let req = wire::RelayRequest::Connect {
            name: name.to_string(),
        };
        self.relay_request(req).await
    }

    /// The node's side: answers a relay event with its token.
    pub async fn relay_accept(
        self,
        token: [u8; wire::TOKEN_LEN],
    ) -> Result<(RelayStream, NodeId), HubError> {
        self.relay_request(wire::RelayRequest::Accept { token })
            .await
    }

    async fn relay_request(
        mut self,
        req: wire::RelayRequest,
    ) -> Result<(RelayStream, NodeId), HubError> {
        let (_, body) = self.request(wire::RELAY, req.to_bytes()).await?;
        let resp =
            wire::RelayResponse::decode(body).map_err(|e| HubError::Protocol(e.to_string()))?;
        let parts = self.framed.into_parts();
        Ok((Prefixed::new(parts.read_buf, parts.io), resp.peer))
    }

    /// Starts the node's control request (HUB.md §3.4): returns its request id and the
    /// reflected address. Events then arrive through [`HubConn::next_event`].
    pub async fn presence(
        &mut self,
        name: &str,
        addrs: Vec<SocketAddr>,
    ) -> Result<(RequestId, SocketAddr), HubError> {
        let req = wire::PresenceRequest {
            name: name.to_string(),
            addrs,
        };
        let (id, body) = self.request(wire::PRESENCE, req.to_bytes()).await?;
        let resp =
            wire::PresenceResponse::decode(body).map_err(|e| HubError::Protocol(e.to_string()))?;
        Ok((id, resp.reflected))
    }

    /// The next event on the presence request `id`, answering pings meanwhile.
    pub async fn next_event(&mut self, id: RequestId) -> Result<crate::wire::Event, HubError> {
        let body = self.answer(id).await?;
        crate::wire::Event::decode(body).map_err(|e| HubError::Protocol(e.to_string()))
    }

    pub(crate) fn framed(&mut self) -> &mut Framed<TcpStream, HubCodec> {
        &mut self.framed
    }
}
