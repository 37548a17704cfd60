//! Reader and writer for the annotated-hex vector files in `spec/vectors/` (format described in
//! `spec/vectors/README.md`).
//!
//! A file is a list of vectors. Each vector is an ordered list of `key: value` fields; fields
//! before the first `vector:` line are file-wide defaults. Values are typed by the reader that
//! asks for them: hex (whitespace ignored), integers (decimal or `0x` hex), quoted strings.

pub mod generate;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The `spec/vectors` directory of this repository.
pub fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec/vectors")
}

/// One vector: its name and its fields in file order.
#[derive(Debug, Clone)]
pub struct Vector {
    pub name: String,
    /// 1-based line of the `vector:` line, for failure messages.
    pub line: usize,
    fields: Vec<(String, String)>,
    defaults: Vec<(String, String)>,
}

impl Vector {
    fn lookup(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .chain(self.defaults.iter())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn has(&self, key: &str) -> bool {
        self.lookup(key).is_some()
    }

    /// The raw text of a field; panics with the vector's name if it is missing.
    pub fn raw(&self, key: &str) -> &str {
        self.lookup(key).unwrap_or_else(|| {
            panic!(
                "vector {} (line {}) has no field {key:?}",
                self.name, self.line
            )
        })
    }

    /// Every value of a repeated field, in order (vector fields only, no defaults).
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn hex(&self, key: &str) -> Vec<u8> {
        parse_hex(self.raw(key))
            .unwrap_or_else(|e| panic!("vector {}: field {key}: {e}", self.name))
    }

    pub fn array<const N: usize>(&self, key: &str) -> [u8; N] {
        let bytes = self.hex(key);
        <[u8; N]>::try_from(bytes.as_slice()).unwrap_or_else(|_| {
            panic!(
                "vector {}: field {key} has {} bytes, expected {N}",
                self.name,
                bytes.len()
            )
        })
    }

    /// An integer field as i128, so every u64 and i64 fits.
    pub fn int(&self, key: &str) -> i128 {
        parse_int(self.raw(key))
            .unwrap_or_else(|e| panic!("vector {}: field {key}: {e}", self.name))
    }

    pub fn u8(&self, key: &str) -> u8 {
        self.int_as(key)
    }

    pub fn u16(&self, key: &str) -> u16 {
        self.int_as(key)
    }

    pub fn u32(&self, key: &str) -> u32 {
        self.int_as(key)
    }

    pub fn u64(&self, key: &str) -> u64 {
        self.int_as(key)
    }

    pub fn i64(&self, key: &str) -> i64 {
        self.int_as(key)
    }

    fn int_as<T: TryFrom<i128>>(&self, key: &str) -> T {
        let value = self.int(key);
        T::try_from(value).unwrap_or_else(|_| {
            panic!(
                "vector {}: field {key} = {value} is out of range",
                self.name
            )
        })
    }

    pub fn bool(&self, key: &str) -> bool {
        match self.int(key) {
            0 => false,
            1 => true,
            other => panic!("vector {}: field {key} = {other} is not 0 or 1", self.name),
        }
    }

    /// A `"quoted"` string; the text between the first and the last quote, no escapes.
    pub fn string(&self, key: &str) -> String {
        parse_string(self.raw(key))
            .unwrap_or_else(|e| panic!("vector {}: field {key}: {e}", self.name))
    }
}

/// Parses a vector file.
pub fn parse(text: &str) -> Result<Vec<Vector>, String> {
    let mut defaults: Vec<(String, String)> = Vec::new();
    let mut vectors: Vec<Vector> = Vec::new();
    let mut last_key = false;
    for (index, line) in text.lines().enumerate() {
        let lineno = index + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            last_key = false;
            continue;
        }
        if line.starts_with([' ', '\t']) {
            // A continuation of the previous field's value.
            if !last_key {
                return Err(format!("line {lineno}: continuation without a field"));
            }
            let fields = match vectors.last_mut() {
                Some(vector) => &mut vector.fields,
                None => &mut defaults,
            };
            let value = &mut fields.last_mut().ok_or("no field to continue")?.1;
            value.push(' ');
            value.push_str(trimmed);
            continue;
        }
        let (key, value) = trimmed
            .split_once(':')
            .ok_or_else(|| format!("line {lineno}: expected `key: value`"))?;
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.')
        {
            return Err(format!("line {lineno}: bad field name {key:?}"));
        }
        if key == "vector" {
            vectors.push(Vector {
                name: value.to_string(),
                line: lineno,
                fields: Vec::new(),
                defaults: defaults.clone(),
            });
        } else {
            let fields = match vectors.last_mut() {
                Some(vector) => &mut vector.fields,
                None => &mut defaults,
            };
            fields.push((key.to_string(), value.to_string()));
        }
        last_key = true;
    }
    Ok(vectors)
}

/// Loads and parses `spec/vectors/<name>`.
pub fn load(name: &str) -> Vec<Vector> {
    let path = vectors_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let vectors = parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(!vectors.is_empty(), "{} holds no vectors", path.display());
    vectors
}

pub fn parse_hex(value: &str) -> Result<Vec<u8>, String> {
    let digits: String = value.chars().filter(|c| !c.is_whitespace()).collect();
    hex::decode(&digits).map_err(|e| format!("bad hex: {e}"))
}

pub fn parse_int(value: &str) -> Result<i128, String> {
    let (negative, digits) = match value.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    let digits = digits.replace('_', "");
    let magnitude = match digits.strip_prefix("0x") {
        Some(hex) => i128::from_str_radix(hex, 16),
        None => digits.parse::<i128>(),
    }
    .map_err(|e| format!("bad integer {value:?}: {e}"))?;
    Ok(if negative { -magnitude } else { magnitude })
}

pub fn parse_string(value: &str) -> Result<String, String> {
    let inner = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .ok_or_else(|| format!("expected a \"quoted\" string, got {value:?}"))?;
    Ok(inner.to_string())
}

/// Builds a vector file's text.
#[derive(Debug, Default)]
pub struct Writer {
    text: String,
}

impl Writer {
    pub fn finish(self) -> String {
        self.text
    }

    /// `# ` comment lines; an empty string gives a bare `#`.
    pub fn comment(&mut self, text: &str) -> &mut Self {
        for line in text.lines() {
            if line.is_empty() {
                self.text.push_str("#\n");
            } else {
                let _ = writeln!(self.text, "# {line}");
            }
        }
        self
    }

    /// Starts a vector, preceded by a blank line.
    pub fn vector(&mut self, name: &str) -> &mut Self {
        let _ = writeln!(self.text, "\nvector: {name}");
        self
    }

    pub fn field(&mut self, key: &str, value: impl std::fmt::Display) -> &mut Self {
        let _ = writeln!(self.text, "{key}: {value}");
        self
    }

    pub fn int(&mut self, key: &str, value: impl std::fmt::Display) -> &mut Self {
        self.field(key, value)
    }

    /// A `0x`-prefixed hex integer of `width` digits.
    pub fn hexint(&mut self, key: &str, value: u64, width: usize) -> &mut Self {
        self.field(key, format!("0x{value:0width$x}"))
    }

    pub fn string(&mut self, key: &str, value: &str) -> &mut Self {
        assert!(!value.contains('\n'), "strings in vectors are single-line");
        self.field(key, format!("\"{value}\""))
    }

    /// Hex bytes; each part starts on its own line and is wrapped at 16 bytes, in groups of 4.
    pub fn hex_parts(&mut self, key: &str, parts: &[&[u8]]) -> &mut Self {
        let mut lines: Vec<String> = Vec::new();
        for part in parts {
            if part.is_empty() {
                continue;
            }
            for row in part.chunks(16) {
                let groups: Vec<String> = row.chunks(4).map(hex::encode).collect();
                lines.push(groups.join(" "));
            }
        }
        match lines.split_first() {
            None => {
                let _ = writeln!(self.text, "{key}:");
            }
            Some((first, rest)) => {
                let _ = writeln!(self.text, "{key}: {first}");
                for line in rest {
                    let _ = writeln!(self.text, "  {line}");
                }
            }
        }
        self
    }

    pub fn hex(&mut self, key: &str, bytes: &[u8]) -> &mut Self {
        self.hex_parts(key, &[bytes])
    }

    /// A frame: header on the first line, body below.
    pub fn frame(&mut self, key: &str, bytes: &[u8]) -> &mut Self {
        let split = bytes.len().min(12);
        self.hex_parts(key, &[&bytes[..split], &bytes[split..]])
    }
}
