//! An offer (spec §3.13): the files `ferry send` would send, answered by the receiver with one
//! code per file, or declined whole (`OFFER_DECLINED`). The accepted files then go by PUT.

use std::time::Duration;

use ferry_protocol::message::{OfferRequest, OfferResponse};
use ferry_protocol::{Message, Service};

use super::{unexpected, Client};
use crate::error::ClientError;

impl Client {
    /// Offers `request`'s items and waits up to `timeout` for the answer (a person may be
    /// deciding at a prompt). A whole offer declined is [`ClientError::Remote`] with
    /// `OFFER_DECLINED`.
    pub async fn offer(
        &self,
        request: OfferRequest,
        timeout: Duration,
    ) -> Result<OfferResponse, ClientError> {
        request
            .check_encodable()
            .map_err(|e| ClientError::Local(format!("the offer does not fit one request: {e}")))?;
        let count = request.items.len();
        let mut pending = self.start(Service::OFFER, Message::OfferRequest(request))?;
        let frame = pending.next_within(timeout).await?;
        pending.done = true;
        match pending.decode(&frame)? {
            Message::OfferResponse(answer) if answer.codes.len() == count => Ok(answer),
            Message::OfferResponse(answer) => Err(ClientError::Protocol(format!(
                "the receiver answered {} items of an offer of {count}",
                answer.codes.len()
            ))),
            Message::Error { body, .. } => Err(ClientError::Remote(body)),
            other => Err(unexpected("offer", &other)),
        }
    }
}
