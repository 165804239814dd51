//! MessagePack written by hand into a frame's buffer, for the hot paths that encode borrowed
//! parts rather than build an owned message first. Each function writes the smallest form, as
//! `rmp` does, so a value packed here is byte for byte what `rmp_serde` writes for the same
//! message (the tests of [`crate::message::http`] check that).

use bytes::{BufMut, BytesMut};

/// A string: its marker, its length and its bytes.
pub(crate) fn str(buf: &mut BytesMut, s: &str) {
    let len = s.len();
    if len < 32 {
        buf.put_u8(0xa0 | len as u8);
    } else if len <= 0xff {
        buf.put_slice(&[0xd9, len as u8]);
    } else if len <= 0xffff {
        buf.put_u8(0xda);
        buf.put_u16(len as u16);
    } else {
        buf.put_u8(0xdb);
        buf.put_u32(len as u32);
    }
    buf.put_slice(s.as_bytes());
}

/// A field name (shorter than 32 bytes, as every field name is): its marker and its bytes in
/// one write. Inlined, the marker and the name are constants and the copy a few moves.
#[inline(always)]
pub(crate) fn key(buf: &mut BytesMut, name: &'static str) {
    let len = name.len();
    debug_assert!(len < 32, "field name {name:?} is 32 bytes or longer");
    let mut packed = [0u8; 32];
    packed[0] = 0xa0 | (len & 0x1f) as u8;
    packed[1..=len].copy_from_slice(name.as_bytes());
    buf.put_slice(&packed[..=len]);
}

/// A binary value: its marker, its length and its bytes.
pub(crate) fn bin(buf: &mut BytesMut, b: &[u8]) {
    let len = b.len();
    if len <= 0xff {
        buf.put_slice(&[0xc4, len as u8]);
    } else if len <= 0xffff {
        buf.put_u8(0xc5);
        buf.put_u16(len as u16);
    } else {
        buf.put_u8(0xc6);
        buf.put_u32(len as u32);
    }
    buf.put_slice(b);
}

/// The head of an array of `len` elements.
pub(crate) fn array_len(buf: &mut BytesMut, len: usize) {
    container_len(buf, len, 0x90, 0xdc);
}

/// The head of a map of `len` pairs.
pub(crate) fn map_len(buf: &mut BytesMut, len: usize) {
    container_len(buf, len, 0x80, 0xde);
}

fn container_len(buf: &mut BytesMut, len: usize, fix: u8, wide: u8) {
    if len < 16 {
        buf.put_u8(fix | len as u8);
    } else if len <= 0xffff {
        buf.put_u8(wide);
        buf.put_u16(len as u16);
    } else {
        buf.put_u8(wide + 1);
        buf.put_u32(len as u32);
    }
}

/// An unsigned integer in its smallest form.
pub(crate) fn uint(buf: &mut BytesMut, v: u64) {
    if v < 128 {
        buf.put_u8(v as u8);
    } else if v <= 0xff {
        buf.put_slice(&[0xcc, v as u8]);
    } else if v <= 0xffff {
        buf.put_u8(0xcd);
        buf.put_u16(v as u16);
    } else if v <= 0xffff_ffff {
        buf.put_u8(0xce);
        buf.put_u32(v as u32);
    } else {
        buf.put_u8(0xcf);
        buf.put_u64(v);
    }
}

/// `true` or `false`.
pub(crate) fn bool(buf: &mut BytesMut, v: bool) {
    buf.put_u8(if v { 0xc3 } else { 0xc2 });
}

/// A reader for the usual shape of a hot message, in place: each read returns `None` on
/// anything unexpected, and the caller then decodes the message with `rmp_serde`, which
/// accepts every form and names what is wrong. So this reader only has to be right about what
/// it accepts, never about errors.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    /// Whether every byte has been read.
    pub(crate) fn at_end(&self) -> bool {
        self.pos == self.buf.len()
    }

    fn byte(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn be(&mut self, n: usize) -> Option<usize> {
        let bytes = self.buf.get(self.pos..self.pos + n)?;
        self.pos += n;
        Some(
            bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b)),
        )
    }

    fn bytes(&mut self, len: usize) -> Option<(usize, usize)> {
        let start = self.pos;
        let end = start.checked_add(len).filter(|&e| e <= self.buf.len())?;
        self.pos = end;
        Some((start, end))
    }

    /// Takes a nil if one is next.
    pub(crate) fn nil(&mut self) -> bool {
        let nil = self.buf.get(self.pos) == Some(&0xc0);
        self.pos += usize::from(nil);
        nil
    }

    pub(crate) fn map_len(&mut self) -> Option<usize> {
        match self.byte()? {
            b @ 0x80..=0x8f => Some(usize::from(b & 0x0f)),
            0xde => self.be(2),
            0xdf => self.be(4),
            _ => None,
        }
    }

    pub(crate) fn array_len(&mut self) -> Option<usize> {
        match self.byte()? {
            b @ 0x90..=0x9f => Some(usize::from(b & 0x0f)),
            0xdc => self.be(2),
            0xdd => self.be(4),
            _ => None,
        }
    }

    /// A string's byte range in the buffer (its UTF-8 not checked).
    pub(crate) fn str_range(&mut self) -> Option<(usize, usize)> {
        let len = match self.byte()? {
            b @ 0xa0..=0xbf => usize::from(b & 0x1f),
            0xd9 => self.be(1)?,
            0xda => self.be(2)?,
            0xdb => self.be(4)?,
            _ => return None,
        };
        self.bytes(len)
    }

    /// A string's bytes, its UTF-8 not checked: a field name compared with known ones, or text
    /// its caller checks.
    pub(crate) fn str_bytes(&mut self) -> Option<&'a [u8]> {
        let (start, end) = self.str_range()?;
        Some(&self.buf[start..end])
    }

    pub(crate) fn str(&mut self) -> Option<&'a str> {
        let (start, end) = self.str_range()?;
        std::str::from_utf8(&self.buf[start..end]).ok()
    }

    /// A binary value's (or a string's) byte range in the buffer.
    pub(crate) fn bin_range(&mut self) -> Option<(usize, usize)> {
        let len = match self.buf.get(self.pos)? {
            0xc4 => {
                self.pos += 1;
                self.be(1)?
            }
            0xc5 => {
                self.pos += 1;
                self.be(2)?
            }
            0xc6 => {
                self.pos += 1;
                self.be(4)?
            }
            _ => return self.str_range(),
        };
        self.bytes(len)
    }

    /// One whole value's byte range in the buffer, whatever its type, for a value kept as raw
    /// MessagePack. It must be well formed and nest at most `limit` levels.
    pub(crate) fn value_range(&mut self, limit: usize) -> Option<(usize, usize)> {
        let start = self.pos;
        let end = crate::envelope::value_end(self.buf, start, limit).ok()?;
        self.pos = end;
        Some((start, end))
    }

    pub(crate) fn uint(&mut self) -> Option<u64> {
        match self.byte()? {
            b @ 0x00..=0x7f => Some(u64::from(b)),
            0xcc => self.be(1).map(|v| v as u64),
            0xcd => self.be(2).map(|v| v as u64),
            0xce => self.be(4).map(|v| v as u64),
            0xcf => {
                let bytes = self.buf.get(self.pos..self.pos + 8)?;
                self.pos += 8;
                Some(u64::from_be_bytes(bytes.try_into().ok()?))
            }
            _ => None,
        }
    }

    pub(crate) fn bool(&mut self) -> Option<bool> {
        match self.byte()? {
            0xc2 => Some(false),
            0xc3 => Some(true),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packed(f: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
        let mut buf = BytesMut::new();
        f(&mut buf);
        buf.to_vec()
    }

    fn rmp(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut buf = Vec::new();
        f(&mut buf);
        buf
    }

    #[test]
    fn a_field_name_packs_as_a_string_does() {
        const NAMES: [&str; 4] = [
            "",
            "body",
            "deadline_unix_ms",
            "a_name_of_thirty_one_bytes_long",
        ];
        for name in NAMES {
            assert_eq!(packed(|b| key(b, name)), packed(|b| str(b, name)), "{name}");
        }
        assert_eq!(NAMES[3].len(), 31);
    }

    #[test]
    fn every_width_matches_what_rmp_writes() {
        for len in [0usize, 31, 32, 255, 256, 65_535, 65_536] {
            let s = "x".repeat(len);
            assert_eq!(
                packed(|b| str(b, &s)),
                rmp(|b| rmp::encode::write_str(b, &s).unwrap()),
                "str of {len}"
            );
            assert_eq!(
                packed(|b| bin(b, s.as_bytes())),
                rmp(|b| rmp::encode::write_bin(b, s.as_bytes()).unwrap()),
                "bin of {len}"
            );
            assert_eq!(
                packed(|b| array_len(b, len)),
                rmp(|b| {
                    rmp::encode::write_array_len(b, len as u32).unwrap();
                }),
                "array of {len}"
            );
            assert_eq!(
                packed(|b| map_len(b, len)),
                rmp(|b| {
                    rmp::encode::write_map_len(b, len as u32).unwrap();
                }),
                "map of {len}"
            );
        }
        for v in [
            0u64,
            127,
            128,
            255,
            256,
            65_535,
            65_536,
            u32::MAX as u64,
            u64::MAX,
        ] {
            assert_eq!(
                packed(|b| uint(b, v)),
                rmp(|b| {
                    rmp::encode::write_uint(b, v).unwrap();
                }),
                "uint {v}"
            );
        }
        assert_eq!(packed(|b| bool(b, true)), [0xc3]);
        assert_eq!(packed(|b| bool(b, false)), [0xc2]);
    }
}
