//! The invariants of `STATE.md`, one function each, numbered as there. Tests call
//! [`Swarm::check_invariants`] after every step of a simulation; each check returns the first
//! violation it finds, in words with the numbers in it.

use std::collections::HashSet;

use super::picker::{BlockState, PieceState};
use super::super_seed::SuperSeed;
use super::Swarm;
use crate::wire::MAX_BLOCK;

type Check = fn(&Swarm) -> Result<(), String>;

/// Every invariant, in `STATE.md` order.
pub(super) const CHECKS: &[(&str, Check)] = &[
    ("P1 piece states and counters", piece_states),
    ("P2 have bits", have_bits),
    ("P3 active buffers", active_buffers),
    (
        "P4 requested blocks and outstanding requests",
        requests_match,
    ),
    ("P5 exclusive owners", exclusive_owners),
    ("R1 availability", availability),
    ("R2 interest", interest),
    ("R3 request limits", request_limits),
    (
        "R4 requests only where unchoked and interested",
        requests_allowed,
    ),
    ("R5 before the bitfield", before_bitfield),
    ("R6 unchoke slots", unchoke_slots),
    ("R7 held HAVEs", held_haves),
    ("S1 super-seeding", super_seeding),
    ("B1 blame tables", blame_tables),
    ("B2 bans", bans),
    ("C1 completion", completion),
];

impl Swarm {
    /// Runs every check; the error names the invariant that failed.
    pub(crate) fn check_invariants(&self) -> Result<(), String> {
        for (name, check) in CHECKS {
            check(self).map_err(|e| format!("{name}: {e}"))?;
        }
        Ok(())
    }
}

/// P1: each piece is in exactly one state; `missing` counts `Missing` pieces and `active`
/// lists exactly the `Active` ones, once each.
fn piece_states(s: &Swarm) -> Result<(), String> {
    let p = &s.picker;
    let missing = p
        .pieces
        .iter()
        .filter(|x| matches!(x, PieceState::Missing))
        .count();
    if missing != p.missing {
        return Err(format!(
            "missing is {} but {missing} pieces are Missing",
            p.missing
        ));
    }
    let mut active: Vec<u32> = (0..p.pieces.len() as u32)
        .filter(|&i| matches!(p.pieces[i as usize], PieceState::Active(_)))
        .collect();
    let mut listed = p.active.clone();
    active.sort_unstable();
    listed.sort_unstable();
    if active != listed {
        return Err(format!("active lists {listed:?} but {active:?} are Active"));
    }
    Ok(())
}

/// P2: `have` has bit i set iff piece i is `Have`.
fn have_bits(s: &Swarm) -> Result<(), String> {
    for piece in s.manifest.pieces() {
        let is_have = matches!(s.picker.pieces[piece.idx()], PieceState::Have);
        if s.picker.have.has(piece) != is_have {
            return Err(format!(
                "piece {} has bit {} but state Have is {is_have}",
                piece.get(),
                s.picker.have.has(piece)
            ));
        }
    }
    Ok(())
}

/// P3: an `Active` piece has a `piece_len` buffer and one block per 16 KiB; `done` counts the
/// `Done` blocks, each with a source; a `Verifying` piece names one source per block.
fn active_buffers(s: &Swarm) -> Result<(), String> {
    for piece in s.manifest.pieces() {
        let len = s.manifest.piece_len(piece);
        let blocks = len.div_ceil(MAX_BLOCK) as usize;
        match &s.picker.pieces[piece.idx()] {
            PieceState::Active(a) => {
                if a.data.len() != len as usize || a.blocks.len() != blocks {
                    return Err(format!(
                        "piece {}: buffer {} bytes in {} blocks, expected {len} in {blocks}",
                        piece.get(),
                        a.data.len(),
                        a.blocks.len()
                    ));
                }
                let done = a
                    .blocks
                    .iter()
                    .filter(|b| matches!(b.state, BlockState::Done))
                    .count();
                if done != a.done {
                    return Err(format!("piece {}: done {} of {done}", piece.get(), a.done));
                }
                if a.done == blocks {
                    return Err(format!(
                        "piece {}: all blocks done, still Active",
                        piece.get()
                    ));
                }
                let unsourced = a
                    .blocks
                    .iter()
                    .any(|b| matches!(b.state, BlockState::Done) && b.source.is_none());
                if unsourced {
                    return Err(format!("piece {}: a done block has no source", piece.get()));
                }
            }
            PieceState::Verifying(sources) if sources.len() != blocks => {
                return Err(format!(
                    "piece {}: verifying with {} sources for {blocks} blocks",
                    piece.get(),
                    sources.len()
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// P4: a block `Requested(conns)` has 1 or 2 conns, all distinct, and `(piece, offset)` is in
/// each one's `outstanding`; every outstanding request points at such a block.
fn requests_match(s: &Swarm) -> Result<(), String> {
    let mut from_blocks = HashSet::new();
    for (i, state) in s.picker.pieces.iter().enumerate() {
        let PieceState::Active(a) = state else {
            continue;
        };
        for (b, block) in a.blocks.iter().enumerate() {
            let BlockState::Requested(conns) = &block.state else {
                continue;
            };
            let distinct: HashSet<_> = conns.iter().collect();
            if conns.is_empty() || conns.len() > 2 || distinct.len() != conns.len() {
                return Err(format!("piece {i} block {b} requested from {conns:?}"));
            }
            for c in conns {
                from_blocks.insert((*c, i as u32, b as u32 * MAX_BLOCK));
            }
        }
    }
    let mut from_peers = HashSet::new();
    for (c, peer) in &s.peers {
        for &(piece, offset) in peer.outstanding.keys() {
            from_peers.insert((*c, piece, offset));
        }
    }
    if from_blocks != from_peers {
        let only_blocks: Vec<_> = from_blocks.difference(&from_peers).take(4).collect();
        let only_peers: Vec<_> = from_peers.difference(&from_blocks).take(4).collect();
        return Err(format!(
            "blocks list {only_blocks:?} not outstanding; outstanding {only_peers:?} not in blocks"
        ));
    }
    Ok(())
}

/// P5: only an exclusive piece has an owner, and the owner is connected; an exclusive piece's
/// requested blocks are requested from its owner alone.
fn exclusive_owners(s: &Swarm) -> Result<(), String> {
    for (i, state) in s.picker.pieces.iter().enumerate() {
        let PieceState::Active(a) = state else {
            continue;
        };
        if let Some(owner) = a.owner {
            if !a.exclusive || !s.peers.contains_key(&owner) {
                return Err(format!(
                    "piece {i}: owner {owner:?}, exclusive {}, connected {}",
                    a.exclusive,
                    s.peers.contains_key(&owner)
                ));
            }
        }
        if a.exclusive {
            for block in &a.blocks {
                if let BlockState::Requested(conns) = &block.state {
                    if a.owner.is_none() || conns.iter().any(|c| Some(*c) != a.owner) {
                        return Err(format!(
                            "exclusive piece {i} owned by {:?} requested from {conns:?}",
                            a.owner
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// R1: `availability[i]` == number of connected peers whose bitfield has i.
fn availability(s: &Swarm) -> Result<(), String> {
    for piece in s.manifest.pieces() {
        let count = s.peers.values().filter(|p| p.have.has(piece)).count();
        let a = s.picker.availability[piece.idx()] as usize;
        if a != count {
            return Err(format!(
                "piece {}: availability {a}, {count} peers have it",
                piece.get()
            ));
        }
    }
    Ok(())
}

/// R2: `wanted` == pieces the peer has that we lack, and `am_interested == (wanted > 0)`.
fn interest(s: &Swarm) -> Result<(), String> {
    for (c, peer) in &s.peers {
        let wanted = s
            .manifest
            .pieces()
            .filter(|&p| peer.have.has(p) && !s.picker.have.has(p))
            .count() as u32;
        if peer.wanted != wanted || peer.am_interested != (wanted > 0) {
            return Err(format!(
                "{c:?}: wanted {} (really {wanted}), interested {}",
                peer.wanted, peer.am_interested
            ));
        }
    }
    Ok(())
}

/// R3: at most `pipeline` outstanding and `4 × pipeline` given-up requests per peer, each
/// given-up one a whole block of a piece.
fn request_limits(s: &Swarm) -> Result<(), String> {
    let (keep, _) = s.given_up_limits();
    for (c, peer) in &s.peers {
        let floor = s.config.pipeline_min.min(s.config.pipeline);
        if !(floor..=s.config.pipeline).contains(&peer.depth.target()) {
            return Err(format!(
                "{c:?}: depth {} outside {floor}..={}",
                peer.depth.target(),
                s.config.pipeline
            ));
        }
        if peer.outstanding.len() > s.config.pipeline || peer.given_up.len() > keep {
            return Err(format!(
                "{c:?}: {} outstanding (pipeline {}), {} given up (keep {keep})",
                peer.outstanding.len(),
                s.config.pipeline,
                peer.given_up.len()
            ));
        }
        for &((piece, offset), _) in &peer.given_up {
            let ok = s.manifest.piece(piece).is_some_and(|p| {
                let len = s.manifest.piece_len(p);
                offset % MAX_BLOCK == 0 && offset < len
            });
            if !ok {
                return Err(format!("{c:?}: gave up {piece}+{offset}, not a block"));
            }
        }
        for &(piece, offset) in peer.outstanding.keys() {
            let Some(p) = s.manifest.piece(piece) else {
                return Err(format!("{c:?}: outstanding piece {piece} out of range"));
            };
            let len = s.manifest.piece_len(p);
            if offset % MAX_BLOCK != 0 || offset >= len {
                return Err(format!("{c:?}: outstanding {piece}+{offset}, not a block"));
            }
        }
    }
    Ok(())
}

/// R4: requests are outstanding only at peers that unchoked us, that we are interested in, and
/// that have the piece.
fn requests_allowed(s: &Swarm) -> Result<(), String> {
    for (c, peer) in &s.peers {
        if peer.outstanding.is_empty() {
            continue;
        }
        if peer.peer_choking || !peer.am_interested {
            return Err(format!(
                "{c:?}: {} outstanding while choking us {} / interested {}",
                peer.outstanding.len(),
                peer.peer_choking,
                peer.am_interested
            ));
        }
        for &(piece, _) in peer.outstanding.keys() {
            if !peer.have.has_index(piece) {
                return Err(format!("{c:?}: asked for piece {piece} it does not have"));
            }
        }
    }
    Ok(())
}

/// R5: before its BITFIELD a peer has nothing, is wanted for nothing, is asked for nothing and
/// is not unchoked.
fn before_bitfield(s: &Swarm) -> Result<(), String> {
    for (c, peer) in &s.peers {
        if !peer.got_bitfield
            && (peer.have.count() > 0
                || peer.wanted > 0
                || !peer.outstanding.is_empty()
                || !peer.am_choking
                || peer.peer_interested)
        {
            return Err(format!("{c:?}: state before its bitfield"));
        }
    }
    Ok(())
}

/// R6: at most `slots() + 1` peers are unchoked, and the welcome holder and a super-seed's
/// draining peers (`Peer::draining`) besides, each
/// interested in us or unchoked early (on its BITFIELD, its INTERESTED still to come); the
/// optimistic peer is connected.
fn unchoke_slots(s: &Swarm) -> Result<(), String> {
    let unchoked: Vec<_> = s
        .peers
        .iter()
        .filter(|(_, p)| !p.am_choking && !p.draining())
        .collect();
    let welcome = usize::from(
        s.choker
            .welcomed()
            .is_some_and(|w| s.peers.get(&w).is_some_and(|p| !p.am_choking)),
    );
    if unchoked.len() > s.slots() + 1 + welcome {
        return Err(format!(
            "{} unchoked, slots {} + 1 + welcome {welcome}",
            unchoked.len(),
            s.slots()
        ));
    }
    if let Some((c, _)) = unchoked
        .iter()
        .find(|(_, p)| !p.peer_interested && !p.unchoked_early)
    {
        return Err(format!("{c:?} unchoked but not interested"));
    }
    if let Some(o) = s.choker.optimistic {
        if !s.peers.contains_key(&o) {
            return Err(format!("optimistic {o:?} is not connected"));
        }
    }
    Ok(())
}

/// R7: HAVEs are held only for a peer interested in us, and each names a piece we have, once.
fn held_haves(s: &Swarm) -> Result<(), String> {
    for (c, p) in &s.peers {
        if !p.held_haves.is_empty() && !p.peer_interested {
            return Err(format!(
                "{c:?} not interested, HAVEs held: {:?}",
                p.held_haves
            ));
        }
        let mut seen = HashSet::new();
        for &piece in &p.held_haves {
            let ours = s
                .manifest
                .piece(piece)
                .is_some_and(|i| s.picker.have.has(i));
            if !ours || !seen.insert(piece) {
                return Err(format!("{c:?} HAVE {piece} held: not ours, or twice"));
            }
        }
    }
    Ok(())
}

/// S1: while super-seeding every peer has `revealed`, else none does; `revealed_pending` counts
/// revealed pieces the peer lacks and stays within the cap; `reveal_count[i]` is at least
/// the connected peers piece i was revealed to.
fn super_seeding(s: &Swarm) -> Result<(), String> {
    let cap = SuperSeed::cap(&s.config, s.manifest.piece_size());
    for (c, peer) in &s.peers {
        match (&peer.revealed, s.super_seed.on) {
            (None, false) => {}
            (Some(revealed), true) => {
                let pending = s
                    .manifest
                    .pieces()
                    .filter(|&p| revealed.has(p) && !peer.have.has(p))
                    .count() as u32;
                if pending != peer.revealed_pending || pending > cap {
                    return Err(format!(
                        "{c:?}: revealed_pending {} (really {pending}, cap {cap})",
                        peer.revealed_pending
                    ));
                }
            }
            (r, on) => {
                return Err(format!(
                    "{c:?}: revealed {} while super-seeding is {on}",
                    r.is_some()
                ))
            }
        }
    }
    for piece in s.manifest.pieces() {
        let shown = s
            .peers
            .values()
            .filter(|p| p.revealed.as_ref().is_some_and(|r| r.has(piece)))
            .count() as u32;
        if s.super_seed.reveal_count[piece.idx()] < shown {
            return Err(format!(
                "piece {}: reveal_count {} < {shown} peers shown",
                piece.get(),
                s.super_seed.reveal_count[piece.idx()]
            ));
        }
    }
    Ok(())
}

/// B1: `avoid` and `history` name only pieces we do not have; a piece with history is fetched
/// exclusively.
fn blame_tables(s: &Swarm) -> Result<(), String> {
    for p in s.blame.avoid.keys().chain(s.blame.history.keys()) {
        if s.picker.have.has_index(*p) {
            return Err(format!(
                "piece {p} is verified but still in avoid or history"
            ));
        }
    }
    for p in s.blame.history.keys() {
        if let Some(PieceState::Active(a)) = s.picker.pieces.get(*p as usize) {
            if !a.exclusive {
                return Err(format!(
                    "piece {p} has failure history but is not exclusive"
                ));
            }
        }
    }
    Ok(())
}

/// B2: a peer with `ban_threshold` strikes is banned, and no banned peer id is connected.
fn bans(s: &Swarm) -> Result<(), String> {
    for (id, strikes) in &s.blame.strikes {
        if *strikes >= s.config.ban_threshold && !s.blame.banned_ids.contains(id) {
            return Err(format!("{id} has {strikes} strikes and is not banned"));
        }
    }
    // By id only: a peer already connected from a listen address banned later stays.
    for (c, peer) in &s.peers {
        if s.blame.banned_ids.contains(&peer.id) {
            return Err(format!("{c:?} ({}) is banned but connected", peer.id));
        }
    }
    Ok(())
}

/// C1: `Completed` was queued iff every piece is `Have`.
fn completion(s: &Swarm) -> Result<(), String> {
    if s.completed_emitted != s.is_complete() {
        return Err(format!(
            "completed emitted {}, complete {}",
            s.completed_emitted,
            s.is_complete()
        ));
    }
    Ok(())
}
