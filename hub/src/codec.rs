//! Raw frames over a session as a tokio-util codec (the hub's services are not in the core's
//! `Message` enum), and [`Prefixed`], a stream that first yields bytes already read: what was
//! buffered behind the last hub frame belongs to the relayed stream that follows it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use ferry_protocol::{Frame, FrameType, RequestId, Service, Session};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::codec::{Decoder, Encoder};

/// One outgoing frame: type, service, id and plaintext body.
#[derive(Debug, Clone)]
pub struct Out {
    pub kind: FrameType,
    pub service: Service,
    pub id: RequestId,
    pub body: Bytes,
}

impl Out {
    pub fn new(kind: FrameType, service: Service, id: RequestId, body: Bytes) -> Self {
        Self {
            kind,
            service,
            id,
            body,
        }
    }
}

/// A session as a codec of raw frames.
#[derive(Debug)]
pub struct HubCodec {
    session: Session,
}

impl HubCodec {
    pub fn new(session: Session) -> Self {
        Self { session }
    }
}

impl Decoder for HubCodec {
    type Item = Frame;
    type Error = ferry_protocol::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, Self::Error> {
        self.session.read_frame(src)
    }
}

impl Encoder<Out> for HubCodec {
    type Error = ferry_protocol::Error;

    fn encode(&mut self, out: Out, dst: &mut BytesMut) -> Result<(), Self::Error> {
        self.session
            .write_frame(out.kind, out.service, out.id, &out.body, dst)
    }
}

/// `io`, after first yielding `prefix`.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: BytesMut,
    io: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: BytesMut, io: S) -> Self {
        Self { prefix, io }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn the_prefix_comes_first_then_the_stream() {
        let (a, mut b) = tokio::io::duplex(64);
        b.write_all(b" world").await.unwrap();
        drop(b);
        let mut p = Prefixed::new(BytesMut::from(&b"hello"[..]), a);
        let mut out = String::new();
        p.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }
}
