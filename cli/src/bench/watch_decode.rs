//! A watch response as `bench watch` needs it, decoded without building
//! the events: whether it is a creation or a cancellation, how many events
//! it carries, and the send time stamped at the start of each event's value.
//! kvstore's `WatchResponse` and etcd's share these field numbers, so one
//! decoder serves both, and the client's cost per event stays the same
//! whichever server is measured (it decoded every event fully before: half
//! of the machine's two cores went to the benchmark client).

use bytes::{Buf, BufMut};
use prost::encoding::{decode_key, decode_varint, skip_field, DecodeContext, WireType};
use prost::DecodeError;

use super::watch::STAMP_BYTES;

/// `WatchResponse` fields read.
const CREATED: u32 = 3;
const CANCELED: u32 = 4;
const CANCEL_REASON: u32 = 6;
const EVENTS: u32 = 11;
/// `Event.kv`, `KeyValue.value`.
const EVENT_KV: u32 = 2;
const KV_VALUE: u32 = 5;

/// What the bench reads of one watch response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiteWatchResponse {
    /// The watch was created.
    pub created: bool,
    /// The watch was cancelled.
    pub canceled: bool,
    /// Why.
    pub cancel_reason: String,
    /// Events in the response.
    pub events: u64,
    /// The stamp of each event whose value carries one.
    pub stamps: Vec<u64>,
}

/// The first field `wanted` (length-delimited) inside `message`, if any.
fn field(mut message: &[u8], wanted: u32) -> Result<Option<&[u8]>, DecodeError> {
    while message.has_remaining() {
        let (tag, wire_type) = decode_key(&mut message)?;
        if wire_type == WireType::LengthDelimited {
            let length = decode_varint(&mut message)? as usize;
            let Some((inner, rest)) = message.split_at_checked(length) else {
                // Cut short: nothing to read there.
                return Ok(None);
            };
            if tag == wanted {
                return Ok(Some(inner));
            }
            message = rest;
        } else {
            skip_field(wire_type, tag, &mut message, DecodeContext::default())?;
        }
    }
    Ok(None)
}

impl prost::Message for LiteWatchResponse {
    fn encode_raw(&self, _buf: &mut impl BufMut) {
        // Only ever decoded (a response of the server).
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match (tag, wire_type) {
            (CREATED, WireType::Varint) => self.created = decode_varint(buf)? != 0,
            (CANCELED, WireType::Varint) => self.canceled = decode_varint(buf)? != 0,
            (CANCEL_REASON, WireType::LengthDelimited) => {
                prost::encoding::string::merge(wire_type, &mut self.cancel_reason, buf, ctx)?
            }
            (EVENTS, WireType::LengthDelimited) => {
                let mut event = bytes::Bytes::new();
                prost::encoding::bytes::merge(wire_type, &mut event, buf, ctx)?;
                self.events += 1;
                let value = field(&event, EVENT_KV)?
                    .map(|kv| field(kv, KV_VALUE))
                    .transpose()?
                    .flatten();
                if let Some(stamp) = value.and_then(|value| value.get(..STAMP_BYTES)) {
                    self.stamps
                        .push(u64::from_be_bytes(stamp.try_into().expect("8 bytes")));
                }
            }
            _ => skip_field(wire_type, tag, buf, ctx)?,
        }
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        0
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use kvstore_proto::kv::v1 as pb;
    use prost::Message;

    use super::*;

    #[test]
    fn reads_what_the_full_message_holds() {
        let mut value = 1_234_567_u64.to_be_bytes().to_vec();
        value.extend_from_slice(b"rest of the value");
        let event = |value: Vec<u8>| pb::Event {
            r#type: pb::EventType::Put as i32,
            kv: Some(pb::KeyValue {
                key: b"k".to_vec(),
                value,
                mod_revision: 9,
                ..pb::KeyValue::default()
            }),
            prev_kv: None,
        };
        let full = pb::WatchResponse {
            watch_id: 3,
            created: true,
            cancel_reason: "why".into(),
            events: vec![event(value), event(b"short".to_vec())],
            ..pb::WatchResponse::default()
        };
        let lite = LiteWatchResponse::decode(full.encode_to_vec().as_slice()).unwrap();
        assert!(lite.created && !lite.canceled);
        assert_eq!(lite.cancel_reason, "why");
        assert_eq!(lite.events, 2);
        assert_eq!(lite.stamps, vec![1_234_567]);
    }
}
