//! A transfer's connection, replaced by a new one to the same server when the current one is
//! retired (spec §5.5: a key near its usage limit; a `SHUTTING_DOWN` refusal or goodbye, or a
//! close once the server's key passed its close-soon point). Requests refused there run again
//! on the new connection, and downloads resume from the bytes they have (`fetch.rs`).
//!
//! It never loops forever: a server that retires [`MAX_IDLE_CONNECTIONS`] connections in a
//! row without answering anything on them ends the transfer with an error that says so. A
//! transfer that moves data on each connection goes on for as many as it needs (1 TiB each).

use std::future::Future;

use tracing::info;

use crate::client::Client;
use crate::error::ClientError;

/// Retired connections in a row on which the server answered nothing, after which a transfer
/// gives up rather than dial again.
pub const MAX_IDLE_CONNECTIONS: u32 = 4;

/// The connection of the moment, shared by a transfer's requests (a tree's files in flight).
#[derive(Debug)]
pub(super) struct Conn {
    state: tokio::sync::Mutex<State>,
}

#[derive(Debug)]
struct State {
    client: Client,
    /// Retired connections in a row that answered nothing.
    idle: u32,
}

impl Conn {
    pub(super) fn new(client: &Client) -> Self {
        Self {
            state: tokio::sync::Mutex::new(State {
                client: client.clone(),
                idle: 0,
            }),
        }
    }

    /// The connection to start requests on.
    pub(super) async fn current(&self) -> Client {
        self.state.lock().await.client.clone()
    }

    /// `used` was retired (`why`): opens its successor, unless another request already did.
    /// Fails with `why` where the connection cannot be opened again (not made by address), and
    /// after [`MAX_IDLE_CONNECTIONS`] retired connections in a row that answered nothing.
    pub(super) async fn renew(&self, used: &Client, why: ClientError) -> Result<(), ClientError> {
        let mut state = self.state.lock().await;
        if !state.client.same_connection(used) {
            return Ok(());
        }
        state.idle = if used.answered() == 0 {
            state.idle + 1
        } else {
            0
        };
        if state.idle >= MAX_IDLE_CONNECTIONS {
            return Err(ClientError::Retired(format!(
                "the server retired {} connections in a row without answering anything on them, so no new one is opened (the last: {why})",
                state.idle
            )));
        }
        match used.reconnect().await {
            Ok(client) => {
                info!(server = %client.peer(), %why, "continuing on a new connection");
                state.client = client;
                Ok(())
            }
            Err(ClientError::Local(_)) => Err(why),
            Err(e) => Err(ClientError::About {
                what: format!("{why}; a new connection"),
                source: Box::new(e),
                after: String::new(),
            }),
        }
    }

    /// Runs `request` on the connection of the moment, and again on a new one each time the
    /// connection it ran on is retired.
    pub(super) async fn run<T, F, Fut>(&self, mut request: F) -> Result<T, ClientError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        loop {
            let client = self.current().await;
            match request(client.clone()).await {
                Err(e) if e.is_retired() => self.renew(&client, e).await?,
                other => return other,
            }
        }
    }
}
