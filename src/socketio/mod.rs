//! Socket.IO v5, without I/O: packets, binary reassembly, and the rules
//! for namespaces. Imports no actix, tokio or networking crate.

pub mod packet;

use bytes::Bytes;
use bytestring::ByteString;

pub use packet::{Data, DecodeLimits, Packet, PacketType, ParseError, MAIN_NAMESPACE};

/// A complete packet with its binary attachments, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The packet.
    pub packet: Packet,
    /// Its attachments (`packet.attachments` of them).
    pub attachments: Vec<Bytes>,
}

/// Turns the Engine.IO messages of one connection into Socket.IO packets,
/// collecting the binary attachments that follow a BINARY_EVENT/BINARY_ACK
/// (socket.io-parser `Decoder` / `BinaryReconstructor`).
#[derive(Debug)]
pub struct Decoder {
    limits: DecodeLimits,
    /// A binary packet waiting for its attachments (boxed: every
    /// connection has a decoder, few have a packet under way).
    pending: Option<Box<Message>>,
}

impl Decoder {
    /// A decoder with these limits.
    pub fn new(limits: DecodeLimits) -> Self {
        Self { limits, pending: None }
    }

    /// A text message. Complete unless it announces attachments. The
    /// packet's payload is a slice of `s`.
    pub fn text(&mut self, s: &ByteString) -> Result<Option<Message>, ParseError> {
        if self.pending.is_some() {
            return Err(ParseError::UnexpectedText);
        }
        let mut packet = packet::decode(s, &self.limits)?;
        if packet.kind.is_binary() {
            if let Some(data) = &packet.data {
                packet::check_placeholders(data.text(), packet.attachments)?;
            }
            if packet.attachments > 0 {
                // Held until the attachments arrive: not in the read buffer.
                packet.data = packet.data.map(packet::Data::detached);
                let attachments = Vec::with_capacity(packet.attachments);
                self.pending = Some(Box::new(Message { packet, attachments }));
                return Ok(None);
            }
        }
        Ok(Some(Message {
            packet,
            attachments: Vec::new(),
        }))
    }

    /// A binary message: the next attachment of the pending packet.
    pub fn binary(&mut self, data: Bytes) -> Result<Option<Message>, ParseError> {
        let pending = self.pending.as_mut().ok_or(ParseError::UnexpectedBinary)?;
        let held: usize = pending.attachments.iter().map(Bytes::len).sum();
        if held + data.len() > self.limits.max_attachment_bytes {
            self.pending = None;
            return Err(ParseError::AttachmentsTooLarge(self.limits.max_attachment_bytes));
        }
        pending.attachments.push(data);
        if pending.attachments.len() == pending.packet.attachments {
            return Ok(self.pending.take().map(|m| *m));
        }
        Ok(None)
    }

    /// Bytes of attachments held for the pending packet.
    pub fn held_bytes(&self) -> usize {
        self.pending
            .as_ref()
            .map_or(0, |p| p.attachments.iter().map(Bytes::len).sum())
    }

    /// Lets go of the pending packet's attachments but keeps counting them:
    /// the packet is refused when it completes (a rate limit refused part
    /// of it), so its bytes need not be held until then.
    pub fn strip(&mut self) {
        if let Some(pending) = &mut self.pending {
            for a in &mut pending.attachments {
                *a = Bytes::new();
            }
        }
    }

    /// Whether attachments are awaited.
    pub fn is_waiting(&self) -> bool {
        self.pending.is_some()
    }
}

/// Whether a configured namespace name is acceptable: starts with `/`, has
/// no comma (the comma ends a namespace on the wire) and no control
/// characters.
pub fn is_valid_namespace(name: &str) -> bool {
    name.starts_with('/') && !name.contains(',') && !name.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoder() -> Decoder {
        Decoder::new(DecodeLimits {
            max_attachments: 4,
            max_namespace_len: 64,
            max_attachment_bytes: 1000,
        })
    }

    #[test]
    fn binary_event_collects_its_attachments() {
        let mut d = decoder();
        let head = r#"52-["message",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#;
        assert_eq!(d.text(&head.into()), Ok(None));
        assert!(d.is_waiting());
        assert_eq!(d.binary(Bytes::from_static(&[1, 2, 3])), Ok(None));
        let m = d.binary(Bytes::from_static(&[4, 5, 6])).unwrap().unwrap();
        assert_eq!(m.attachments.len(), 2);
        assert_eq!(m.packet.kind, PacketType::BinaryEvent);
        assert!(!d.is_waiting());
    }

    #[test]
    fn attachments_are_bounded_in_all() {
        let mut d = decoder();
        assert!(d
            .text(&r#"52-["e",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#.into())
            .unwrap()
            .is_none());
        assert!(d.binary(Bytes::from(vec![0u8; 600])).unwrap().is_none());
        assert_eq!(
            d.binary(Bytes::from(vec![0u8; 401])),
            Err(ParseError::AttachmentsTooLarge(1000))
        );
        assert!(!d.is_waiting());
    }

    #[test]
    fn stripped_attachments_are_counted_but_not_held() {
        let mut d = decoder();
        let head = r#"52-["m",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#;
        assert_eq!(d.text(&head.into()), Ok(None));
        assert_eq!(d.binary(Bytes::from(vec![7u8; 300])), Ok(None));
        assert_eq!(d.held_bytes(), 300);
        d.strip();
        assert_eq!(d.held_bytes(), 0);
        let m = d.binary(Bytes::new()).unwrap().unwrap();
        assert_eq!(m.attachments.len(), 2);
        assert_eq!(d.held_bytes(), 0);
    }

    #[test]
    fn out_of_order_text_or_binary_is_an_error() {
        let mut d = decoder();
        assert_eq!(d.binary(Bytes::from_static(&[1])), Err(ParseError::UnexpectedBinary));
        d.text(&r#"51-["m",{"_placeholder":true,"num":0}]"#.into()).unwrap();
        assert_eq!(d.text(&r#"2["m"]"#.into()), Err(ParseError::UnexpectedText));
        let mut d = decoder();
        assert_eq!(
            d.text(&r#"51-["m",{"_placeholder":true,"num":1}]"#.into()),
            Err(ParseError::InvalidPlaceholder)
        );
    }

    #[test]
    fn namespace_names() {
        assert!(is_valid_namespace("/"));
        assert!(is_valid_namespace("/custom"));
        assert!(!is_valid_namespace("custom"));
        assert!(!is_valid_namespace("/a,b"));
    }
}
