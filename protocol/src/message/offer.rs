//! Offer (spec §3.13): `ferry send` lists the files it would send (names, sizes, modes,
//! digests) before sending any; the receiver answers once, with one code per item: 0 to take
//! it (the sender then uploads it with PUT, §3.12), else why not. A whole offer declined is an
//! `ERROR` (`OFFER_DECLINED`) instead of this answer.

use bytes::{BufMut, Bytes};

use super::put::MAX_MODE;
use super::{
    check_str, expect_empty, get_array, get_str, get_u16, get_u32, get_u64, get_u8, put_str,
    str_len,
};
use crate::error::{DecodeError, ErrorCode};

/// Flag bits of an [`OfferItem`] (spec §3.13).
pub mod offer_flags {
    /// The item is a directory (size 0, all-zero digest): how an empty directory is offered.
    pub const DIRECTORY: u8 = 0x01;
    /// Every defined bit; the others are reserved and must be zero.
    pub const ALL: u8 = DIRECTORY;
}

/// One file (or directory) offered.
/// ```text
/// path: str | size: u64 | mode: u32 | flags: u8 | digest: [u8; 32]
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferItem {
    /// Where the file would go, relative to the receiver's directory (spec §3.5 syntax).
    pub path: String,
    pub size: u64,
    /// Unix permission bits (at most [`MAX_MODE`]).
    pub mode: u32,
    /// [`offer_flags`] bits.
    pub flags: u8,
    /// BLAKE3 of the whole file, as a PutRequest for it will announce.
    pub digest: [u8; 32],
}

impl OfferItem {
    /// Bytes of an item with an empty path.
    pub const FIXED_LEN: usize = 2 + 8 + 4 + 1 + 32;

    pub fn is_directory(&self) -> bool {
        self.flags & offer_flags::DIRECTORY != 0
    }

    pub fn encoded_len(&self) -> usize {
        str_len(&self.path) + 8 + 4 + 1 + 32
    }

    pub fn encode(&self, dst: &mut impl BufMut) {
        put_str(dst, &self.path);
        dst.put_u64(self.size);
        dst.put_u32(self.mode);
        dst.put_u8(self.flags);
        dst.put_slice(&self.digest);
    }

    fn decode(src: &mut Bytes) -> Result<Self, DecodeError> {
        let path = get_str(src)?;
        let size = get_u64(src)?;
        let mode = get_u32(src)?;
        let flags = get_u8(src)?;
        let digest = get_array(src)?;
        if mode > MAX_MODE {
            return Err(DecodeError::InvalidValue {
                field: "offer mode",
                value: mode.into(),
            });
        }
        if flags & !offer_flags::ALL != 0 {
            return Err(DecodeError::InvalidValue {
                field: "offer flags",
                value: flags.into(),
            });
        }
        if flags & offer_flags::DIRECTORY != 0 && (size != 0 || digest != [0; 32]) {
            return Err(DecodeError::InvalidValue {
                field: "offer directory size or digest",
                value: size,
            });
        }
        Ok(Self {
            path,
            size,
            mode,
            flags,
            digest,
        })
    }
}

/// ```text
/// [0x0000 | set_items: u32 | set_bytes: u64] | count: u16 (1..) | item * count
/// ```
/// An offer of a set (spec §3.13 rule 4) starts with a zero count, which no offer has, and the
/// set's totals; the ordinary body follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferRequest {
    pub items: Vec<OfferItem>,
    /// Present when this offer is one of a set split over several offers on one connection
    /// (spec §3.13 rule 4): the whole set's totals, the same in each of its offers.
    pub set: Option<OfferSet>,
}

/// The totals of an offer set (spec §3.13 rule 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfferSet {
    /// Items in all of the set's offers.
    pub items: u32,
    /// Their sizes summed.
    pub bytes: u64,
}

impl OfferSet {
    /// Bytes of the prefix that carries it (the zero marker and the totals).
    pub const LEN: usize = 2 + 4 + 8;
}

impl OfferRequest {
    pub fn encoded_len(&self) -> usize {
        2 + self.items.iter().map(OfferItem::encoded_len).sum::<usize>()
            + self.set.map_or(0, |_| OfferSet::LEN)
    }

    pub fn encode(&self, dst: &mut impl BufMut) {
        if let Some(set) = self.set {
            dst.put_u16(0);
            dst.put_u32(set.items);
            dst.put_u64(set.bytes);
        }
        // `Message::check_encodable` bounds the count before anything reaches the wire.
        dst.put_u16(self.items.len() as u16);
        for item in &self.items {
            item.encode(dst);
        }
    }

    pub fn decode(mut src: Bytes) -> Result<Self, DecodeError> {
        let mut count = get_u16(&mut src)?;
        // A zero count marks an offer of a set: its totals, then the offer (rule 4).
        let mut set = None;
        if count == 0 && !src.is_empty() {
            let totals = OfferSet {
                items: get_u32(&mut src)?,
                bytes: get_u64(&mut src)?,
            };
            count = get_u16(&mut src)?;
            if count != 0 && totals.items < u32::from(count) {
                return Err(DecodeError::InvalidValue {
                    field: "offer set item count",
                    value: totals.items.into(),
                });
            }
            set = Some(totals);
        }
        if count == 0 {
            return Err(DecodeError::InvalidValue {
                field: "offer item count",
                value: 0,
            });
        }
        // No reservation from the count: each item is at least FIXED_LEN bytes of the body.
        let mut items =
            Vec::with_capacity(usize::from(count).min(src.len() / OfferItem::FIXED_LEN));
        for _ in 0..count {
            items.push(OfferItem::decode(&mut src)?);
        }
        expect_empty(&src)?;
        Ok(Self { items, set })
    }

    /// Fits the wire: 1 to 65 535 items, paths of at most 65 535 bytes.
    pub fn check_encodable(&self) -> Result<(), DecodeError> {
        if self.items.is_empty() || self.items.len() > usize::from(u16::MAX) {
            return Err(DecodeError::InvalidValue {
                field: "offer item count",
                value: self.items.len() as u64,
            });
        }
        if let Some(set) = self.set {
            if (set.items as usize) < self.items.len() {
                return Err(DecodeError::InvalidValue {
                    field: "offer set item count",
                    value: set.items.into(),
                });
            }
        }
        self.items.iter().try_for_each(|i| check_str(&i.path))
    }
}

/// One code per offered item, in the offer's order: [`OfferResponse::ACCEPTED`] (send it) or
/// the reason it is not wanted, from the error table (spec §6.2).
/// ```text
/// count: u16 | code: u16 * count
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferResponse {
    pub codes: Vec<ErrorCode>,
}

impl OfferResponse {
    /// The item is wanted: the sender uploads it (or makes the directory) with PUT.
    pub const ACCEPTED: ErrorCode = ErrorCode(0);

    pub fn encoded_len(&self) -> usize {
        2 + 2 * self.codes.len()
    }

    pub fn encode(&self, dst: &mut impl BufMut) {
        dst.put_u16(self.codes.len() as u16);
        for code in &self.codes {
            dst.put_u16(code.0);
        }
    }

    pub fn decode(mut src: Bytes) -> Result<Self, DecodeError> {
        let count = get_u16(&mut src)?;
        let mut codes = Vec::with_capacity(usize::from(count).min(src.len() / 2));
        for _ in 0..count {
            codes.push(ErrorCode(get_u16(&mut src)?));
        }
        expect_empty(&src)?;
        Ok(Self { codes })
    }

    pub fn check_encodable(&self) -> Result<(), DecodeError> {
        if self.codes.len() > usize::from(u16::MAX) {
            return Err(DecodeError::InvalidValue {
                field: "offer answer count",
                value: self.codes.len() as u64,
            });
        }
        Ok(())
    }
}
