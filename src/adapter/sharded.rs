//! The sharded variant of `@socket.io/redis-adapter` 8.x
//! (`createShardedAdapter`, on Redis 7 sharded pub/sub), without I/O.
//!
//! Every channel is used with `SSUBSCRIBE` / `SPUBLISH`, so on a Redis
//! Cluster each one lives on the shard that owns its slot:
//!
//! | channel | subscribed by | published there |
//! |---|---|---|
//! | `{key}#{nsp}#` | every node | broadcasts, requests |
//! | `{key}#{nsp}#{uid}#` | the node `uid` | answers to that node's requests |
//! | `{key}#{nsp}#{room}#` | dynamic mode: the nodes with local members of `room` | a broadcast to exactly that room, without ack, unless the room looks like a socket id (20 UTF-16 units) |
//!
//! A message is one map `{type, data, uid, nsp}`: JSON, or msgpack of the
//! same map when `data` holds binary (a payload starting with `{` is JSON).
//! A broadcast's event arguments are JSON text ([`Broadcast::args`]): in a
//! JSON message they travel as that text, so roomcast nodes relay it as the
//! publisher wrote it; in msgpack they are transcoded as in the classic
//! format ([`wire::json_to_msgpack`], [`wire::msgpack_to_json`]).
//!
//! | type | `data` | this node |
//! |---|---|---|
//! | 3 BROADCAST | `{packet:{type:2,data,nsp}, opts:{rooms,except,flags}, requestId?}` | delivers it; with a `requestId` answers 11 `{requestId, clientCount:0}` (acks are not relayed) |
//! | 4 / 5 SOCKETS_JOIN / LEAVE | `{opts, rooms}` | applies it |
//! | 6 DISCONNECT_SOCKETS | `{opts, close}` | applies it |
//! | 7 FETCH_SOCKETS | `{opts, requestId}` | answers 8 `{requestId, sockets:[{id, handshake, rooms, data}]}` |
//! | 9 SERVER_SIDE_EMIT | `{packet, requestId?}` | no server-side listeners: with a `requestId` answers 10 `{requestId, packet:null}` |
//! | 8, 10, 11, 12 | answers | collected by the waiting request |
//! | 1, 2, 13 | heartbeats, adapter close | ignored (the sharded adapter sends none) |
//!
//! A node counts the members of the cluster with `PUBSUB SHARDNUMSUB
//! {key}#{nsp}#` (itself included). The sharded protocol has no room-list
//! request and the Redis emitter does not speak it.

use bytes::Bytes;
use rmpv::Value as Mp;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::requests::{self, Request};
use super::wire::{self, Broadcast, WireError};

/// Message types (`MessageType` of `socket.io-adapter`'s cluster adapter).
pub mod kind {
    /// A broadcast, with a `requestId` when acks are expected.
    pub const BROADCAST: u64 = 3;
    /// `socketsJoin`.
    pub const SOCKETS_JOIN: u64 = 4;
    /// `socketsLeave`.
    pub const SOCKETS_LEAVE: u64 = 5;
    /// `disconnectSockets`.
    pub const DISCONNECT_SOCKETS: u64 = 6;
    /// `fetchSockets`.
    pub const FETCH_SOCKETS: u64 = 7;
    /// Answer to 7.
    pub const FETCH_SOCKETS_RESPONSE: u64 = 8;
    /// `serverSideEmit`.
    pub const SERVER_SIDE_EMIT: u64 = 9;
    /// Answer to 9.
    pub const SERVER_SIDE_EMIT_RESPONSE: u64 = 10;
    /// Answer to a broadcast with ack: how many clients got it.
    pub const BROADCAST_CLIENT_COUNT: u64 = 11;
    /// One client's ack of a broadcast.
    pub const BROADCAST_ACK: u64 = 12;
}

/// The channel every node of a namespace subscribes to.
pub fn main_channel(key: &str, nsp: &str) -> String {
    format!("{key}#{nsp}#")
}

/// The channel of the answers to node `uid`.
pub fn response_channel(key: &str, nsp: &str, uid: &str) -> String {
    format!("{key}#{nsp}#{uid}#")
}

/// The channel of a public room (dynamic mode).
pub fn room_channel(key: &str, nsp: &str, room: &str) -> String {
    format!("{key}#{nsp}#{room}#")
}

/// The Node.js adapter's test for a socket id: 20 UTF-16 code units.
pub fn looks_like_socket_id(room: &str) -> bool {
    room.encode_utf16().count() == 20
}

/// Where a broadcast without ack is published.
pub fn broadcast_channel(key: &str, b: &Broadcast, dynamic: bool) -> String {
    match b.rooms.as_slice() {
        [room] if dynamic && !looks_like_socket_id(room) => room_channel(key, &b.nsp, room),
        _ => main_channel(key, &b.nsp),
    }
}

/// A message for the other nodes.
pub fn encode(kind: u64, uid: &str, nsp: &str, data: Value) -> Vec<u8> {
    json!({"type": kind, "data": data, "uid": uid, "nsp": nsp})
        .to_string()
        .into_bytes()
}

fn opts(rooms: &[String], except: &[String]) -> Value {
    json!({"rooms": rooms, "except": except, "flags": {}})
}

/// A broadcast: JSON, with the arguments' text as it is, or msgpack when it
/// carries binary (an error when the arguments cannot be msgpack).
pub fn encode_broadcast(b: &Broadcast) -> Result<Vec<u8>, WireError> {
    let strings = |v: &[String]| Mp::Array(v.iter().map(|s| Mp::from(s.as_str())).collect());
    if b.attachments.is_empty() {
        let mut out = Vec::with_capacity(b.args.len() + 128);
        // unwraps: writing to a Vec cannot fail, and strings and a Value
        // always serialize.
        let text = |out: &mut Vec<u8>, s: &str| serde_json::to_writer(out, s).unwrap();
        out.extend_from_slice(br#"{"type":3,"data":{"packet":{"type":2,"data":"#);
        out.extend_from_slice(b.args.as_bytes());
        out.extend_from_slice(br#","nsp":"#);
        text(&mut out, &b.nsp);
        out.extend_from_slice(br#"},"opts":"#);
        serde_json::to_writer(&mut out, &opts(&b.rooms, &b.except)).unwrap();
        out.extend_from_slice(br#"},"uid":"#);
        text(&mut out, &b.uid);
        out.extend_from_slice(br#","nsp":"#);
        text(&mut out, &b.nsp);
        out.push(b'}');
        return Ok(out);
    }
    let map = |entries: Vec<(&str, Mp)>| Mp::Map(entries.into_iter().map(|(k, v)| (Mp::from(k), v)).collect());
    let packet = map(vec![
        ("type", Mp::from(2)),
        ("data", wire::json_to_msgpack(&b.args, &b.attachments)?),
        ("nsp", Mp::from(b.nsp.as_str())),
    ]);
    let opts = map(vec![
        ("rooms", strings(&b.rooms)),
        ("except", strings(&b.except)),
        ("flags", Mp::Map(vec![])),
    ]);
    let envelope = map(vec![
        ("type", Mp::from(kind::BROADCAST)),
        ("data", map(vec![("packet", packet), ("opts", opts)])),
        ("uid", Mp::from(b.uid.as_str())),
        ("nsp", Mp::from(b.nsp.as_str())),
    ]);
    let mut out = Vec::with_capacity(64 + b.args.len());
    // unwrap: writing to a Vec cannot fail.
    rmpv::encode::write_value(&mut out, &envelope).unwrap();
    Ok(out)
}

/// A FETCH_SOCKETS request.
pub fn fetch_request(uid: &str, nsp: &str, request_id: &str, rooms: &[String], except: &[String]) -> Vec<u8> {
    let data = json!({"opts": opts(rooms, except), "requestId": request_id});
    encode(kind::FETCH_SOCKETS, uid, nsp, data)
}

/// A DISCONNECT_SOCKETS request.
pub fn disconnect_request(uid: &str, nsp: &str, rooms: &[String], close: bool) -> Vec<u8> {
    let data = json!({"opts": opts(rooms, &[]), "close": close});
    encode(kind::DISCONNECT_SOCKETS, uid, nsp, data)
}

/// A SOCKETS_JOIN (`join`) or SOCKETS_LEAVE request for the sockets `selection`.
pub fn membership_request(uid: &str, nsp: &str, selection: &[String], rooms: &[String], join: bool) -> Vec<u8> {
    let kind = if join { kind::SOCKETS_JOIN } else { kind::SOCKETS_LEAVE };
    encode(kind, uid, nsp, json!({"opts": opts(selection, &[]), "rooms": rooms}))
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A broadcast to deliver.
    Broadcast(Broadcast),
    /// A request to apply or answer (mapped onto the classic request kinds).
    Request(Request),
    /// An answer to a request: its `data`.
    Response(Value),
    /// A heartbeat or an adapter close: nothing to do.
    Ignored,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// Decodes a message of any node; `(sender uid, namespace, message)`.
pub fn decode(payload: &[u8]) -> Result<(String, String, Message), WireError> {
    if payload.first() == Some(&b'{') {
        let text = std::str::from_utf8(payload).map_err(|e| WireError::Json(e.to_string()))?;
        return decode_json(text, None);
    }
    let mut bytes = payload;
    let mut mp = rmpv::decode::read_value(&mut bytes).map_err(|e| WireError::Msgpack(e.to_string()))?;
    // The event's binary values become placeholders numbered from 0; the
    // rest of the map is read without them.
    let args = field_mut(&mut mp, &["data"]).and_then(take_args);
    decode_json(&wire::msgpack_to_json(&mp).0, args)
}

/// The envelope of a JSON message, its `data` unread.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    kind: Option<u64>,
    uid: Option<String>,
    nsp: Option<Value>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

/// The `data` of a BROADCAST, the event's arguments unread.
#[derive(Deserialize)]
struct BroadcastData<'a> {
    #[serde(borrow)]
    packet: Option<PacketData<'a>>,
    #[serde(default)]
    opts: Value,
    #[serde(rename = "requestId")]
    request_id: Option<Value>,
}

#[derive(Deserialize)]
struct PacketData<'a> {
    #[serde(rename = "type")]
    kind: Option<Value>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

/// Decodes a JSON message, or the JSON form of a msgpack one whose event
/// arguments (`args`: their text and attachments) were taken out.
fn decode_json(text: &str, args: Option<(String, Vec<Bytes>)>) -> Result<(String, String, Message), WireError> {
    let json = |e: serde_json::Error| WireError::Json(e.to_string());
    let envelope: Envelope = serde_json::from_str(text).map_err(json)?;
    let uid = envelope.uid.ok_or(WireError::Shape("no uid"))?;
    let nsp = envelope.nsp.as_ref().and_then(Value::as_str).unwrap_or("/").to_owned();
    let t = envelope.kind.ok_or(WireError::Shape("no type"))?;
    let raw = envelope.data.map_or("null", RawValue::get);
    let message = decode_data(&uid, &nsp, t, raw, args)?;
    Ok((uid, nsp, message))
}

/// The event's arguments of a msgpack BROADCAST, taken out of `data` (the
/// message's `data` map): their JSON text, placeholders numbered from 0,
/// and the attachments. The rest of `data` then reads as JSON without them.
pub(crate) fn take_args(data: &mut Mp) -> Option<(String, Vec<Bytes>)> {
    field_mut(data, &["packet", "data"]).map(|d| wire::msgpack_to_json(&std::mem::replace(d, Mp::Nil)))
}

/// Decodes the `data` (JSON text `raw`) of a message of type `t` from node
/// `uid` in `nsp`; `args` are a msgpack broadcast's arguments, taken out of
/// it ([`take_args`]). Shared with the streams adapter's protocol, whose
/// messages carry the same `data` ([`super::streams`]).
pub(crate) fn decode_data(
    uid: &str,
    nsp: &str,
    t: u64,
    raw: &str,
    args: Option<(String, Vec<Bytes>)>,
) -> Result<Message, WireError> {
    let json = |e: serde_json::Error| WireError::Json(e.to_string());
    let (uid, nsp) = (uid.to_owned(), nsp.to_owned());
    if t == kind::BROADCAST {
        let data: BroadcastData = serde_json::from_str(raw).map_err(json)?;
        let packet = data.packet.ok_or(WireError::Shape("not an EVENT packet"))?;
        if !matches!(packet.kind.as_ref().and_then(Value::as_u64), Some(2) | Some(5)) {
            return Err(WireError::Shape("not an EVENT packet"));
        }
        let (args, attachments) = match args {
            Some(args) => args,
            None => (packet.data.map_or("null", RawValue::get).to_owned(), vec![]),
        };
        if !starts_with_a_name(&args) {
            return Err(WireError::Shape("data is not [event, ...]"));
        }
        let (rooms, except) = (strings(&data.opts["rooms"]), strings(&data.opts["except"]));
        let b = Broadcast {
            uid: uid.clone(),
            nsp: nsp.clone(),
            args: args.into(),
            attachments,
            rooms: rooms.clone(),
            except: except.clone(),
        };
        let message = match data.request_id.as_ref().and_then(Value::as_str) {
            None => Message::Broadcast(b),
            Some(request_id) => Message::Request(Request {
                uid: Some(uid),
                request_id: Some(request_id.to_owned()),
                kind: requests::kind::BROADCAST,
                rooms,
                except,
                target_rooms: vec![],
                close: false,
                broadcast: Some(b),
            }),
        };
        return Ok(message);
    }
    let data: Value = serde_json::from_str(raw).map_err(json)?;
    let request_id = data["requestId"].as_str().map(str::to_owned);
    let request = |kind: u64| Request {
        uid: Some(uid.clone()),
        request_id: request_id.clone(),
        kind,
        rooms: strings(&data["opts"]["rooms"]),
        except: strings(&data["opts"]["except"]),
        target_rooms: strings(&data["rooms"]),
        close: data["close"].as_bool().unwrap_or(false),
        broadcast: None,
    };
    let message = match t {
        kind::SOCKETS_JOIN => Message::Request(request(requests::kind::REMOTE_JOIN)),
        kind::SOCKETS_LEAVE => Message::Request(request(requests::kind::REMOTE_LEAVE)),
        kind::DISCONNECT_SOCKETS => Message::Request(request(requests::kind::REMOTE_DISCONNECT)),
        kind::FETCH_SOCKETS => Message::Request(request(requests::kind::REMOTE_FETCH)),
        kind::SERVER_SIDE_EMIT => Message::Request(request(requests::kind::SERVER_SIDE_EMIT)),
        kind::FETCH_SOCKETS_RESPONSE
        | kind::SERVER_SIDE_EMIT_RESPONSE
        | kind::BROADCAST_CLIENT_COUNT
        | kind::BROADCAST_ACK => Message::Response(data.clone()),
        1 | 2 | 13 => Message::Ignored,
        _ => return Err(WireError::Shape("unknown message type")),
    };
    Ok(message)
}

/// Whether the JSON text `args` is an array whose first element is a
/// string (an event's name).
fn starts_with_a_name(args: &str) -> bool {
    use serde::de::{IgnoredAny, SeqAccess, Visitor};
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = bool;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an array")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
            let named = seq
                .next_element::<&RawValue>()?
                .is_some_and(|v| v.get().starts_with('"'));
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(named)
        }
    }
    let mut de = serde_json::Deserializer::from_str(args);
    serde::Deserializer::deserialize_seq(&mut de, V).unwrap_or(false) && de.end().is_ok()
}

/// The value at `path` in nested msgpack maps, to change.
fn field_mut<'a>(mut v: &'a mut Mp, path: &[&str]) -> Option<&'a mut Mp> {
    for key in path {
        v = match v {
            Mp::Map(entries) => entries
                .iter_mut()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v)?,
            _ => return None,
        };
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(attachments: Vec<Bytes>) -> Broadcast {
        let blob = if attachments.is_empty() {
            r#""text""#
        } else {
            r#"{"_placeholder":true,"num":0}"#
        };
        Broadcast {
            uid: "0123456789abcdef".into(),
            nsp: "/chat".into(),
            args: format!(r#"["news",{{"zeta":1,"blob":{blob},"alpha":[1.0,"é"]}}]"#).into(),
            attachments,
            rooms: vec!["lobby".into()],
            except: vec!["s1".into()],
        }
    }

    #[test]
    fn broadcasts_round_trip_as_json_and_as_msgpack() {
        // JSON: the arguments' text as it is.
        let plain = sample(vec![]);
        let bytes = encode_broadcast(&plain).unwrap();
        assert_eq!(bytes[0], b'{');
        let envelope: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            envelope,
            json!({"type": 3, "uid": plain.uid, "nsp": "/chat", "data": {
                "packet": {"type": 2, "nsp": "/chat", "data": ["news", {"zeta": 1, "blob": "text", "alpha": [1.0, "é"]}]},
                "opts": {"rooms": ["lobby"], "except": ["s1"], "flags": {}}}})
        );
        assert_eq!(
            decode(&bytes).unwrap(),
            (plain.uid.clone(), plain.nsp.clone(), Message::Broadcast(plain))
        );
        // msgpack: the same values, members in their order.
        let binary = sample(vec![Bytes::from_static(&[1, 2, 3])]);
        let bytes = encode_broadcast(&binary).unwrap();
        assert_ne!(bytes[0], b'{');
        let Message::Broadcast(got) = decode(&bytes).unwrap().2 else {
            panic!("not a broadcast")
        };
        assert_eq!(
            &*got.args,
            r#"["news",{"zeta":1,"blob":{"_placeholder":true,"num":0},"alpha":[1.0,"é"]}]"#
        );
        assert_eq!(got.attachments, binary.attachments);
        assert_eq!((got.rooms, got.except), (binary.rooms, binary.except));
        // A lone surrogate goes as JSON, not as msgpack.
        let mut odd = sample(vec![]);
        odd.args = r#"["news","\ud83d"]"#.into();
        let Message::Broadcast(got) = decode(&encode_broadcast(&odd).unwrap()).unwrap().2 else {
            panic!("not a broadcast")
        };
        assert_eq!(got.args, odd.args);
        odd.attachments = vec![Bytes::new()];
        assert!(matches!(encode_broadcast(&odd), Err(WireError::Unencodable(_))));
    }

    #[test]
    fn decodes_what_the_node_adapter_sends() {
        // As the sharded adapter of @socket.io/redis-adapter 8.3 publishes them.
        let broadcast = br#"{"type":3,"data":{"packet":{"type":2,"data":["hello","world"],"nsp":"/"},"opts":{"rooms":["room1"],"except":[],"flags":{}}},"uid":"5f0d3c1b2a4e6f70","nsp":"/"}"#;
        let (uid, _, Message::Broadcast(b)) = decode(broadcast).unwrap() else {
            panic!("not a broadcast")
        };
        assert_eq!(
            (uid.as_str(), b.rooms, &*b.args),
            ("5f0d3c1b2a4e6f70", vec!["room1".to_owned()], r#"["hello","world"]"#)
        );
        let fetch =
            br#"{"type":7,"data":{"opts":{"rooms":["room1"],"except":[]},"requestId":"abc"},"uid":"u1","nsp":"/"}"#;
        let (_, _, Message::Request(r)) = decode(fetch).unwrap() else {
            panic!("not a request")
        };
        assert_eq!(
            (r.kind, r.request_id.as_deref()),
            (requests::kind::REMOTE_FETCH, Some("abc"))
        );
        let join = br#"{"type":4,"data":{"opts":{"rooms":["a"],"except":["b"]},"rooms":["c"]},"uid":"u1","nsp":"/"}"#;
        let (_, _, Message::Request(r)) = decode(join).unwrap() else {
            panic!("not a request")
        };
        assert_eq!(
            (r.rooms, r.except, r.target_rooms),
            (vec!["a".to_owned()], vec!["b".to_owned()], vec!["c".to_owned()])
        );
        let ack = br#"{"type":3,"data":{"packet":{"type":2,"data":["q"],"nsp":"/"},"requestId":"r1","opts":{"rooms":[],"except":[],"flags":{"timeout":1000}}},"uid":"u1","nsp":"/"}"#;
        let (_, _, Message::Request(r)) = decode(ack).unwrap() else {
            panic!("not a request")
        };
        assert!(r.kind == requests::kind::BROADCAST && r.broadcast.is_some());
        let answer = br#"{"type":8,"data":{"requestId":"abc","sockets":[]},"uid":"u2","nsp":"/"}"#;
        assert!(matches!(decode(answer).unwrap().2, Message::Response(d) if d["requestId"] == "abc"));
    }

    #[test]
    fn room_channels_only_for_one_public_room_without_ack() {
        let mut b = sample(vec![]);
        assert_eq!(broadcast_channel("socket.io", &b, true), "socket.io#/chat#lobby#");
        assert_eq!(broadcast_channel("socket.io", &b, false), "socket.io#/chat#");
        b.rooms = vec!["aaaaaaaaaaaaaaaaaaaa".into()];
        assert_eq!(broadcast_channel("socket.io", &b, true), "socket.io#/chat#");
        b.rooms = vec!["a".into(), "b".into()];
        assert_eq!(broadcast_channel("socket.io", &b, true), "socket.io#/chat#");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b""[..],
            b"{",
            b"{}",
            &[0xc1],
            br#"{"type":3,"uid":"u","data":{}}"#,
            br#"{"type":99,"uid":"u"}"#,
            br#"{"type":3,"uid":"u","data":{"packet":{"type":2,"data":[1]}}}"#,
            br#"{"type":3,"uid":"u","data":{"packet":{"type":2,"data":{"a":"b"}}}}"#,
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
    }
}
