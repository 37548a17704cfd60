//! Stat (spec §3.6): one entry's metadata. The response body is a single [`super::Entry`].

use bytes::{BufMut, Bytes};

use super::{check_str, expect_empty, get_str, put_str, str_len};
use crate::error::DecodeError;

/// ```text
/// path: str
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatRequest {
    pub path: String,
}

impl StatRequest {
    pub fn new(path: impl Into<String>) -> Result<Self, DecodeError> {
        let path = path.into();
        check_str(&path)?;
        Ok(Self { path })
    }

    pub fn encoded_len(&self) -> usize {
        str_len(&self.path)
    }

    pub fn encode(&self, dst: &mut impl BufMut) {
        put_str(dst, &self.path);
    }

    pub fn decode(mut src: Bytes) -> Result<Self, DecodeError> {
        let path = get_str(&mut src)?;
        expect_empty(&src)?;
        Ok(Self { path })
    }
}
