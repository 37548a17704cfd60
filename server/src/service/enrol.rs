//! Enrol (spec §13.11): the one request of an enrolment session. The client names an invite
//! by its nameplate and sends its SPAKE2 message; the invite is burned first (removed from the
//! invites directory, durably), then the server answers with its SPAKE2 message and
//! confirmation, waits for the client's confirmation, and adds the client's id to the
//! authorised clients with the invite's name, root and access.
//!
//! Whatever happens, the session ends with the request: END(ENROL) then close, or one
//! connection-level `ENROLMENT_FAILED` (spec §6.2: an auth code, so id 0). The reader learns
//! the outcome through [`EnrolSession::outcome`] when the task has returned. The code itself
//! is never logged; the nameplate, which is not secret, is.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use ferry_protocol::enrol::{Binding, ServerEnrol};
use ferry_protocol::identity::NodeId;
use ferry_protocol::message::{EnrolConfirm, EnrolEnd, EnrolRequest, ENROL_WRITE};
use ferry_protocol::{Message, RequestId};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Context, Sink};
use crate::authorized;
use crate::invite::{self, Claim, Enrolment};

/// How long the server waits for the client's confirmation after its own answer.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// The state of one enrolment session, shared by the reader and the enrol task.
#[derive(Debug)]
pub(crate) struct EnrolSession {
    pub binding: Binding,
    pub enrolment: Enrolment,
    /// Set by the first ENROL; a session enrols at most once.
    started: AtomicBool,
    /// Where the reader hands the client's confirmation, for the request that waits for it.
    confirm: Mutex<Option<(RequestId, oneshot::Sender<EnrolConfirm>)>>,
    /// `Some` once the enrol task has ended: `Ok` enrolled, `Err` the sentence for the client.
    outcome: Mutex<Option<Result<(), String>>>,
}

impl EnrolSession {
    pub fn new(binding: Binding, enrolment: Enrolment) -> Self {
        Self {
            binding,
            enrolment,
            started: AtomicBool::new(false),
            confirm: Mutex::new(None),
            outcome: Mutex::new(None),
        }
    }

    /// Whether this is the session's first ENROL (and marks it started).
    pub fn start(&self) -> bool {
        !self.started.swap(true, Ordering::SeqCst)
    }

    /// Hands the client's confirmation to the waiting request. `false` when no request with
    /// that id waits for one: the client broke the exchange (spec §13.11.4).
    pub fn deliver(&self, id: RequestId, confirm: EnrolConfirm) -> bool {
        let waiting = self
            .confirm
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        match waiting {
            Some((waiting, tx)) if waiting == id => tx.send(confirm).is_ok(),
            _ => false,
        }
    }

    /// The client closed its side: an enrolment waiting for its confirmation will get none.
    pub fn connection_ended(&self) {
        self.confirm
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    /// The outcome, once the enrol task has returned.
    pub fn outcome(&self) -> Option<Result<(), String>> {
        self.outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn finish(&self, outcome: Result<(), String>) {
        *self.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
    }
}

/// Why an enrolment failed; each says what the user can do, since the code is gone either way.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("no invite {0} is pending: its code was used, burned by a wrong guess, or never issued; ask for a new one")]
    Missing(u32),
    #[error("invite {0} expired; ask for a new one")]
    Expired(u32),
    #[error("the code did not match, so invite {0} is used up; ask for a new one")]
    Mismatch(u32),
    #[error("the client did not confirm within 30 s; invite {0} is used up")]
    NoConfirmation(u32),
    #[error("invite {0} is used up but the client could not be authorised: {1}")]
    Authorise(u32, String),
    #[error("the invites could not be read: {0}")]
    Store(String),
    #[error("connection closed")]
    Closed,
}

/// Runs one ENROL request to its end and records the outcome for the reader.
pub(crate) async fn run(ctx: &Context, request: EnrolRequest, sink: &Sink, id: RequestId) {
    let started = Instant::now();
    let nameplate = request.nameplate;
    let Some(session) = ctx.enrol.clone() else {
        // The reader only starts ENROL in an enrolment session.
        return;
    };
    let result = enrol(&session, request, sink, id).await;
    let elapsed_ms = started.elapsed().as_micros() as f64 / 1000.0;
    match &result {
        Ok(end) => {
            tracing::info!(%id, service = "enrol", nameplate, enrolled = %end.name, write = end.flags & ENROL_WRITE != 0, elapsed_ms, outcome = "ok", "request");
        }
        Err(error) => {
            tracing::info!(%id, service = "enrol", nameplate, elapsed_ms, outcome = "failed", %error, "request");
        }
    }
    session.finish(result.map(|_| ()).map_err(|e| e.to_string()));
}

async fn enrol(
    session: &EnrolSession,
    request: EnrolRequest,
    sink: &Sink,
    id: RequestId,
) -> Result<EnrolEnd, Failure> {
    let nameplate = request.nameplate;
    let dir = session.enrolment.invites.clone();
    // Burned before anything derived from the code is sent (spec §13.11.4).
    let claim =
        tokio::task::spawn_blocking(move || invite::claim(&dir, nameplate, SystemTime::now()))
            .await
            .map_err(|e| Failure::Store(e.to_string()))?
            .map_err(|e| Failure::Store(e.to_string()))?;
    let invite = match claim {
        Claim::Valid(invite) => invite,
        Claim::Missing => return Err(Failure::Missing(nameplate)),
        Claim::Expired => return Err(Failure::Expired(nameplate)),
    };
    let (server, response) = ServerEnrol::respond(&invite.code, session.binding, &request)
        .map_err(|_| Failure::Mismatch(nameplate))?;
    // Ready for the confirmation before the client can send it.
    let (tx, rx) = oneshot::channel();
    *session.confirm.lock().unwrap_or_else(|p| p.into_inner()) = Some((id, tx));
    sink.send(Message::EnrolResponse(response))
        .await
        .map_err(|_| Failure::Closed)?;
    let confirm = match tokio::time::timeout(CONFIRM_TIMEOUT, rx).await {
        Ok(Ok(confirm)) => confirm,
        Ok(Err(_)) => return Err(Failure::Closed),
        Err(_) => return Err(Failure::NoConfirmation(nameplate)),
    };
    server
        .check(&confirm)
        .map_err(|_| Failure::Mismatch(nameplate))?;
    let client_id = NodeId::from_public_key(&session.binding.client_static);
    let client = authorized::Client {
        id: client_id,
        name: invite
            .name
            .clone()
            .unwrap_or_else(|| default_name(&client_id)),
        root: invite.root.clone(),
        write: invite.write,
    };
    let path = session.enrolment.authorized_clients.clone();
    let added = client.clone();
    tokio::task::spawn_blocking(move || authorized::authorize(&path, &added))
        .await
        .map_err(|e| Failure::Authorise(nameplate, e.to_string()))?
        .map_err(|e| Failure::Authorise(nameplate, e.to_string()))?;
    let end = EnrolEnd {
        flags: if client.write { ENROL_WRITE } else { 0 },
        name: client.name,
        root: client.root.unwrap_or_default(),
    };
    sink.send(Message::EnrolEnd(end.clone()))
        .await
        .map_err(|_| Failure::Closed)?;
    Ok(end)
}

/// An enrolled client's name when the invite gave none: `client-` and its id's first 8
/// characters.
fn default_name(id: &NodeId) -> String {
    let text = id.to_string();
    format!("client-{}", &text[..8.min(text.len())])
}
