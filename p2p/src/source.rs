//! A `ferry-server` as a swarm source (spec/P2P.md §6): it joins the swarm core as a peer that
//! has every piece and never chokes, and its block requests become byte-range fetches on the
//! Ferry client. The core treats it like any peer, so its data is hashed, blamed and banned
//! exactly like a peer's.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_client::{Client, ClientConfig, FerryUrl};
use ferry_protocol::Key;

use crate::manifest::{Manifest, PieceIndex};
use crate::pieces::{sha256, Bitfield};
use crate::wire::{BlockRef, PeerId, PeerMessage};

/// A server to fetch pieces from, with the key of that server.
#[derive(Clone, Debug)]
pub struct ServerSource {
    /// `ferry://HOST[:PORT]/DIR`: the directory that holds the manifest's top-level entry.
    pub url: FerryUrl,
    pub key: Key,
}

impl ServerSource {
    /// A stable pseudo peer id, so bans and duplicate checks work for servers too.
    pub fn peer_id(&self) -> PeerId {
        let digest = sha256(
            format!(
                "ferry server {}:{}/{}",
                self.url.host, self.url.port, self.url.path
            )
            .as_bytes(),
        );
        let mut id = [0u8; 20];
        id.copy_from_slice(&digest[..20]);
        PeerId(id)
    }
}

/// A connected server source.
#[derive(Debug, Clone)]
pub struct SourceClient {
    client: Client,
    prefix: String,
    manifest: Arc<Manifest>,
}

/// Fetching from a server failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{0}")]
    Client(#[from] ferry_client::ClientError),
    #[error("request for piece {0} is out of range")]
    Range(u32),
    #[error("server sent {got} bytes for a {want}-byte range")]
    Short { got: usize, want: usize },
}

impl SourceClient {
    pub async fn connect(
        source: &ServerSource,
        manifest: Arc<Manifest>,
    ) -> Result<Self, SourceError> {
        let config = ClientConfig::new(source.key.clone()).connect_timeout(Duration::from_secs(10));
        let client = Client::connect(&source.url, config).await?;
        Ok(Self {
            client,
            prefix: source.url.path.clone(),
            manifest,
        })
    }

    /// The messages a server "peer" starts with: it has everything and serves at once.
    pub fn greeting(&self) -> [PeerMessage; 2] {
        let full = Bitfield::full(self.manifest.piece_count());
        [
            PeerMessage::Bitfield(Bytes::copy_from_slice(full.as_bytes())),
            PeerMessage::Unchoke,
        ]
    }

    /// Fetches one block: the byte ranges of every file the block covers.
    pub async fn fetch_block(&self, block: BlockRef) -> Result<PeerMessage, SourceError> {
        let piece: PieceIndex = self
            .manifest
            .piece(block.piece)
            .ok_or(SourceError::Range(block.piece))?;
        let end = block.offset.saturating_add(block.length);
        let mut data = Vec::with_capacity(block.length as usize);
        for span in self.manifest.spans(piece) {
            let lo = block.offset.max(span.piece_offset);
            let hi = end.min(span.piece_offset + span.len);
            if lo >= hi {
                continue;
            }
            let file = &self.manifest.files()[span.file];
            let path = if self.prefix.is_empty() {
                file.path.as_str().to_owned()
            } else {
                format!("{}/{}", self.prefix, file.path)
            };
            let offset = span.offset + (lo - span.piece_offset) as u64;
            let want = (hi - lo) as usize;
            let mut stream = self.client.fetch(&path, offset, want as u64).await?;
            let before = data.len();
            while let Some(chunk) = stream.chunk().await? {
                data.extend_from_slice(&chunk);
            }
            let got = data.len() - before;
            if got != want {
                return Err(SourceError::Short { got, want });
            }
        }
        Ok(PeerMessage::Piece {
            piece: block.piece,
            offset: block.offset,
            data: data.into(),
        })
    }
}
