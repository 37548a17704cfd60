//! Piece selection (spec/P2P.md §4.1, §4.2): the state of every piece and block, which block to
//! request from whom (an open block of a started piece, else a new piece, random first and
//! rarest after, else an endgame duplicate), and accepting the blocks that arrive.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_protocol::ErrorCode;
use rand::Rng;

use super::depth::QUEUE_TIME;
use super::{Action, ConnId, Swarm};
use crate::manifest::{Manifest, PieceIndex};
use crate::pieces::Bitfield;
use crate::wire::{BlockRef, PeerId, PeerMessage, MAX_BLOCK};

/// Our pieces: the state of each, which are started, and how many peers have each.
#[derive(Debug)]
pub(super) struct Picker {
    /// Pieces verified and written; bit *i* set iff `pieces[i]` is `Have`.
    pub(super) have: Bitfield,
    pub(super) pieces: Vec<PieceState>,
    /// Pieces in `Active` state, in the order they were started.
    pub(super) active: Vec<u32>,
    /// Count of pieces in `Missing` state.
    pub(super) missing: usize,
    /// Per piece, how many connected peers have it.
    pub(super) availability: Vec<u16>,
    /// Buffers of verified pieces, given back for the next pieces started (at most
    /// [`SPARE_BUFFERS`]). A fresh buffer of a piece's size is an mmap whose pages are faulted
    /// in and cleared one by one: page faults and clearing were ~4 % of the CPU of 1 + 48 on
    /// loopback, a piece's worth per piece.
    spare: Vec<Vec<u8>>,
}

/// Most piece buffers kept for reuse: pieces verify one at a time per verifier, so a few
/// cover the pieces finishing together.
pub(super) const SPARE_BUFFERS: usize = 8;

impl Picker {
    pub(super) fn new(manifest: &Manifest, have: Bitfield) -> Self {
        let n = manifest.piece_count();
        let pieces: Vec<PieceState> = manifest
            .pieces()
            .map(|p| {
                if have.has(p) {
                    PieceState::Have
                } else {
                    PieceState::Missing
                }
            })
            .collect();
        let missing = (n - have.count()) as usize;
        Self {
            have,
            pieces,
            active: Vec::new(),
            missing,
            availability: vec![0; n as usize],
            spare: Vec::new(),
        }
    }

    /// A zeroed buffer of `len` bytes for a piece being started: a spare one if any.
    pub(super) fn buffer(&mut self, len: usize) -> Vec<u8> {
        match self.spare.pop() {
            Some(mut buf) => {
                buf.clear();
                buf.resize(len, 0);
                buf
            }
            None => vec![0; len],
        }
    }

    /// Keeps the buffer of a piece that was verified (or failed) for a later piece.
    pub(super) fn recycle(&mut self, buf: Vec<u8>) {
        if self.spare.len() < SPARE_BUFFERS {
            self.spare.push(buf);
        }
    }

    pub(super) fn is_complete(&self) -> bool {
        self.have.is_full()
    }

    /// Takes `conn` off the requesters of a block; with none left the block is open again.
    pub(super) fn release_block(&mut self, conn: ConnId, (piece, offset): (u32, u32)) {
        let Some(PieceState::Active(active)) = self.pieces.get_mut(piece as usize) else {
            return;
        };
        let Some(block) = active.blocks.get_mut((offset / MAX_BLOCK) as usize) else {
            return;
        };
        if let BlockState::Requested(list) = &mut block.state {
            list.retain(|c| *c != conn);
            if list.is_empty() {
                block.state = BlockState::Open;
            }
        }
    }
}

#[derive(Debug)]
pub(super) enum BlockState {
    Open,
    /// Requested from these connections (more than one only in endgame).
    Requested(Vec<ConnId>),
    Done,
}

#[derive(Debug)]
pub(super) struct Block {
    pub(super) state: BlockState,
    pub(super) source: Option<PeerId>,
}

#[derive(Debug)]
pub(super) struct Active {
    pub(super) data: Vec<u8>,
    pub(super) blocks: Vec<Block>,
    pub(super) done: usize,
    /// A piece that failed before with blocks from several peers is fetched from one peer
    /// only, so the next result convicts or clears with certainty (spec/P2P.md §4.6).
    pub(super) exclusive: bool,
    /// The one peer allowed to serve an exclusive piece; `None` until someone claims it.
    pub(super) owner: Option<ConnId>,
}

#[derive(Debug)]
pub(super) enum PieceState {
    Missing,
    Active(Active),
    /// Handed to the shell for hashing; who sent each block, for blame if it fails.
    Verifying(Vec<PeerId>),
    Have,
}

/// Length of block `index` of a piece of `piece_len` bytes.
pub(super) fn block_len(piece_len: u32, index: usize) -> u32 {
    let start = index as u32 * MAX_BLOCK;
    (piece_len - start).min(MAX_BLOCK)
}

/// A raw piece number already known to be in range (it came from `picker.active` or the avoid
/// table, both filled from validated indexes).
#[derive(Clone, Copy)]
pub(super) struct PieceIndexRaw(pub(super) u32);

impl PieceIndexRaw {
    pub(super) fn in_bits(self, bits: &Bitfield) -> bool {
        bits.has_index(self.0)
    }
}

impl Swarm {
    pub(super) fn on_piece(
        &mut self,
        conn: ConnId,
        index: u32,
        offset: u32,
        data: Bytes,
        now: Instant,
    ) {
        let Some(piece) = self.manifest.piece(index) else {
            return self.protocol_error(
                conn,
                ErrorCode::INVALID_RANGE,
                &format!("piece {index} out of range"),
                now,
            );
        };
        let len = data.len() as u64;
        let (_, window) = self.given_up_limits();
        let Some(peer) = self.peers.get_mut(&conn) else {
            return;
        };
        // Only a block we asked this peer for, with exactly the length we asked, is accepted.
        let sent = peer.outstanding.remove(&(index, offset));
        let requested = sent.is_some();
        let block_index = (offset / MAX_BLOCK) as usize;
        let expected_len = if offset % MAX_BLOCK == 0 && offset < self.manifest.piece_len(piece) {
            Some(block_len(self.manifest.piece_len(piece), block_index))
        } else {
            None
        };
        let length_ok = expected_len == Some(data.len() as u32);
        if !requested && length_ok && peer.take_given_up((index, offset), now, window) {
            // A block we asked for and then gave up: an honest race (spec/P2P.md §3.8).
            self.stats.wasted += len;
            self.stats.late += len;
            return;
        }
        if !requested || !length_ok {
            peer.unrequested += 1;
            self.stats.wasted += len;
            if peer.unrequested > self.config.max_unrequested {
                self.protocol_error(
                    conn,
                    ErrorCode::UNEXPECTED_MESSAGE,
                    "too many unrequested blocks",
                    now,
                );
            }
            // The request (if any) is released so another peer can serve it.
            if requested {
                self.picker.release_block(conn, (index, offset));
                self.fill_requests(conn, now);
            }
            return;
        }
        peer.window_down += len;
        if let Some(sent) = sent {
            let (floor, cap) = (self.config.pipeline_min, self.config.pipeline);
            peer.depth.on_block(len, sent, now, floor, cap);
        }
        let peer_id = peer.id;
        let PieceState::Active(active) = &mut self.picker.pieces[piece.idx()] else {
            // The piece completed through another peer (endgame duplicate).
            self.stats.wasted += len;
            self.fill_requests(conn, now);
            return;
        };
        let block = &mut active.blocks[block_index];
        let others = match std::mem::replace(&mut block.state, BlockState::Done) {
            BlockState::Done => {
                block.state = BlockState::Done;
                self.stats.wasted += len;
                self.fill_requests(conn, now);
                return;
            }
            BlockState::Requested(list) => list,
            BlockState::Open => Vec::new(),
        };
        block.source = Some(peer_id);
        let start = offset as usize;
        active.data[start..start + data.len()].copy_from_slice(&data);
        active.done += 1;
        self.stats.downloaded += len;
        let finished = active.done == active.blocks.len();
        // Endgame: the same block was asked of others; cancel those requests.
        let (keep, window) = self.given_up_limits();
        for other in others.into_iter().filter(|c| *c != conn) {
            if let Some(p) = self.peers.get_mut(&other) {
                if p.outstanding.contains_key(&(index, offset)) {
                    p.give_up((index, offset), now, keep, window);
                    self.send(
                        other,
                        PeerMessage::Cancel(BlockRef {
                            piece: index,
                            offset,
                            length: data.len() as u32,
                        }),
                        now,
                    );
                }
            }
        }
        if finished {
            let state = std::mem::replace(
                &mut self.picker.pieces[piece.idx()],
                PieceState::Verifying(Vec::new()),
            );
            self.picker.active.retain(|p| *p != index);
            if let PieceState::Active(active) = state {
                let sources = active
                    .blocks
                    .iter()
                    .map(|b| b.source.unwrap_or(peer_id))
                    .collect();
                self.picker.pieces[piece.idx()] = PieceState::Verifying(sources);
                self.actions.push_back(Action::Verify {
                    piece,
                    data: active.data,
                });
            }
        }
        self.fill_requests(conn, now);
    }

    pub(super) fn refill_all(&mut self, now: Instant) {
        let conns: Vec<ConnId> = self.peers.keys().copied().collect();
        for conn in conns {
            self.fill_requests(conn, now);
        }
    }

    /// Keeps as many requests outstanding with `conn` as its depth says (§4.1).
    pub(super) fn fill_requests(&mut self, conn: ConnId, now: Instant) {
        loop {
            let Some(peer) = self.peers.get(&conn) else {
                return;
            };
            if peer.peer_choking
                || !peer.am_interested
                || peer.outstanding.len() >= peer.depth.target()
            {
                return;
            }
            let Some((piece, block)) = self.pick(conn, now) else {
                return;
            };
            let PieceState::Active(active) = &mut self.picker.pieces[piece as usize] else {
                return;
            };
            match &mut active.blocks[block].state {
                BlockState::Open => active.blocks[block].state = BlockState::Requested(vec![conn]),
                BlockState::Requested(list) => list.push(conn),
                BlockState::Done => return,
            }
            let piece_len = active.data.len() as u32;
            let offset = block as u32 * MAX_BLOCK;
            let length = block_len(piece_len, block);
            if let Some(peer) = self.peers.get_mut(&conn) {
                peer.outstanding.insert((piece, offset), now);
            }
            self.send(
                conn,
                PeerMessage::Request(BlockRef {
                    piece,
                    offset,
                    length,
                }),
                now,
            );
        }
    }

    /// The next block to request from `conn`: an open block of a started piece, else a new piece
    /// (random while we have none, rarest first after), else in endgame a block already asked
    /// of one other peer that is late there ([`Swarm::late`]), at most `pipeline_min` such
    /// duplicates outstanding with `conn`.
    fn pick(&mut self, conn: ConnId, now: Instant) -> Option<(u32, usize)> {
        let peer = self.peers.get(&conn)?;
        for &p in &self.picker.active {
            if !PieceIndexRaw(p).in_bits(&peer.have) || self.avoided(p, conn) {
                continue;
            }
            if let PieceState::Active(active) = &mut self.picker.pieces[p as usize] {
                if active.exclusive && active.owner.is_some_and(|o| o != conn) {
                    continue;
                }
                if let Some(b) = active
                    .blocks
                    .iter()
                    .position(|b| matches!(b.state, BlockState::Open))
                {
                    if active.exclusive {
                        active.owner = Some(conn);
                    }
                    return Some((p, b));
                }
            }
        }
        if let Some(p) = self.choose_new(conn) {
            let exclusive = self.blame.history.contains_key(&p.get());
            let len = self.manifest.piece_len(p);
            let blocks = len.div_ceil(MAX_BLOCK) as usize;
            let data = self.picker.buffer(len as usize);
            self.picker.pieces[p.idx()] = PieceState::Active(Active {
                data,
                blocks: (0..blocks)
                    .map(|_| Block {
                        state: BlockState::Open,
                        source: None,
                    })
                    .collect(),
                done: 0,
                exclusive,
                owner: exclusive.then_some(conn),
            });
            self.picker.missing -= 1;
            self.picker.active.push(p.get());
            return Some((p.get(), 0));
        }
        if self.picker.missing > 0 {
            return None;
        }
        // Endgame (spec/P2P.md §4.2): every missing block is requested somewhere. A duplicate
        // of a block that is still on its way on time only wastes the second peer's uplink.
        let peer = self.peers.get(&conn)?;
        let duplicates = peer
            .outstanding
            .keys()
            .filter(|&&key| self.requesters(key) > 1)
            .count();
        if duplicates >= self.config.pipeline_min {
            return None;
        }
        for &p in &self.picker.active {
            if !PieceIndexRaw(p).in_bits(&peer.have) {
                continue;
            }
            if let PieceState::Active(active) = &self.picker.pieces[p as usize] {
                if active.exclusive {
                    continue;
                }
                let found = active.blocks.iter().enumerate().position(|(i, b)| {
                    matches!(&b.state, BlockState::Requested(list)
                        if list.len() == 1 && list[0] != conn
                            && self.late(list[0], (p, i as u32 * MAX_BLOCK), now))
                });
                if let Some(b) = found {
                    return Some((p, b));
                }
            }
        }
        None
    }

    /// How many connections `key` is requested from.
    fn requesters(&self, (piece, offset): (u32, u32)) -> usize {
        match &self.picker.pieces[piece as usize] {
            PieceState::Active(active) => match &active.blocks[(offset / MAX_BLOCK) as usize].state
            {
                BlockState::Requested(list) => list.len(),
                _ => 0,
            },
            _ => 0,
        }
    }

    /// Whether the request for `key` outstanding with `conn` has waited more than twice what
    /// that peer should need to deliver it (spec/P2P.md §4.2): its measured round trip plus, at
    /// its measured rate, the blocks it was asked for at or before `key` and still owes (it
    /// serves them in order); a peer with no rate sample yet is given [`QUEUE_TIME`] for its
    /// queue. Twice, because the rate is a recent best, not a promise; once gave the same tail
    /// with slightly more duplicates in `tests/tail.rs`.
    fn late(&self, conn: ConnId, key: (u32, u32), now: Instant) -> bool {
        let Some(peer) = self.peers.get(&conn) else {
            return false;
        };
        let Some(&sent) = peer.outstanding.get(&key) else {
            return false;
        };
        let (rate, rtt) = peer.depth.measured();
        let queue = if rate > 0.0 {
            let ahead = peer.outstanding.values().filter(|&&at| at <= sent).count();
            // A rate near zero makes this huge: never late, rather than a panic.
            Duration::try_from_secs_f64(ahead as f64 * f64::from(MAX_BLOCK) / rate)
                .unwrap_or(Duration::MAX)
        } else {
            QUEUE_TIME
        };
        let due = rtt
            .unwrap_or_default()
            .saturating_add(queue)
            .saturating_mul(2);
        now.saturating_duration_since(sent) > due
    }

    fn choose_new(&mut self, conn: ConnId) -> Option<PieceIndex> {
        let n = self.manifest.piece_count();
        if n == 0 || self.picker.missing == 0 {
            return None;
        }
        let start = self.rng.gen_range(0..n);
        let random_first = self.picker.have.count() == 0;
        let mut best: Option<(PieceIndex, u16)> = None;
        let mut seen = 0u32;
        let peer = self.peers.get(&conn)?;
        for i in 0..n {
            let raw = (start + i) % n;
            let Some(piece) = self.manifest.piece(raw) else {
                continue;
            };
            if !matches!(self.picker.pieces[piece.idx()], PieceState::Missing)
                || !peer.have.has(piece)
                || self.avoided(raw, conn)
            {
                continue;
            }
            let a = self.picker.availability[piece.idx()];
            if random_first {
                // Reservoir sampling: uniform over the candidates.
                seen += 1;
                if self.rng.gen_range(0..seen) == 0 {
                    best = Some((piece, a));
                }
            } else if best.is_none_or(|(_, b)| a < b) {
                best = Some((piece, a));
            }
        }
        best.map(|(p, _)| p)
    }

    /// Gives back every block `conn` was asked for.
    pub(super) fn release_requests(&mut self, conn: ConnId) {
        let Some(peer) = self.peers.get_mut(&conn) else {
            return;
        };
        let keys: Vec<(u32, u32)> = std::mem::take(&mut peer.outstanding).into_keys().collect();
        for key in keys {
            self.picker.release_block(conn, key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use ferry_protocol::ErrorCode;

    use crate::pieces::Bitfield;
    use crate::swarm::tests::util::*;
    use crate::swarm::{Action, ConnId};
    use crate::wire::{BlockRef, PeerId, PeerMessage};

    /// A piece's buffer is handed on to a later piece zeroed and of that piece's length (the
    /// last piece is shorter), and no more than `SPARE_BUFFERS` are kept.
    #[test]
    fn piece_buffers_are_reused_zeroed_and_boundedly() {
        let net = Net::new(100_000, 16_384);
        let mut picker = super::Picker::new(&net.manifest, Bitfield::new(7));
        let mut used = vec![0xa5u8; 16_384];
        let at = used.as_ptr();
        used.truncate(1_000);
        picker.recycle(used);
        let next = picker.buffer(16_384);
        assert_eq!(next.as_ptr(), at, "the spare buffer was not reused");
        assert_eq!(next, vec![0u8; 16_384]);
        picker.recycle(next);
        let last = picker.buffer(100_000 - 6 * 16_384);
        assert_eq!(last, vec![0u8; 100_000 - 6 * 16_384]);
        for _ in 0..super::SPARE_BUFFERS + 3 {
            picker.recycle(vec![1; 16]);
        }
        assert_eq!(picker.spare.len(), super::SPARE_BUFFERS);
    }

    #[test]
    fn unrequested_data_is_ignored() {
        let mut net = Net::new(100_000, 16_384);
        let leecher = net.add(false, false);
        let conn = ConnId(5);
        net.nodes[leecher]
            .handle_connected(conn, PeerId([0xee; 20]), None, net.now)
            .unwrap();
        net.nodes[leecher].handle_message(
            conn,
            PeerMessage::Bitfield(Bytes::from_static(&[0xfe])),
            net.now,
        );
        let data = Bytes::from(net.content[..16_384].to_vec());
        net.nodes[leecher].handle_message(
            conn,
            PeerMessage::Piece {
                piece: 0,
                offset: 0,
                data,
            },
            net.now,
        );
        let actions: Vec<Action> =
            std::iter::from_fn(|| net.nodes[leecher].poll_action()).collect();
        assert!(!actions
            .iter()
            .any(|a| matches!(a, Action::Verify { .. } | Action::Close { .. })));
        assert_eq!(net.nodes[leecher].stats().wasted, 16_384);
        assert_eq!(net.nodes[leecher].stats().downloaded, 0);
    }

    /// issue 9 item 3: blocks that arrive after we gave their request up (CHOKE, request
    /// timeout, endgame CANCEL) are honest races, not misbehaviour; only blocks never asked for
    /// count towards dropping the peer (spec/P2P.md §3.8).
    #[test]
    fn blocks_after_their_cancel_do_not_drop_the_peer() {
        // 64 pieces of one block each; a strict tolerance so a few miscounted blocks show.
        let mut net = Net::new(64 * 16_384, 16_384);
        let leecher = net.add(false, false);
        net.nodes[leecher].config.pipeline = 8;
        net.nodes[leecher].config.pipeline_min = 8;
        net.nodes[leecher].config.max_unrequested = 2;
        let seed = ConnId(40);
        net.nodes[leecher]
            .handle_connected(seed, PeerId([0x5e; 20]), None, net.now)
            .unwrap();
        let full = Bytes::from(Bitfield::full(64).as_bytes().to_vec());
        net.nodes[leecher].handle_message(seed, PeerMessage::Bitfield(full), net.now);
        settle(&mut net, leecher);

        // CHOKE then UNCHOKE before the seed saw our released requests: it serves both the old
        // requests and the new ones (spec/P2P.md §3.6); the second copies are late.
        net.nodes[leecher].handle_message(seed, PeerMessage::Unchoke, net.now);
        let first = requests_to(&settle(&mut net, leecher), seed);
        assert_eq!(first.len(), 8);
        net.nodes[leecher].handle_message(seed, PeerMessage::Choke, net.now);
        net.nodes[leecher].handle_message(seed, PeerMessage::Unchoke, net.now);
        let second = requests_to(&settle(&mut net, leecher), seed);
        assert_eq!(second, first, "released blocks are asked for again");
        let mut actions = Vec::new();
        for b in first.iter().chain(&second) {
            let msg = block_msg(&net, *b);
            net.nodes[leecher].handle_message(seed, msg, net.now);
            actions.extend(settle(&mut net, leecher));
        }
        assert_eq!(drops(&actions), vec![], "dropped after a choke race");
        // The second copies are the late ones, counted as such.
        let stats = net.nodes[leecher].stats();
        assert_eq!((stats.late, stats.wasted), (8 * 16_384, 8 * 16_384));

        // A request timeout: asked again, then both the late answer and the new one arrive.
        let pending = requests_to(&actions, seed);
        assert_eq!(pending.len(), 8);
        net.now += Duration::from_secs(31);
        net.nodes[leecher].handle_message(seed, PeerMessage::KeepAlive, net.now);
        net.nodes[leecher].handle_timeout(net.now);
        let again = requests_to(&settle(&mut net, leecher), seed);
        assert_eq!(again.len(), 8);
        let mut actions = Vec::new();
        for b in pending.iter().chain(&again) {
            let msg = block_msg(&net, *b);
            net.nodes[leecher].handle_message(seed, msg, net.now);
            actions.extend(settle(&mut net, leecher));
        }
        assert_eq!(drops(&actions), vec![], "dropped after a request timeout");
        let stats = net.nodes[leecher].stats();
        assert_eq!((stats.late, stats.wasted), (16 * 16_384, 16 * 16_384));

        // Endgame: a second peer (lacking piece 0, so it stays connected once we are complete)
        // is asked for blocks the seed is asked for too; when the seed's copy arrives first we
        // CANCEL at the second peer, whose copy was already on its way.
        let other = ConnId(41);
        net.nodes[leecher]
            .handle_connected(other, PeerId([0x5f; 20]), None, net.now)
            .unwrap();
        let mut bits = Bitfield::full(64).as_bytes().to_vec();
        bits[0] = 0x7f;
        net.nodes[leecher].handle_message(other, PeerMessage::Bitfield(bits.into()), net.now);
        net.nodes[leecher].handle_message(other, PeerMessage::Unchoke, net.now);
        actions.extend(settle(&mut net, leecher));
        let mut from_seed = requests_to(&actions, seed);
        let mut from_other = requests_to(&actions, other);
        // The other peer's requests become late (no rate measured: a second for its queue,
        // twice), so the seed is asked for them too.
        net.now += Duration::from_secs(3);
        net.nodes[leecher].handle_timeout(net.now);
        let actions = settle(&mut net, leecher);
        from_seed.extend(requests_to(&actions, seed));
        let mut cancelled = Vec::new();
        for _ in 0..64 {
            if net.nodes[leecher].is_complete() {
                break;
            }
            // The seed answers everything asked of it; the other peer answers nothing yet.
            let mut actions = Vec::new();
            for b in std::mem::take(&mut from_seed) {
                let msg = block_msg(&net, b);
                net.nodes[leecher].handle_message(seed, msg, net.now);
                actions.extend(settle(&mut net, leecher));
            }
            assert_eq!(drops(&actions), vec![]);
            cancelled.extend(actions.iter().filter_map(|a| match a {
                Action::Send {
                    conn,
                    msg: PeerMessage::Cancel(b),
                } if *conn == other => Some(*b),
                _ => None,
            }));
            from_seed.extend(requests_to(&actions, seed));
            from_other.extend(requests_to(&actions, other));
        }
        assert!(net.nodes[leecher].is_complete());
        assert!(!cancelled.is_empty(), "no endgame cancel happened");
        assert!(cancelled.iter().all(|b| from_other.contains(b)));
        for b in from_other {
            let msg = block_msg(&net, b);
            net.nodes[leecher].handle_message(other, msg, net.now);
        }
        assert_eq!(
            drops(&settle(&mut net, leecher)),
            vec![],
            "dropped after an endgame cancel"
        );

        // Blocks never asked for still count: three drop the peer with tolerance 2.
        for _ in 0..3 {
            let msg = block_msg(
                &net,
                BlockRef {
                    piece: 0,
                    offset: 0,
                    length: 16_384,
                },
            );
            net.nodes[leecher].handle_message(other, msg, net.now);
        }
        assert_eq!(
            drops(&settle(&mut net, leecher)),
            vec![ErrorCode::UNEXPECTED_MESSAGE]
        );
    }

    #[test]
    fn requests_time_out_and_move_to_another_peer() {
        let mut net = Net::new(200_000, 16_384);
        let leecher = net.add(false, false);
        let seed = net.add(true, false);
        // A silent peer that unchokes and then never answers.
        let mute = ConnId(500);
        net.nodes[leecher]
            .handle_connected(mute, PeerId([0xdd; 20]), None, net.now)
            .unwrap();
        net.nodes[leecher].handle_message(
            mute,
            PeerMessage::Bitfield(Bytes::from(Bitfield::full(13).as_bytes().to_vec())),
            net.now,
        );
        net.nodes[leecher].handle_message(mute, PeerMessage::Unchoke, net.now);
        let requested = std::iter::from_fn(|| net.nodes[leecher].poll_action())
            .filter(|a| {
                matches!(
                    a,
                    Action::Send {
                        msg: PeerMessage::Request(_),
                        ..
                    }
                )
            })
            .count();
        assert_eq!(requested, 13);
        let count_requests = |net: &mut Net| {
            std::iter::from_fn(|| net.nodes[leecher].poll_action())
                .filter(|a| {
                    matches!(
                        a,
                        Action::Send {
                            msg: PeerMessage::Request(_),
                            ..
                        }
                    )
                })
                .count()
        };
        net.now += Duration::from_secs(29);
        net.nodes[leecher].handle_timeout(net.now);
        assert_eq!(
            count_requests(&mut net),
            0,
            "re-requested before the timeout"
        );
        net.now += Duration::from_secs(2);
        net.nodes[leecher].handle_timeout(net.now);
        // Released and, the mute peer being the only source, asked again.
        assert_eq!(count_requests(&mut net), 13);
        // With an honest peer present, the download completes despite the mute one.
        assert!(net.connect(leecher, seed));
        net.pump();
        for _ in 0..10 {
            net.nodes[leecher].handle_message(mute, PeerMessage::KeepAlive, net.now);
            net.tick(10);
        }
        assert!(net.nodes[leecher].is_complete());
    }

    /// issue 14: in endgame a block is asked of a second peer only once its first request has
    /// waited past what that peer's measured round trip and rate say (its place in the peer's
    /// queue ÷ rate), and a connection holds at most `pipeline_min` such duplicates at once.
    #[test]
    fn endgame_duplicates_only_requests_that_have_waited() {
        let mut net = Net::new(256 << 10, 256 << 10);
        let leecher = net.add(false, false);
        let (fast, second) = (ConnId(1), ConnId(2));
        let full = Bytes::from_static(&[0x80]);
        let t0 = net.now;
        net.nodes[leecher]
            .handle_connected(fast, PeerId([0xa1; 20]), None, t0)
            .unwrap();
        net.nodes[leecher].handle_message(fast, PeerMessage::Bitfield(full.clone()), t0);
        net.nodes[leecher].handle_message(fast, PeerMessage::Unchoke, t0);
        let actions: Vec<Action> =
            std::iter::from_fn(|| net.nodes[leecher].poll_action()).collect();
        let asked = requests_to(&actions, fast);
        assert_eq!(
            asked.len(),
            16,
            "the whole piece is asked of the first peer"
        );
        // Half arrives, one block every 10 ms after a 20 ms round trip: 1.6 MB/s measured.
        for (i, b) in asked[..8].iter().enumerate() {
            let at = t0 + Duration::from_millis(20 + 10 * i as u64);
            let msg = block_msg(&net, *b);
            net.nodes[leecher].handle_message(fast, msg, at);
        }
        let now = t0 + Duration::from_millis(90);
        while net.nodes[leecher].poll_action().is_some() {}
        net.nodes[leecher]
            .handle_connected(second, PeerId([0xb2; 20]), None, now)
            .unwrap();
        net.nodes[leecher].handle_message(second, PeerMessage::Bitfield(full), now);
        net.nodes[leecher].handle_message(second, PeerMessage::Unchoke, now);
        let actions: Vec<Action> =
            std::iter::from_fn(|| net.nodes[leecher].poll_action()).collect();
        assert_eq!(
            requests_to(&actions, second),
            vec![],
            "8 blocks queued 90 ms ago at ~10 ms each after a 20 ms round trip are not late yet"
        );
        // A second later nothing more came: they are late, and the idle peer asks again for
        // at most its depth floor of them.
        let later = t0 + Duration::from_millis(1090);
        net.nodes[leecher].handle_timeout(later);
        let actions: Vec<Action> =
            std::iter::from_fn(|| net.nodes[leecher].poll_action()).collect();
        let again = requests_to(&actions, second);
        let floor = net.nodes[leecher].config.pipeline_min;
        assert!(floor < 8, "the test needs more late blocks than the floor");
        assert_eq!(again.len(), floor, "{again:?}");
        assert!(again.iter().all(|b| asked[8..].contains(b)));
    }
}
