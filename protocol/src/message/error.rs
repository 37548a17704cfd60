//! The error body (spec §3.9): category, stable code, human-readable message.

use std::fmt;

use bytes::{BufMut, Bytes};

use super::{expect_empty, get_str, get_u16, get_u8, put_str, str_len};
use crate::error::{Category, DecodeError, ErrorCode};

/// ```text
/// category: u8 | code: u16 | message: str
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorBody {
    /// Informational; receivers go by `code` (spec §6.1).
    pub category: Category,
    pub code: ErrorCode,
    /// One lowercase sentence for humans. Never contains server-side absolute paths.
    pub message: String,
}

/// Longest message kept; longer ones are cut at a character boundary.
const MAX_MESSAGE: usize = 1024;

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        Self {
            category: code.category(),
            code,
            message,
        }
    }

    /// An error body whose message is the table's description.
    pub fn from_code(code: ErrorCode) -> Self {
        Self::new(code, code.description())
    }

    pub fn encoded_len(&self) -> usize {
        1 + 2 + str_len(&self.message)
    }

    pub fn encode(&self, dst: &mut impl BufMut) {
        dst.put_u8(self.category.0);
        dst.put_u16(self.code.0);
        put_str(dst, &self.message);
    }

    pub fn decode(mut src: Bytes) -> Result<Self, DecodeError> {
        let category = Category(get_u8(&mut src)?);
        let code = ErrorCode(get_u16(&mut src)?);
        let message = get_str(&mut src)?;
        expect_empty(&src)?;
        Ok(Self {
            category,
            code,
            message,
        })
    }
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}
