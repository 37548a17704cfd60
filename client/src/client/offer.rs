//! An offer (spec §3.13): the files `ferry send` would send, answered by the receiver with one
//! code per file, or declined whole (`OFFER_DECLINED`). The accepted files then go by PUT.
//!
//! A set too large for one body is split, in order, into several offers of a set on the same
//! connection (rule 4): the receiver decides on the first, and answers the others alike.

use std::time::Duration;

use ferry_protocol::message::{OfferItem, OfferRequest, OfferResponse, OfferSet};
use ferry_protocol::{Message, Service};

use super::{unexpected, Client};
use crate::error::ClientError;

/// The largest offer body sent: the largest plaintext one frame carries under the default
/// 1 MiB body cap (CBC + HMAC, spec §7), so every receiver with the default cap reads it.
pub const OFFER_BODY: usize = 1_048_527;

impl Client {
    /// Offers `request`'s items and waits up to `timeout` for the answer (a person may be
    /// deciding at a prompt). Items that do not fit one offer go as a set of several (one
    /// answer for all, in the items' order). A whole offer declined is
    /// [`ClientError::Remote`] with `OFFER_DECLINED`.
    pub async fn offer(
        &self,
        request: OfferRequest,
        timeout: Duration,
    ) -> Result<OfferResponse, ClientError> {
        if request.set.is_some() || request.encoded_len() <= OFFER_BODY {
            return self.offer_one(request, timeout).await;
        }
        let total = request.items.len();
        let set = OfferSet {
            items: u32::try_from(total).map_err(|_| {
                ClientError::Local(format!(
                    "an offer of {total} items is more than one send can carry ({})",
                    u32::MAX
                ))
            })?,
            bytes: request.items.iter().map(|i| i.size).sum(),
        };
        let parts = split(request.items, OFFER_BODY - OfferSet::LEN);
        tracing::debug!(items = total, offers = parts.len(), "offering a set");
        let mut codes = Vec::with_capacity(total);
        for items in parts {
            let part = OfferRequest {
                items,
                set: Some(set),
            };
            codes.extend(self.offer_one(part, timeout).await?.codes);
        }
        Ok(OfferResponse { codes })
    }

    async fn offer_one(
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

/// Cuts `items`, in order, into offers of at most `budget` body bytes (the count included)
/// and 65 535 items each.
pub fn split(items: Vec<OfferItem>, budget: usize) -> Vec<Vec<OfferItem>> {
    let mut parts = Vec::new();
    let mut part = Vec::new();
    let mut used = 2;
    for item in items {
        let len = item.encoded_len();
        if !part.is_empty() && (used + len > budget || part.len() == usize::from(u16::MAX)) {
            parts.push(std::mem::take(&mut part));
            used = 2;
        }
        used += len;
        part.push(item);
    }
    if !part.is_empty() {
        parts.push(part);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(i: usize) -> OfferItem {
        OfferItem {
            path: format!("dir/file-{i:06}.txt"),
            size: i as u64,
            mode: 0o644,
            flags: 0,
            digest: [i as u8; 32],
        }
    }

    #[test]
    fn a_large_set_is_cut_in_order_within_the_body_and_the_count() {
        let items: Vec<OfferItem> = (0..70_000).map(item).collect();
        let parts = split(items.clone(), OFFER_BODY - OfferSet::LEN);
        assert!(parts.len() >= 2, "{} parts", parts.len());
        for part in &parts {
            let request = OfferRequest {
                items: part.clone(),
                set: Some(OfferSet {
                    items: 70_000,
                    bytes: 0,
                }),
            };
            assert!(
                request.encoded_len() <= OFFER_BODY,
                "{}",
                request.encoded_len()
            );
            assert!(part.len() <= usize::from(u16::MAX));
            request.check_encodable().unwrap();
        }
        assert_eq!(parts.concat(), items);
        // Small paths: the item count, not the bytes, cuts first.
        let tiny: Vec<OfferItem> = (0..70_000)
            .map(|i| OfferItem {
                path: "a".into(),
                ..item(i)
            })
            .collect();
        let parts = split(tiny, usize::MAX);
        assert_eq!(
            parts.iter().map(Vec::len).collect::<Vec<_>>(),
            [65_535, 4_465]
        );
    }
}
