//! The gRPC contract between `cms-agent`, `cms-server` and the admin CLI,
//! generated from `proto/cms/v1/cms.proto` at build time.
//!
//! The catalog travels as its canonical JSON encoding (see `cms_roles::Catalog`)
//! inside [`v1::Catalog`], so that the agent can recompute its id and there is
//! one catalog schema, not two that could drift.

#![allow(clippy::large_enum_variant)]

/// Version 1 of the contract: package `cms.v1`.
pub mod v1 {
    tonic::include_proto!("cms.v1");
}

pub mod limits;
pub mod report;

/// How far before its issue the server starts every certificate it issues
/// (`notBefore` = issue time − this): 24 hours, so that a peer whose clock
/// is behind the server's by up to a day accepts a certificate it has just
/// received. The agent also reads the issue time back from `notBefore`
/// with it, to measure a certificate's life on its own clock.
pub const CERTIFICATE_BACKDATE_SECS: u64 = 24 * 60 * 60;
/// `IdentityDocument.kind` of an EC2 instance identity document: the
/// document as `/latest/dynamic/instance-identity/document` serves it and
/// its signature as `/latest/dynamic/instance-identity/signature` serves it
/// (base64 RSA-SHA256 over the document's bytes).
pub const AWS_INSTANCE_IDENTITY: &str = "aws-ec2-instance-identity";

/// The watch channel's wire format (see `WatchEvent` in `cms.proto`): one
/// place for the protocol name and the framing, used by the server that
/// writes events and the agent that reads them.
pub mod watch {
    use prost::Message as _;

    use crate::v1::WatchEvent;

    /// The ALPN protocol that asks for the watch channel instead of gRPC.
    pub const ALPN: &[u8] = b"cms-watch/1";

    /// The largest event a reader accepts. Events are a few dozen bytes; a
    /// length beyond this is a broken or hostile peer, not a big event.
    pub const MAX_EVENT_LEN: usize = 16 * 1024;

    /// One event as it goes on the wire: its length as 4 big-endian bytes,
    /// then the encoded message.
    pub fn encode_frame(event: &WatchEvent) -> Vec<u8> {
        let len = event.encoded_len();
        let mut frame = Vec::with_capacity(4 + len);
        frame.extend_from_slice(&(len as u32).to_be_bytes());
        event
            .encode(&mut frame)
            .expect("a Vec grows to fit the message");
        frame
    }

    /// The length announced by a frame's 4-byte header, or an error when it
    /// is more than `MAX_EVENT_LEN`.
    pub fn frame_len(header: [u8; 4]) -> Result<usize, String> {
        let len = u32::from_be_bytes(header) as usize;
        if len > MAX_EVENT_LEN {
            return Err(format!(
                "a watch event of {len} bytes announced, more than the {MAX_EVENT_LEN} allowed"
            ));
        }
        Ok(len)
    }

    /// Decodes a frame's body.
    pub fn decode_event(body: &[u8]) -> Result<WatchEvent, String> {
        WatchEvent::decode(body).map_err(|error| format!("a malformed watch event: {error}"))
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::v1::{ConvergeNow, watch_event::Event};

        #[test]
        fn a_frame_carries_its_length_then_the_event() {
            let event = WatchEvent {
                event: Some(Event::ConvergeNow(ConvergeNow {
                    trigger_id: "t-1".into(),
                    noop: true,
                })),
            };
            let frame = encode_frame(&event);
            let len = frame_len(frame[..4].try_into().unwrap()).unwrap();
            assert_eq!(len, frame.len() - 4);
            assert_eq!(decode_event(&frame[4..]).unwrap(), event);
        }

        #[test]
        fn an_oversized_length_is_refused_before_anything_is_read() {
            let error = frame_len((MAX_EVENT_LEN as u32 + 1).to_be_bytes()).unwrap_err();
            assert!(error.contains("more than the 16384 allowed"), "{error}");
            assert!(frame_len((MAX_EVENT_LEN as u32).to_be_bytes()).is_ok());
        }

        #[test]
        fn garbage_is_an_error_not_an_empty_event() {
            assert!(decode_event(&[0xff, 0xff, 0xff]).is_err());
        }
    }
}
