//! The reader: reads and opens frames, dispatches requests to tasks, answers what belongs to no
//! request (pong, refusals), cancels, and decides when the connection closes ([`Close`]).
//!
//! Frames come from the driver's [`FrameReader`], which enforces the per-frame read deadline (a
//! frame that has started must finish within `frame_read_timeout`); this loop adds the idle
//! timeout (nothing in flight and nothing received) and the in-flight limit. Frame, decode and record errors end the connection with an error frame on
//! id 0; a well-formed but unknown request gets `UNKNOWN_REQUEST` for its id and the
//! connection continues.

use ferry_protocol::conn::{Refusal, RequestTable};
use ferry_protocol::driver::{FrameReader, ReadEnd};
use ferry_protocol::{DecodeError, ErrorBody, ErrorCode, Frame, Message, RequestId, Service};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::Limits;
use crate::service::{self, Context, Out, Request, Sink};
use crate::shutdown::Signals;

use super::writer::{self, Link};

/// Why a connection near its key's usage limit takes no more requests and closes.
const RETIRING: &str =
    "this connection's key is near its usage limit (spec 5.5); continue on a new connection";

/// Why the reader stopped.
#[derive(Debug)]
pub(super) enum Close {
    /// The client closed its side and nothing is in flight.
    Eof,
    /// The stream ended inside a frame (spec §9 row 5): close, nothing to send.
    Truncated,
    /// The client sent a connection-level error.
    PeerError(ErrorBody),
    /// Protocol violation, decode or record failure, frame deadline: tell the client why.
    Fatal(ErrorCode, String),
    /// Nothing happened for `idle_timeout`.
    Idle,
    /// Shutdown requested and nothing left in flight.
    Shutdown,
    /// Grace period over.
    Killed,
    /// The send key reached its usage limit (spec §5.5): only final frames are sealed now.
    Spent,
    /// The writer ended (client gone or write deadline).
    WriterGone,
    /// Reading from the socket failed.
    Io(std::io::Error),
}

#[derive(Debug)]
struct InFlight {
    service: Service,
    generation: u64,
    abort: AbortHandle,
}

/// The reader's state.
#[derive(Debug)]
pub(super) struct Reader<W> {
    limits: Limits,
    /// What every request task gets.
    services: Context,
    /// Request frames, and what must follow them (`CANCELLED`, the goodbye).
    data: mpsc::Sender<Out>,
    /// Replies that belong to no running request; the writer drains these first.
    ctrl: mpsc::Sender<Out>,
    /// The server's grace-period-over signal.
    kill: CancellationToken,
    /// Request tasks; each returns its id and generation.
    tasks: JoinSet<(RequestId, u64)>,
    in_flight: RequestTable<InFlight>,
    /// Tells a finished task from a newer request that reused its id after a cancel.
    next_generation: u64,
    /// The writer, for answers the reader writes itself while the writer task is idle
    /// (`None`: every answer is queued).
    link: Option<Arc<Link<W>>>,
}

impl<W: AsyncWrite + Unpin + Send> Reader<W> {
    pub fn new(
        limits: Limits,
        services: Context,
        data: mpsc::Sender<Out>,
        ctrl: mpsc::Sender<Out>,
        kill: CancellationToken,
        link: Option<Arc<Link<W>>>,
    ) -> Self {
        Self {
            limits,
            services,
            data,
            ctrl,
            kill,
            tasks: JoinSet::new(),
            in_flight: RequestTable::default(),
            next_generation: 0,
            link,
        }
    }

    /// Whether the send key is near its usage limit (spec §5.5).
    fn closing_soon(&self) -> bool {
        self.link.as_ref().is_some_and(|link| link.closing_soon())
    }

    /// The data queue, for the goodbye after the loop.
    pub fn data(&self) -> &mpsc::Sender<Out> {
        &self.data
    }

    /// Aborts every request task.
    pub fn abort_all(&mut self) {
        self.tasks.abort_all();
    }

    /// Queues a `SHUTTING_DOWN` error for every request in flight, through the data queue so
    /// that it follows what the request queued, each waiting at most `patience` for room.
    pub async fn end_in_flight(&mut self, patience: std::time::Duration) {
        let open: Vec<(RequestId, Service)> = self
            .in_flight
            .iter()
            .map(|(id, flight)| (id, flight.service))
            .collect();
        for (id, service) in open {
            self.in_flight.finish(id);
            let ended = (
                id,
                Message::Error {
                    service,
                    body: ErrorBody::from_code(ErrorCode::SHUTTING_DOWN),
                },
            );
            let sent = tokio::time::timeout(patience, self.data.send(ended)).await;
            if !matches!(sent, Ok(Ok(()))) {
                return;
            }
        }
    }

    pub async fn read_loop<R: AsyncRead + Unpin>(
        &mut self,
        mut frames: FrameReader<R>,
        signals: &Signals,
        writer: &mut tokio::task::JoinHandle<()>,
    ) -> Close {
        let limits = self.limits.clone();
        let mut stopping = false;
        let mut eof = false;
        let mut last_activity = Instant::now();
        // Never cancelled without a writer to spend the key.
        let spent = self
            .link
            .as_ref()
            .map(|link| link.spent().clone())
            .unwrap_or_default();
        // Made once and polled again on every turn: a cancellation future made afresh per
        // turn adds and removes a waiter (a lock each) per frame, and a fresh idle timer
        // enters and leaves the timer wheel per frame, where moving a registered deadline
        // later is one atomic update.
        let mut killed = std::pin::pin!(signals.kill.cancelled());
        let mut key_spent = std::pin::pin!(spent.cancelled());
        let mut stop_asked = std::pin::pin!(signals.stop.cancelled());
        let mut idle = std::pin::pin!(tokio::time::sleep_until(
            last_activity + limits.idle_timeout
        ));
        loop {
            let retiring = self.closing_soon();
            if self.in_flight.is_empty() {
                if eof {
                    return Close::Eof;
                }
                if retiring {
                    return Close::Fatal(ErrorCode::SHUTTING_DOWN, RETIRING.into());
                }
                if stopping {
                    return Close::Shutdown;
                }
            }
            // Idle only while nothing is in flight and no frame is partly read (the frame
            // deadline covers that one).
            let idle_armed = self.in_flight.is_empty() && !frames.is_mid_frame();
            let idle_deadline = last_activity + limits.idle_timeout;
            if idle_armed && idle.deadline() != idle_deadline {
                idle.as_mut().reset(idle_deadline);
            }
            tokio::select! {
                biased;
                _ = &mut killed => return Close::Killed,
                _ = &mut key_spent => return Close::Spent,
                _ = &mut stop_asked, if !stopping => stopping = true,
                result = &mut *writer => {
                    if let Err(error) = result {
                        tracing::warn!(%error, "writer task failed");
                    }
                    return Close::WriterGone;
                }
                Some(joined) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    last_activity = Instant::now();
                    let panicked = self.finished(joined);
                    // An enrolment session ends with its enrolment (spec §13.11.4).
                    if let Some(outcome) = self.services.enrol.as_ref().and_then(|s| s.outcome()) {
                        return match outcome {
                            Ok(()) => Close::Eof,
                            Err(message) => Close::Fatal(ErrorCode::ENROLMENT_FAILED, message),
                        };
                    }
                    if let Some((id, service)) = panicked {
                        let internal = (
                            id,
                            Message::Error {
                                service,
                                body: ErrorBody::from_code(ErrorCode::INTERNAL),
                            },
                        );
                        if let Some(close) = self.enqueue(&self.data, internal).await {
                            return close;
                        }
                    }
                }
                _ = &mut idle, if idle_armed => return Close::Idle,
                frame = frames.next_frame(), if !eof => match frame {
                    Ok(frame) => {
                        last_activity = Instant::now();
                        if let Some(close) = self.handle_frame(frame, stopping).await {
                            return close;
                        }
                    }
                    Err(ReadEnd::Eof) => {
                        eof = true;
                        // Uploads waiting for data will get none.
                        service::put::connection_ended(&self.services);
                        if let Some(session) = &self.services.enrol {
                            session.connection_ended();
                        }
                    }
                    Err(ReadEnd::Truncated) => return Close::Truncated,
                    Err(ReadEnd::Stalled(limit)) => {
                        return Close::Fatal(
                            ErrorCode::TIMEOUT,
                            format!(
                                "frame not completed within {}",
                                humantime::format_duration(limit)
                            ),
                        );
                    }
                    Err(ReadEnd::Frame(error)) => {
                        return Close::Fatal(error.code(), error.to_string())
                    }
                    Err(ReadEnd::Io(error)) => return Close::Io(error),
                },
            }
        }
    }

    /// Bookkeeping for a finished request task. Returns a request that panicked, which still
    /// owes the client a final frame.
    fn finished(
        &mut self,
        joined: Result<(RequestId, u64), JoinError>,
    ) -> Option<(RequestId, Service)> {
        match joined {
            Ok((id, generation)) => {
                if self
                    .in_flight
                    .get(id)
                    .is_some_and(|f| f.generation == generation)
                {
                    self.in_flight.finish(id);
                }
                None
            }
            // Cancelled tasks were removed when cancelled.
            Err(error) if error.is_cancelled() => None,
            Err(error) => {
                // A panicking request must not take the connection down; find its id.
                tracing::error!(%error, "request task panicked");
                let task = error.id();
                let id = self
                    .in_flight
                    .iter()
                    .find(|(_, f)| f.abort.id() == task)
                    .map(|(id, _)| id)?;
                let flight = self.in_flight.finish(id)?;
                Some((id, flight.service))
            }
        }
    }

    /// Sends a reply that does not belong to a running request's stream: written at once if
    /// the writer is idle, else through the control queue.
    async fn reply(&self, id: RequestId, message: Message) -> Option<Close> {
        let mut frames = vec![message];
        if let Some(close) = self.write_now(id, &mut frames).await {
            return close;
        }
        let message = frames.pop()?;
        self.enqueue(&self.ctrl, (id, message)).await
    }

    /// Writes `frames` of request `id` in the reader's own task, when the writer task is idle
    /// (nothing queued or being written, so the order on the wire is the order queued):
    /// `Some` once written (`Some(Some(close))` if that ended the connection), `None` with
    /// `frames` untouched when they must be queued instead. Waits while the client is slow to
    /// read, as a full queue would make it wait (that is the backpressure), within the write
    /// timeout.
    async fn write_now(&self, id: RequestId, frames: &mut Vec<Message>) -> Option<Option<Close>> {
        let link = self.link.as_ref()?;
        // The write first: the grace period's end is only waited for (a waiter added and
        // removed under a lock) while the write waits.
        let written = tokio::select! {
            biased;
            written = link.write_now([&self.data, &self.ctrl], id, frames) => written?,
            _ = self.kill.cancelled() => return Some(Some(Close::Killed)),
        };
        match written {
            Ok(()) => Some(None),
            Err(error) => {
                writer::ended(Err(error));
                Some(Some(Close::WriterGone))
            }
        }
    }

    /// Waits for room in a queue; the reader stalls meanwhile (that is the backpressure), but
    /// still ends at once when the grace period is over.
    async fn enqueue(&self, queue: &mpsc::Sender<Out>, out: Out) -> Option<Close> {
        // The send first, as in `write_now`.
        tokio::select! {
            biased;
            sent = queue.send(out) => match sent {
                Ok(()) => None,
                Err(_) => Some(Close::WriterGone),
            },
            _ = self.kill.cancelled() => Some(Close::Killed),
        }
    }

    /// Queues a request's whole answer back to back in the data queue (room for all of it is
    /// taken first, so no other frame comes between them and the writer finds them together);
    /// the reader waits for that room like any other sender.
    async fn enqueue_burst(&self, id: RequestId, mut frames: Vec<Message>) -> Option<Close> {
        if let Some(close) = self.write_now(id, &mut frames).await {
            return close;
        }
        let permits = tokio::select! {
            biased;
            permits = self.data.reserve_many(frames.len()) => match permits {
                Ok(permits) => permits,
                Err(_) => return Some(Close::WriterGone),
            },
            _ = self.kill.cancelled() => return Some(Close::Killed),
        };
        for (permit, message) in permits.zip(frames) {
            permit.send((id, message));
        }
        None
    }

    async fn refuse(
        &self,
        id: RequestId,
        service: Service,
        code: ErrorCode,
        message: String,
    ) -> Option<Close> {
        tracing::debug!(%id, ?service, %code, %message, "request refused");
        self.reply(
            id,
            Message::Error {
                service,
                body: ErrorBody::new(code, message),
            },
        )
        .await
    }

    async fn handle_frame(&mut self, frame: Frame, stopping: bool) -> Option<Close> {
        let id = frame.header.id;
        let service = frame.header.service;
        let message = match frame.message() {
            Ok(message) => message,
            Err(error @ DecodeError::UnknownMessage { .. }) => {
                // The frame was authentic (it passed the record layer), just not understood.
                if id == RequestId::CONNECTION {
                    return Some(Close::Fatal(error.code(), error.to_string()));
                }
                return self
                    .refuse(id, service, ErrorCode::UNKNOWN_REQUEST, error.to_string())
                    .await;
            }
            Err(error) => {
                return Some(Close::Fatal(error.code(), format!("request {id}: {error}")))
            }
        };
        let request = match message {
            Message::Ping(payload) => return self.reply(id, service::echo::pong(payload)).await,
            // We never ping, but a pong is harmless.
            Message::Pong(_) => return None,
            Message::Cancel { service } => return self.cancel(id, service).await,
            Message::Error { body, .. } if id == RequestId::CONNECTION => {
                return Some(Close::PeerError(body))
            }
            Message::Error { .. } => return None,
            Message::ListRequest(r) => Request::List(r),
            Message::StatRequest(r) => Request::Stat(r),
            Message::FetchRequest(r) => Request::Fetch(r),
            Message::DigestRequest(r) => Request::Digest(r),
            Message::PutRequest(r) => Request::Put(r),
            // An upload's data and end go to its task (spec §3.12).
            message @ (Message::PutData(_) | Message::PutEnd(_)) => {
                service::put::deliver(&self.services, id, message);
                return None;
            }
            Message::EnrolRequest(r) => Request::Enrol(r),
            // The client's confirmation, to the enrolment waiting for it (spec §13.11.4).
            Message::EnrolConfirm(confirm) => {
                let delivered = self
                    .services
                    .enrol
                    .as_ref()
                    .is_some_and(|session| session.deliver(id, confirm));
                if delivered {
                    return None;
                }
                return Some(Close::Fatal(
                    ErrorCode::UNEXPECTED_MESSAGE,
                    format!("request {id}: no enrolment waits for a confirmation"),
                ));
            }
            other => {
                let text = format!("{:?} is not something a client sends", other.kind().0);
                if id == RequestId::CONNECTION {
                    return Some(Close::Fatal(ErrorCode::UNEXPECTED_MESSAGE, text));
                }
                return self
                    .refuse(id, service, ErrorCode::UNEXPECTED_MESSAGE, text)
                    .await;
            }
        };
        // An enrolment session allows one ENROL and nothing else; ENROL is allowed nowhere
        // else (spec §13.11.2).
        let enrolment = self.services.enrol.as_ref();
        let refusal = match (&request, enrolment) {
            (Request::Enrol(_), Some(session)) if session.start() => None,
            (Request::Enrol(_), Some(_)) => Some((
                ErrorCode::UNEXPECTED_MESSAGE,
                "an enrolment session enrols once".to_owned(),
            )),
            (Request::Enrol(_), None) => Some((
                ErrorCode::UNEXPECTED_MESSAGE,
                "enrol is only allowed in an enrolment session".to_owned(),
            )),
            (_, Some(_)) => Some((
                ErrorCode::PERMISSION_DENIED,
                "an enrolment session may only enrol".to_owned(),
            )),
            (_, None) => None,
        };
        if let Some((code, message)) = refusal {
            return self.refuse(id, service, code, message).await;
        }
        self.start(id, service, request, stopping).await
    }

    async fn start(
        &mut self,
        id: RequestId,
        service: Service,
        request: Request,
        stopping: bool,
    ) -> Option<Close> {
        // Near the key's usage limit: no new requests, as when stopping (spec §5.5). Read
        // now, not at the top of the loop: the writer may have crossed it since.
        let retiring = self.closing_soon();
        let stopping = stopping || retiring;
        // Spec §8.2's order: id 0 is fatal, then a duplicate, then (when stopping) shutting
        // down, then the in-flight limit.
        let max = self.limits.max_in_flight_per_connection;
        let refusal = match self.in_flight.check(id, max) {
            Err(Refusal::ConnectionId) => {
                return Some(Close::Fatal(
                    ErrorCode::UNEXPECTED_MESSAGE,
                    "requests must not use id 0".into(),
                ))
            }
            Err(Refusal::Duplicate) => Some((
                ErrorCode::DUPLICATE_ID,
                format!("request id {} is already in flight", id.0),
            )),
            _ if retiring => Some((ErrorCode::SHUTTING_DOWN, RETIRING.into())),
            _ if stopping => Some((ErrorCode::SHUTTING_DOWN, "server is shutting down".into())),
            Err(Refusal::Full { limit }) => Some((
                ErrorCode::BUSY,
                format!("{limit} requests already in flight on this connection"),
            )),
            Ok(()) => None,
        };
        if let Some((code, message)) = refusal {
            return self.refuse(id, service, code, message).await;
        }
        // A small range of a kept file is answered here, without a task: its final frame is
        // queued before the next frame is read, so it is never in flight.
        if let Request::Fetch(fetch) = &request {
            let room = self.data.max_capacity();
            if let Some((frames, _)) = service::fetch::answer_kept(&self.services, id, fetch, room)
            {
                return self.enqueue_burst(id, frames).await;
            }
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        let ctx = self.services.clone();
        let sink = Sink::new(id, self.data.clone());
        let abort = self.tasks.spawn(
            async move {
                service::run(ctx, sink, service, request).await;
                (id, generation)
            }
            .in_current_span(),
        );
        self.in_flight.insert(
            id,
            InFlight {
                service,
                generation,
                abort,
            },
        );
        None
    }

    async fn cancel(&mut self, id: RequestId, _service: Service) -> Option<Close> {
        // The id alone names the request; the service byte is informational.
        let Some(flight) = self.in_flight.finish(id) else {
            // Already finished: the client will see its end frame.
            return None;
        };
        flight.abort.abort();
        tracing::info!(%id, service = service::name(flight.service), outcome = "cancelled", "request");
        // Through the data queue, so it follows any frame the request already queued.
        let cancelled = (
            id,
            Message::Error {
                service: flight.service,
                body: ErrorBody::from_code(ErrorCode::CANCELLED),
            },
        );
        self.enqueue(&self.data, cancelled).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::testing::context;
    use bytes::BytesMut;
    use ferry_protocol::message::StatRequest;
    use ferry_protocol::{Principal, Session};
    use tokio::io::AsyncWriteExt;

    /// What a reader did with a client's bytes: why it closed, and the control and data
    /// queues' frames.
    struct Outcome {
        close: Close,
        ctrl: Vec<Out>,
        data: Vec<Out>,
    }

    /// Runs a reader over `frames` (then `tail` raw bytes, then end of stream), without a
    /// socket or a writer.
    async fn read(frames: &[(RequestId, Message)], tail: &[u8]) -> Outcome {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"hello").unwrap();
        let (client, server) = Session::dangerous_pair_with_fixed_keys(false);
        let (mut send, _) = client.into_split();
        let mut wire = BytesMut::new();
        for (id, message) in frames {
            send.write_message(*id, message, &mut wire).unwrap();
        }
        wire.extend_from_slice(tail);
        let (mut theirs, ours) = tokio::io::duplex(1 << 16);
        theirs.write_all(&wire).await.unwrap();
        drop(theirs);
        let (data_tx, mut data_rx) = mpsc::channel(16);
        let (ctrl_tx, mut ctrl_rx) = mpsc::channel(16);
        let signals = Signals::default();
        let mut reader = Reader::<tokio::io::DuplexStream>::new(
            Limits::default(),
            context(dir.path(), Principal::key_holder()),
            data_tx,
            ctrl_tx,
            signals.kill.clone(),
            None,
        );
        let mut writer = tokio::spawn(std::future::pending::<()>());
        let (_, recv) = server.into_split();
        let frames = FrameReader::new(ours, recv, BytesMut::new());
        let close = reader.read_loop(frames, &signals, &mut writer).await;
        writer.abort();
        drop(reader);
        let mut outcome = Outcome {
            close,
            ctrl: Vec::new(),
            data: Vec::new(),
        };
        while let Some(out) = ctrl_rx.recv().await {
            outcome.ctrl.push(out);
        }
        while let Some(out) = data_rx.recv().await {
            outcome.data.push(out);
        }
        outcome
    }

    fn code(out: &Out) -> (RequestId, ErrorCode) {
        match out {
            (id, Message::Error { body, .. }) => (*id, body.code),
            other => panic!("expected an error frame, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn pings_and_refusals_take_the_control_queue_requests_the_data_queue() {
        let ping = Message::Ping("p".into());
        let stat = Message::StatRequest(StatRequest { path: "a".into() });
        let not_a_request = Message::ListEnd(ferry_protocol::message::ListEnd { entries: 0 });
        let outcome = read(
            &[
                (RequestId(1), ping),
                (RequestId(2), stat),
                (RequestId(3), not_a_request),
                // Finished or not, a cancel for an id not in flight is ignored.
                (
                    RequestId(9),
                    Message::Cancel {
                        service: Service::FETCH,
                    },
                ),
            ],
            &[],
        )
        .await;
        assert!(matches!(outcome.close, Close::Eof), "{:?}", outcome.close);
        assert_eq!(outcome.ctrl.len(), 2, "{:?}", outcome.ctrl);
        assert_eq!(outcome.ctrl[0], (RequestId(1), Message::Pong("p".into())));
        assert_eq!(
            code(&outcome.ctrl[1]),
            (RequestId(3), ErrorCode::UNEXPECTED_MESSAGE)
        );
        assert!(
            matches!(&outcome.data[..], [(RequestId(2), Message::StatResponse(e))] if e.size == 5),
            "{:?}",
            outcome.data
        );
    }

    #[tokio::test]
    async fn a_request_on_id_0_ends_the_connection() {
        let stat = Message::StatRequest(StatRequest { path: "a".into() });
        let outcome = read(&[(RequestId::CONNECTION, stat)], &[]).await;
        assert!(
            matches!(
                outcome.close,
                Close::Fatal(ErrorCode::UNEXPECTED_MESSAGE, _)
            ),
            "{:?}",
            outcome.close
        );
        assert!(outcome.ctrl.is_empty() && outcome.data.is_empty());
    }

    #[tokio::test]
    async fn a_stream_that_ends_inside_a_frame_is_truncated() {
        let ping = Message::Ping("p".into());
        let mut partial = BytesMut::new();
        let (client, _) = Session::dangerous_pair_with_fixed_keys(false);
        client
            .into_split()
            .0
            .write_message(RequestId(2), &Message::Ping("q".into()), &mut partial)
            .unwrap();
        let outcome = read(&[(RequestId(1), ping)], &partial[..partial.len() - 1]).await;
        assert!(
            matches!(outcome.close, Close::Truncated),
            "{:?}",
            outcome.close
        );
        assert_eq!(outcome.ctrl.len(), 1, "only the whole ping is answered");
    }
}
