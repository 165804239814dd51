//! Framing: a 4-byte big-endian body length, then the body (one MessagePack value).
//!
//! The decoder checks the announced length against its limit before it reserves any memory for the
//! body, so a peer cannot make the receiver allocate more than `max_len + 4` bytes for one frame.

use crate::envelope::Message;
use crate::error::DecodeError;
use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Default largest frame body, in bytes: 16 MiB.
pub const DEFAULT_MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// Size of the length prefix.
pub const HEADER_LEN: usize = 4;

/// Reads frames into [`Message`]s and writes frames already encoded by the `envelope` functions.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_len: usize,
}

impl FrameCodec {
    /// A codec that refuses frame bodies longer than `max_len` bytes.
    pub fn new(max_len: usize) -> Self {
        FrameCodec { max_len }
    }

    /// The largest accepted body length.
    pub fn max_len(&self) -> usize {
        self.max_len
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(DEFAULT_MAX_FRAME_LEN)
    }
}

/// Splits one frame body off the front of `src`, if a whole frame is buffered.
///
/// Returns `Ok(None)` when more bytes are needed (after reserving room for exactly the announced
/// frame), and an error for an oversized or empty frame without touching the body.
pub fn split_frame(src: &mut BytesMut, max_len: usize) -> Result<Option<Bytes>, DecodeError> {
    let Some(len) = announced_len(src) else {
        return Ok(None);
    };
    if len > max_len {
        return Err(DecodeError::FrameTooLarge { len, max: max_len });
    }
    if len == 0 {
        return Err(DecodeError::EmptyFrame);
    }
    let needed = HEADER_LEN + len;
    if src.len() < needed {
        src.reserve(needed - src.len());
        return Ok(None);
    }
    src.advance(HEADER_LEN);
    Ok(Some(src.split_to(len).freeze()))
}

impl Decoder for FrameCodec {
    type Item = Message;
    type Error = DecodeError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, DecodeError> {
        match split_frame(src, self.max_len)? {
            Some(body) => Message::decode(body).map(Some),
            None => Ok(None),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Message>, DecodeError> {
        match self.decode(src)? {
            Some(message) => Ok(Some(message)),
            None if src.is_empty() => Ok(None),
            None => Err(DecodeError::Truncated(src.len())),
        }
    }
}

/// Writes a frame produced by one of the `envelope::encode_*` functions (header included).
impl Encoder<Bytes> for FrameCodec {
    type Error = std::io::Error;

    fn encode(&mut self, frame: Bytes, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        dst.extend_from_slice(&frame);
        Ok(())
    }
}

/// Whether `src` holds a whole frame, so the next one can be decoded without reading the
/// socket again.
pub fn frame_buffered(src: &[u8]) -> bool {
    announced_len(src).is_some_and(|len| src.len() - HEADER_LEN >= len)
}

/// The body length the frame at the front of `src` announces, once its header is buffered.
fn announced_len(src: &[u8]) -> Option<usize> {
    let header: [u8; HEADER_LEN] = src.get(..HEADER_LEN)?.try_into().ok()?;
    Some(u32::from_be_bytes(header) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_frame_is_refused_before_the_body_is_reserved() {
        let mut src = BytesMut::from(&[0x00, 0x10, 0x00, 0x01][..]);
        let before = src.capacity();
        let err = split_frame(&mut src, 1024).expect_err("must refuse");
        assert!(matches!(
            err,
            DecodeError::FrameTooLarge {
                len: 1_048_577,
                max: 1024
            }
        ));
        assert_eq!(
            src.capacity(),
            before,
            "no memory reserved for a refused frame"
        );
    }

    #[test]
    fn partial_frame_waits_for_more_bytes() {
        let mut src = BytesMut::from(&[0, 0, 0, 3, 0x91][..]);
        assert!(split_frame(&mut src, 1024).expect("ok").is_none());
        src.extend_from_slice(&[0x01, 0x02]);
        let body = split_frame(&mut src, 1024)
            .expect("ok")
            .expect("whole frame");
        assert_eq!(&body[..], &[0x91, 0x01, 0x02]);
        assert!(src.is_empty());
    }

    #[test]
    fn empty_frame_is_an_error() {
        let mut src = BytesMut::from(&[0, 0, 0, 0][..]);
        assert!(matches!(
            split_frame(&mut src, 8),
            Err(DecodeError::EmptyFrame)
        ));
    }

    #[test]
    fn eof_in_the_middle_of_a_frame_is_reported() {
        let mut codec = FrameCodec::new(64);
        let mut src = BytesMut::from(&[0, 0, 0, 9, 1, 2][..]);
        assert!(matches!(
            codec.decode_eof(&mut src),
            Err(DecodeError::Truncated(6))
        ));
    }
}
