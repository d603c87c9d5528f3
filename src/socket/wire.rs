//! How an [`Event`] is written on a stream: the protobuf encoding of `NodeEvent` (and of
//! `NodeEventBatch`, [`EventBatch`]), written by hand for `data` so that nothing is copied
//! into a `SocketData` first, byte for byte what prost writes for the same message (the tests
//! below decode it with prost). Only ever encoded: the node never reads events.

use bytes::{Buf, BufMut};
use prost::{
    DecodeError, Message,
    encoding::{self, DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint, key_len},
};

use super::event::{Data, Event, Kind};

/// `NodeEvent` field numbers.
const DATA: u32 = 3;
const EVENT_SEQ: u32 = 6;
const REDELIVERED: u32 = 7;
/// `SocketData` field numbers.
const SOCKET_ID: u32 = 1;
const SEQ: u32 = 2;
const PAYLOAD: u32 = 3;
const LABELS: u32 = 4;
/// `NodeEventBatch.events`.
const EVENTS: u32 = 1;

/// `merge_field` for a message the node only writes, never reads: it skips the field.
macro_rules! write_only {
    () => {
        fn merge_field(
            &mut self,
            tag: u32,
            wire_type: WireType,
            buf: &mut impl Buf,
            ctx: DecodeContext,
        ) -> Result<(), DecodeError> {
            encoding::skip_field(wire_type, tag, buf, ctx)
        }
    };
}

impl Data {
    /// The encoded length of the `SocketData` message, without its key and length.
    fn body_len(&self) -> usize {
        let mut len = 0;
        if !self.socket_id.is_empty() {
            len += key_len(SOCKET_ID) + encoded_len_varint(self.socket_id.len() as u64) + self.socket_id.len();
        }
        if self.seq != 0 {
            len += encoding::uint64::encoded_len(SEQ, &self.seq);
        }
        if !self.payload.is_empty() {
            len += encoding::bytes::encoded_len(PAYLOAD, &self.payload);
        }
        if let Some(labels) = &self.labels {
            len += encoding::hash_map::encoded_len(
                encoding::string::encoded_len,
                encoding::string::encoded_len,
                LABELS,
                labels,
            );
        }
        len
    }

    fn encode_body(&self, buf: &mut impl BufMut) {
        if !self.socket_id.is_empty() {
            encode_key(SOCKET_ID, WireType::LengthDelimited, buf);
            encode_varint(self.socket_id.len() as u64, buf);
            buf.put_slice(self.socket_id.as_bytes());
        }
        if self.seq != 0 {
            encoding::uint64::encode(SEQ, &self.seq, buf);
        }
        if !self.payload.is_empty() {
            encoding::bytes::encode(PAYLOAD, &self.payload, buf);
        }
        if let Some(labels) = &self.labels {
            encoding::hash_map::encode(
                encoding::string::encode,
                encoding::string::encoded_len,
                encoding::string::encode,
                encoding::string::encoded_len,
                LABELS,
                labels,
                buf,
            );
        }
    }
}

impl Message for Event {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match &self.kind {
            Kind::Data(data) => {
                encode_key(DATA, WireType::LengthDelimited, buf);
                encode_varint(data.body_len() as u64, buf);
                data.encode_body(buf);
            }
            Kind::Other(event) => event.encode(buf),
        }
        if self.event_seq != 0 {
            encoding::uint64::encode(EVENT_SEQ, &self.event_seq, buf);
        }
        if self.redelivered {
            encoding::bool::encode(REDELIVERED, &self.redelivered, buf);
        }
    }

    fn encoded_len(&self) -> usize {
        let event = match &self.kind {
            Kind::Data(data) => {
                let body = data.body_len();
                key_len(DATA) + encoded_len_varint(body as u64) + body
            }
            Kind::Other(event) => event.encoded_len(),
        };
        let seq = if self.event_seq != 0 { encoding::uint64::encoded_len(EVENT_SEQ, &self.event_seq) } else { 0 };
        event + seq + if self.redelivered { encoding::bool::encoded_len(REDELIVERED, &true) } else { 0 }
    }

    write_only!();

    fn clear(&mut self) {
        *self = Self { kind: Kind::Data(Data::default()), event_seq: 0, redelivered: false };
    }
}

/// `NodeEventBatch`: the events of one `ConnectBatch` message.
#[derive(Debug, Default)]
pub struct EventBatch {
    /// `events`, in stream order.
    pub events: Vec<Event>,
}

impl Message for EventBatch {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for event in &self.events {
            encoding::message::encode(EVENTS, event, buf);
        }
    }

    fn encoded_len(&self) -> usize {
        self.events.iter().map(|e| encoding::message::encoded_len(EVENTS, e)).sum()
    }

    write_only!();

    fn clear(&mut self) {
        self.events.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::{
        proto::{CommandResult, NodeEvent, NodeEventBatch},
        socket::{CloseReason, Labels, event},
    };

    fn data(labels: Option<Labels>, seq: u64, payload: &'static [u8]) -> Event {
        let data = Data {
            socket_id: "0190a1b2-0000-7000-8000-000000000001".into(),
            seq,
            payload: Bytes::from_static(payload),
            labels: labels.map(Arc::new),
        };
        Event { kind: Kind::Data(data), event_seq: 0, redelivered: false }
    }

    fn events() -> Vec<Event> {
        let labels: Labels = [("user".to_owned(), "ada".to_owned()), ("room".to_owned(), "é".to_owned())].into();
        let mut all = vec![
            data(None, 1, b"hello"),
            data(Some(labels), 2, b""),
            data(Some(Labels::new()), 0, b"x"),
            event::closed("0190a1b2-0000-7000-8000-000000000001", CloseReason::Idle),
            Event::result(CommandResult { command_id: "c-1".into(), status: 1, detail: String::new() }),
        ];
        for (i, e) in all.iter_mut().enumerate() {
            e.event_seq = [0, 1, 300, u64::MAX, 7][i];
            e.redelivered = i % 2 == 1;
        }
        all
    }

    #[test]
    fn an_event_is_written_as_prost_writes_its_node_event() {
        for event in events() {
            let proto = event.to_proto();
            let bytes = event.encode_to_vec();
            assert_eq!(bytes.len(), event.encoded_len(), "{event:?}");
            assert_eq!(NodeEvent::decode(&bytes[..]).unwrap(), proto);
            if event.kind_has_one_label_at_most() {
                assert_eq!(bytes, proto.encode_to_vec(), "byte for byte: {event:?}");
            }
        }
    }

    #[test]
    fn a_batch_is_written_as_prost_writes_its_node_event_batch() {
        let batch = EventBatch { events: events() };
        let bytes = batch.encode_to_vec();
        assert_eq!(bytes.len(), batch.encoded_len());
        let proto = NodeEventBatch { events: batch.events.iter().map(Event::to_proto).collect() };
        assert_eq!(NodeEventBatch::decode(&bytes[..]).unwrap(), proto);
    }

    impl Event {
        /// Maps of two or more entries are written in the map's order, which a copied map need
        /// not keep: only compare bytes without them.
        fn kind_has_one_label_at_most(&self) -> bool {
            !matches!(&self.kind, Kind::Data(d) if d.labels.as_ref().is_some_and(|l| l.len() > 1))
        }
    }
}
