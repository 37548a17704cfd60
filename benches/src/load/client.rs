//! A load connection: handshake, then raw session halves over a TCP stream. The load generator
//! drives the protocol directly instead of through `ferry_client`, so it controls exactly how
//! many requests are in flight and measures nothing of its own making.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use ferry_protocol::{ClientHandshakeConfig, Key, RecvHalf, SendHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Dial {
    pub addr: SocketAddr,
    pub key: Key,
    pub plaintext: bool,
    pub timeout: Duration,
}

/// An established connection, split for reading and writing.
#[derive(Debug)]
pub struct LoadConn {
    pub reader: OwnedReadHalf,
    pub writer: OwnedWriteHalf,
    pub send: SendHalf,
    pub recv: RecvHalf,
    /// Bytes that arrived with the end of the handshake.
    pub read_buf: BytesMut,
}

/// Connects and handshakes within `dial.timeout`. The error is one line naming the cause.
pub async fn dial(dial: &Dial) -> Result<LoadConn, String> {
    let attempt = async {
        let mut stream = TcpStream::connect(dial.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let config = ClientHandshakeConfig::new(dial.key.clone()).plaintext(dial.plaintext);
        let (session, read_buf) = ferry_protocol::tokio::client_handshake(&mut stream, config)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let (reader, writer) = stream.into_split();
        let (send, recv) = session.into_split();
        Ok(LoadConn {
            reader,
            writer,
            send,
            recv,
            read_buf,
        })
    };
    tokio::time::timeout(dial.timeout, attempt)
        .await
        .map_err(|_| format!("connect: no handshake within {:?}", dial.timeout))?
}
