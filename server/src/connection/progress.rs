//! Tells admission when a pending connection first sends something, on any transport: the
//! handshake reads through [`MarkOnFirstRead`], which marks the ticket on the first read that
//! returns (data or end of stream). Admission evicts silent connections first.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::admission::PendingTicket;

/// `io`, marking `ticket` as having spoken on the first completed read.
pub(crate) struct MarkOnFirstRead<'a, S> {
    io: &'a mut S,
    ticket: &'a PendingTicket,
    marked: bool,
}

impl<'a, S> MarkOnFirstRead<'a, S> {
    pub fn new(io: &'a mut S, ticket: &'a PendingTicket) -> Self {
        Self {
            io,
            ticket,
            marked: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for MarkOnFirstRead<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut *this.io).poll_read(cx, buf);
        if polled.is_ready() && !this.marked {
            this.marked = true;
            this.ticket.mark_progress();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for MarkOnFirstRead<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_shutdown(cx)
    }
}
