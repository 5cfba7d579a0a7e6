//! The primitives every part of the codec reads and writes with: the body cursor that
//! turns a short read into `Truncated`, and length-prefixed strings. Apart from
//! decode.rs and encode.rs because the property section (properties.rs) uses them too,
//! and the decoders and encoders use the property section.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::error::check_topic_name;
use super::{Error, MAX_STRING_LEN};

/// A cursor over a packet body that turns every short read into `Truncated`.
pub(super) struct Reader {
    pub(super) packet: &'static str,
    pub(super) body: Bytes,
}

impl Reader {
    pub(super) fn u8(&mut self) -> Result<u8, Error> {
        if self.body.is_empty() {
            return Err(Error::Truncated(self.packet));
        }
        Ok(self.body.get_u8())
    }

    pub(super) fn u16(&mut self) -> Result<u16, Error> {
        if self.body.len() < 2 {
            return Err(Error::Truncated(self.packet));
        }
        Ok(self.body.get_u16())
    }

    pub(super) fn u32(&mut self) -> Result<u32, Error> {
        if self.body.len() < 4 {
            return Err(Error::Truncated(self.packet));
        }
        Ok(self.body.get_u32())
    }

    /// A Variable Byte Integer (spec 1.5.5) in its shortest form [MQTT-1.5.5-1].
    pub(super) fn variable_byte_integer(&mut self, what: &'static str) -> Result<u32, Error> {
        let mut value: u32 = 0;
        for i in 0..4 {
            let byte = self.u8()?;
            value |= u32::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                // A last byte of 0 after the first means a padded, non-minimal encoding.
                if i > 0 && byte == 0 {
                    return Err(Error::MalformedVariableByteInteger(what));
                }
                return Ok(value);
            }
        }
        Err(Error::MalformedVariableByteInteger(what))
    }

    /// Splits off the next `len` bytes as a reader of their own (a property section).
    pub(super) fn sub_reader(&mut self, len: usize) -> Result<Reader, Error> {
        if self.body.len() < len {
            return Err(Error::Truncated(self.packet));
        }
        Ok(Reader {
            packet: self.packet,
            body: self.body.split_to(len),
        })
    }

    pub(super) fn binary(&mut self) -> Result<Bytes, Error> {
        let len = usize::from(self.u16()?);
        if self.body.len() < len {
            return Err(Error::Truncated(self.packet));
        }
        Ok(self.body.split_to(len))
    }

    /// A length-prefixed UTF-8 string without U+0000 [MQTT-1.5.3-2]; `what` names the
    /// field for the error message.
    pub(super) fn string(&mut self, what: &'static str) -> Result<ByteString, Error> {
        let raw = self.binary()?;
        let text = ByteString::try_from(raw).map_err(|_| Error::InvalidUtf8(what))?;
        if text.contains('\0') {
            return Err(Error::NullCharacter(what));
        }
        Ok(text)
    }

    /// A topic name: a string as [`Reader::string`] reads it that also passes the topic
    /// name rules. Those cover U+0000 too, so the name is scanned for it only once.
    pub(super) fn topic_name(&mut self, what: &'static str) -> Result<ByteString, Error> {
        topic_name_from(self.binary()?, what)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    pub(super) fn finish(self) -> Result<(), Error> {
        if self.body.is_empty() {
            Ok(())
        } else {
            Err(Error::TrailingBytes {
                packet: self.packet,
                extra: self.body.len(),
            })
        }
    }
}

/// Checks raw bytes as a topic name (UTF-8, then the topic name rules, which cover
/// U+0000 too, so the name is scanned for it only once).
#[inline]
pub(super) fn topic_name_from(raw: Bytes, what: &'static str) -> Result<ByteString, Error> {
    let text = ByteString::try_from(raw).map_err(|_| Error::InvalidUtf8(what))?;
    check_topic_name(&text, what)?;
    Ok(text)
}

pub(super) fn string_len(what: &'static str, s: &[u8]) -> Result<usize, Error> {
    if s.len() > MAX_STRING_LEN {
        Err(Error::StringTooLong(what))
    } else {
        Ok(2 + s.len())
    }
}

pub(super) fn put_string(dst: &mut BytesMut, s: &[u8]) {
    // Lengths were checked by `string_len` before the header was written.
    dst.put_u16(s.len() as u16);
    dst.put_slice(s);
}
