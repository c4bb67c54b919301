//! The protocol of `@socket.io/redis-streams-adapter` 0.3.1 (npm), without
//! I/O: its `lib/adapter.ts` and `lib/util.ts`, over the `ClusterAdapter`
//! of `socket.io-adapter` 2.5 (`lib/cluster-adapter.ts`), whose messages
//! `{type, data, uid, nsp}` and `data` shapes are the sharded adapter's
//! ([`sharded`]).
//!
//! | what | where | form |
//! |---|---|---|
//! | 3 BROADCAST (without ack), 4 SOCKETS_JOIN, 5 SOCKETS_LEAVE, 6 DISCONNECT_SOCKETS | `XADD <stream> MAXLEN ~ <maxLen> *` | fields `uid`, `nsp`, `type` (decimal text), `data`: JSON text, or base64 of msgpack when a BROADCAST's `data` holds binary ([`Entry`]) |
//! | 7 FETCH_SOCKETS, 9 SERVER_SIDE_EMIT, 3 BROADCAST with a `requestId` | `PUBLISH {prefix}#{nsp}#` | msgpack of the whole message ([`encode_message`]) |
//! | answers 8, 10, 11, 12 | `PUBLISH {prefix}#{nsp}#{requester uid}#` | the same |
//! | a recovery session | `SET {sessionKeyPrefix}{pid} <v> PX <ms>`, taken with `GETDEL` | `v` = base64 of msgpack `{sid, pid, rooms, data}` ([`encode_session`]) |
//!
//! Every node reads the stream of each of its namespaces with `XREAD` and
//! handles every entry (a node skips its own, except that roomcast delivers
//! its own broadcasts when they come back: see [`super::Sequenced`]); every
//! node subscribes to its namespaces' public channel and its private one.
//! The number of nodes is `PUBSUB NUMSUB {prefix}#{nsp}#`, the node that
//! asks included. A namespace's stream is `streamName`, or with `streamCount`
//! streams `streamName-<i>`, `i = hashCode(nsp) % streamCount` with the
//! adapter's (Java-style) `hashCode` and JavaScript's `%`, whose result
//! takes the dividend's sign: a namespace whose hash is negative goes to
//! `streamName--<i>` ([`stream_of`]).
//!
//! A broadcast's event arguments are JSON text ([`Broadcast::args`]): in a
//! JSON entry they travel as that text, so roomcast nodes relay it as the
//! publisher wrote it; as msgpack they are transcoded like the classic
//! format's ([`wire::json_to_msgpack`], [`wire::msgpack_to_json`]).

use base64::Engine as _;
use rmpv::Value as Mp;
use serde_json::Value;

use super::sharded::{self, kind, Message};
use super::wire::{self, Broadcast, WireError};
use super::Session;

pub use super::sharded::{main_channel as public_channel, response_channel as private_channel};

/// The adapter's `hashCode`: `h = h * 31 + unit` over the UTF-16 code units,
/// wrapping at 32 bits (JavaScript's `hash |= 0`).
pub fn hash_code(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, unit| h.wrapping_mul(31).wrapping_add(i32::from(unit)))
}

/// The stream of namespace `nsp` (the adapter's `computeStreamName`).
pub fn stream_of(name: &str, count: usize, nsp: &str) -> String {
    if count <= 1 {
        return name.to_owned();
    }
    // JavaScript's `%` truncates like Rust's: -7 % 3 == -1 in both. A
    // count beyond i32 cannot be configured usefully; i64 keeps it exact.
    let i = i64::from(hash_code(nsp)) % count as i64;
    format!("{name}-{i}")
}

/// A stream entry's fields, in the order the Node.js adapter writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The sender's node id.
    pub uid: String,
    /// Namespace.
    pub nsp: String,
    /// The message type ([`kind`]), written as decimal text.
    pub kind: u64,
    /// JSON text, or base64 of msgpack.
    pub data: String,
}

impl Entry {
    /// `(field, value)` pairs for `XADD`: `uid`, `nsp`, `type`, `data`.
    pub fn fields(&self) -> [(&'static str, String); 4] {
        [
            ("uid", self.uid.clone()),
            ("nsp", self.nsp.clone()),
            ("type", self.kind.to_string()),
            ("data", self.data.clone()),
        ]
    }
}

fn json_strings(v: &[String]) -> String {
    // unwrap: strings always serialize.
    serde_json::to_string(v).unwrap()
}

/// `{"rooms":[…],"except":[…],"flags":{}}` in Node's member order.
fn opts_json(rooms: &[String], except: &[String]) -> String {
    format!(
        r#"{{"rooms":{},"except":{},"flags":{{}}}}"#,
        json_strings(rooms),
        json_strings(except)
    )
}

fn strings_mp(v: &[String]) -> Mp {
    Mp::Array(v.iter().map(|s| Mp::from(s.as_str())).collect())
}

fn map_mp(entries: Vec<(&str, Mp)>) -> Mp {
    Mp::Map(entries.into_iter().map(|(k, v)| (Mp::from(k), v)).collect())
}

fn opts_mp(rooms: &[String], except: &[String]) -> Mp {
    map_mp(vec![
        ("rooms", strings_mp(rooms)),
        ("except", strings_mp(except)),
        ("flags", Mp::Map(vec![])),
    ])
}

/// A BROADCAST entry: `data` is `{packet:{type:2,data:[event,…]}, opts}`
/// (the packet without `nsp`, as Node.js publishes it before its own
/// adapter sets it), JSON with the arguments' text as it is, or base64 of
/// msgpack when it carries binary (an error when the arguments cannot be
/// msgpack, see [`wire`]).
pub fn broadcast_entry(b: &Broadcast) -> Result<Entry, WireError> {
    let data = if b.attachments.is_empty() {
        let opts = opts_json(&b.rooms, &b.except);
        let mut data = String::with_capacity(b.args.len() + opts.len() + 48);
        data.push_str(r#"{"packet":{"type":2,"data":"#);
        data.push_str(&b.args);
        data.push_str(r#"},"opts":"#);
        data.push_str(&opts);
        data.push('}');
        data
    } else {
        let packet = map_mp(vec![
            ("type", Mp::from(2)),
            ("data", wire::json_to_msgpack(&b.args, &b.attachments)?),
        ]);
        let data = map_mp(vec![("packet", packet), ("opts", opts_mp(&b.rooms, &b.except))]);
        base64_msgpack(&data)
    };
    Ok(Entry {
        uid: b.uid.clone(),
        nsp: b.nsp.clone(),
        kind: kind::BROADCAST,
        data,
    })
}

/// A SOCKETS_JOIN (`join`) or SOCKETS_LEAVE entry for the sockets `selection`.
pub fn membership_entry(uid: &str, nsp: &str, selection: &[String], rooms: &[String], join: bool) -> Entry {
    Entry {
        uid: uid.to_owned(),
        nsp: nsp.to_owned(),
        kind: if join { kind::SOCKETS_JOIN } else { kind::SOCKETS_LEAVE },
        data: format!(
            r#"{{"opts":{},"rooms":{}}}"#,
            opts_json(selection, &[]),
            json_strings(rooms)
        ),
    }
}

/// A DISCONNECT_SOCKETS entry for the sockets `selection`.
pub fn disconnect_entry(uid: &str, nsp: &str, selection: &[String], close: bool) -> Entry {
    Entry {
        uid: uid.to_owned(),
        nsp: nsp.to_owned(),
        kind: kind::DISCONNECT_SOCKETS,
        data: format!(r#"{{"opts":{},"close":{close}}}"#, opts_json(selection, &[])),
    }
}

fn base64_msgpack(v: &Mp) -> String {
    let mut bytes = Vec::new();
    // unwrap: writing to a Vec cannot fail.
    rmpv::encode::write_value(&mut bytes, v).unwrap();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unbase64(text: &[u8]) -> Result<Vec<u8>, WireError> {
    // Node's Buffer.from(s, "base64") reads it with or without padding.
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine
        .decode(text)
        .map_err(|e| WireError::Msgpack(format!("not base64: {e}")))
}

/// Decodes a stream entry (its fields as `XREAD` / `XRANGE` return them):
/// `(sender uid, namespace, message)`. Types 3 to 6 are what the stream
/// carries; any other type decodes as the sharded adapter's would.
pub fn decode_entry<'a>(
    fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> Result<(String, String, Message), WireError> {
    let (mut uid, mut nsp, mut t, mut data) = (None, None, None, None);
    for (name, value) in fields {
        match name {
            b"uid" => uid = Some(value),
            b"nsp" => nsp = Some(value),
            b"type" => t = Some(value),
            b"data" => data = Some(value),
            _ => {}
        }
    }
    let text = |v: &[u8]| -> Result<String, WireError> {
        String::from_utf8(v.to_vec()).map_err(|e| WireError::Json(e.to_string()))
    };
    let uid = text(uid.ok_or(WireError::Shape("no uid"))?)?;
    // Node.js ignores an entry without a namespace.
    let nsp = text(nsp.filter(|n| !n.is_empty()).ok_or(WireError::Shape("no nsp"))?)?;
    let t: u64 = std::str::from_utf8(t.ok_or(WireError::Shape("no type"))?)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or(WireError::Shape("type is not a number"))?;
    let message = match data {
        // `data` is left out when the message has none (heartbeats).
        None | Some(b"") => sharded::decode_data(&uid, &nsp, t, "null", None)?,
        Some(json) if json.first() == Some(&b'{') => sharded::decode_data(&uid, &nsp, t, &text(json)?, None)?,
        Some(encoded) => {
            let bytes = unbase64(encoded)?;
            let mut mp =
                rmpv::decode::read_value(&mut bytes.as_slice()).map_err(|e| WireError::Msgpack(e.to_string()))?;
            let args = sharded::take_args(&mut mp);
            sharded::decode_data(&uid, &nsp, t, &wire::msgpack_to_json(&mp).0, args)?
        }
    };
    Ok((uid, nsp, message))
}

/// A pub/sub message (a request or an answer): msgpack of
/// `{type, data, uid, nsp}`, `data` from its JSON value (object members in
/// the order `serde_json` keeps them, which no reader depends on).
pub fn encode_message(kind: u64, uid: &str, nsp: &str, data: &Value) -> Vec<u8> {
    let data = match wire::json_to_msgpack(&data.to_string(), &[]) {
        Ok(mp) => mp,
        // serde_json writes only what it reads back; a value msgpack cannot
        // hold (none is made here) goes as nil rather than not at all.
        Err(_) => Mp::Nil,
    };
    envelope(kind, uid, nsp, data)
}

/// `{type, data, uid, nsp}` in msgpack, in Node's member order.
fn envelope(kind: u64, uid: &str, nsp: &str, data: Mp) -> Vec<u8> {
    let envelope = map_mp(vec![
        ("type", Mp::from(kind)),
        ("data", data),
        ("uid", Mp::from(uid)),
        ("nsp", Mp::from(nsp)),
    ]);
    let mut out = Vec::new();
    // unwrap: writing to a Vec cannot fail.
    rmpv::encode::write_value(&mut out, &envelope).unwrap();
    out
}

/// A FETCH_SOCKETS request, `data` in Node's member order.
pub fn fetch_request(uid: &str, nsp: &str, request_id: &str, rooms: &[String], except: &[String]) -> Vec<u8> {
    let data = map_mp(vec![
        ("opts", opts_mp(rooms, except)),
        ("requestId", Mp::from(request_id)),
    ]);
    envelope(kind::FETCH_SOCKETS, uid, nsp, data)
}

/// Decodes a pub/sub message (msgpack; a JSON one is read too): `(sender
/// uid, namespace, message)`.
pub fn decode_message(payload: &[u8]) -> Result<(String, String, Message), WireError> {
    sharded::decode(payload)
}

/// A session as the adapter stores it: base64 of msgpack
/// `{sid, pid, rooms, data}` (members in that order, as Socket.IO's
/// `persistSession` builds it).
pub fn encode_session(s: &Session) -> String {
    let data = wire::json_to_msgpack(&s.data.to_string(), &[]).unwrap_or(Mp::Nil);
    base64_msgpack(&map_mp(vec![
        ("sid", Mp::from(s.sid.as_str())),
        ("pid", Mp::from(s.pid.as_str())),
        ("rooms", strings_mp(&s.rooms)),
        ("data", data),
    ]))
}

/// Decodes a stored session. An error: not one, or its `data` holds a
/// binary value (which roomcast's `socket.data` never does).
pub fn decode_session(stored: &[u8]) -> Result<Session, WireError> {
    let bytes = unbase64(stored)?;
    let mp = rmpv::decode::read_value(&mut bytes.as_slice()).map_err(|e| WireError::Msgpack(e.to_string()))?;
    let field = |k: &str| -> Option<&Mp> {
        mp.as_map()?
            .iter()
            .find(|(key, _)| key.as_str() == Some(k))
            .map(|(_, v)| v)
    };
    let text = |k: &'static str| -> Result<String, WireError> {
        field(k)
            .and_then(Mp::as_str)
            .map(str::to_owned)
            .ok_or(WireError::Shape(k))
    };
    let rooms = match field("rooms") {
        None | Some(Mp::Nil) => vec![],
        Some(Mp::Array(rooms)) => rooms.iter().filter_map(|r| r.as_str().map(str::to_owned)).collect(),
        Some(_) => return Err(WireError::Shape("rooms is not an array")),
    };
    let data = match field("data") {
        None => Value::Null,
        Some(d) => {
            let (json, attachments) = wire::msgpack_to_json(d);
            if !attachments.is_empty() {
                return Err(WireError::Shape("binary in the session's data"));
            }
            serde_json::from_str(&json).map_err(|e| WireError::Json(e.to_string()))?
        }
    };
    Ok(Session {
        sid: text("sid")?,
        pid: text("pid")?,
        rooms,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapter::requests;
    use bytes::Bytes;
    use serde_json::json;

    // The fixtures below were captured from @socket.io/redis-streams-adapter
    // 0.3.1 with socket.io 4.8.1, node-redis 4.7 and Redis 7.0: a Node.js
    // script made a server with `createAdapter(client)` (and
    // `connectionStateRecovery`), ran the calls named beside each fixture,
    // and printed `XRANGE socket.io - +`, the pub/sub messages seen by a
    // client subscribed to the adapter's channels (hex), and the
    // `sio:session:*` keys. The adapter's uid was f1ad6ccacabcaf41.

    const NODE_UID: &str = "f1ad6ccacabcaf41";

    /// `io.to("room1").except("s1").emit("hello", "world", {a: 1, b: [true, null]})`.
    const HELLO_DATA: &str = r#"{"packet":{"type":2,"data":["hello","world",{"a":1,"b":[true,null]}]},"opts":{"rooms":["room1"],"except":["s1"],"flags":{}}}"#;
    /// `io.to("room1").emit("bin", Buffer.from([1, 2, 3]), {nested: new Uint8Array([255])})`.
    const BIN_DATA: &str =
        "gqZwYWNrZXSCpHR5cGUCpGRhdGGTo2JpbsQDAQIDgaZuZXN0ZWTEAf+kb3B0c4Olcm9vbXORpXJvb20xpmV4Y2VwdJClZmxhZ3OA";
    /// `io.emit("all", 1.5)`.
    const ALL_DATA: &str = r#"{"packet":{"type":2,"data":["all",1.5]},"opts":{"rooms":[],"except":[],"flags":{}}}"#;
    /// `io.in("room1").socketsJoin(["r2", "r3"])` (type 4).
    const JOIN_DATA: &str = r#"{"opts":{"rooms":["room1"],"except":[],"flags":{}},"rooms":["r2","r3"]}"#;
    /// `io.in("room1").socketsLeave("r2")` (type 5).
    const LEAVE_DATA: &str = r#"{"opts":{"rooms":["room1"],"except":[],"flags":{}},"rooms":["r2"]}"#;
    /// `io.in("nobody").disconnectSockets(true)` (type 6).
    const DISCONNECT_DATA: &str = r#"{"opts":{"rooms":["nobody"],"except":[],"flags":{}},"close":true}"#;
    /// `io.in("room1").fetchSockets()`: on `socket.io#/#`, hex; requestId ddb13f41b0ee500a.
    const FETCH_HEX: &str = "84a47479706507a46461746182a46f70747383a5726f6f6d7391a5726f6f6d31a665786365707490a5666c61677380a9726571756573744964b064646231336634316230656535303061a3756964b066316164366363616361626361663431a36e7370a12f";
    /// The session Node stored when the client of socket kTMe5I4kKA5UPeW2AAAA
    /// (in room1 and r3, `socket.data = {user: "alice", n: 1}`) lost its
    /// transport, under `sio:session:oNPLAH_LC4oVdKFyAAAB`.
    const SESSION: &str =
        "hKNzaWS0a1RNZTVJNGtLQTVVUGVXMkFBQUGjcGlktG9OUExBSF9MQzRvVmRLRnlBQUFCpXJvb21zk7RrVE1lNUk0a0tBNVVQZVcyQUFBQaVyb29tMaJyM6RkYXRhgqR1c2VypWFsaWNloW4B";
    /// Likewise (another run), socket dhbOW659Atx9jpp_AAAA with
    /// `socket.data = {publish: ["news:*"], subscribe: ["*"], user: "alice"}`
    /// (members in the order serde_json keeps them too), under
    /// `sio:session:mcfWJZvdw73l-y-gAAAB`.
    const SESSION_ORDERED: &str = "hKNzaWS0ZGhiT1c2NTlBdHg5anBwX0FBQUGjcGlktG1jZldKWnZkdzczbC15LWdBQUFCpXJvb21zk7RkaGJPVzY1OUF0eDlqcHBfQUFBQaVyb29tMaJyM6RkYXRhg6dwdWJsaXNokaZuZXdzOiqpc3Vic2NyaWJlkaEqpHVzZXKlYWxpY2U=";

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn entry(kind: &str, data: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        [("uid", NODE_UID), ("nsp", "/"), ("type", kind), ("data", data)]
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    fn decode(fields: &[(Vec<u8>, Vec<u8>)]) -> Result<(String, String, Message), WireError> {
        decode_entry(fields.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
    }

    fn broadcast(args: &str, attachments: Vec<Bytes>, rooms: &[&str], except: &[&str]) -> Broadcast {
        Broadcast {
            uid: NODE_UID.into(),
            nsp: "/".into(),
            args: args.into(),
            attachments,
            rooms: rooms.iter().map(|s| s.to_string()).collect(),
            except: except.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn broadcast_entries_are_written_as_node_writes_them() {
        let hello = broadcast(
            r#"["hello","world",{"a":1,"b":[true,null]}]"#,
            vec![],
            &["room1"],
            &["s1"],
        );
        let e = broadcast_entry(&hello).unwrap();
        assert_eq!(
            e.fields().map(|(k, v)| (k, v)),
            [
                ("uid", NODE_UID.to_owned()),
                ("nsp", "/".to_owned()),
                ("type", "3".to_owned()),
                ("data", HELLO_DATA.to_owned())
            ]
        );
        let all = broadcast(r#"["all",1.5]"#, vec![], &[], &[]);
        assert_eq!(broadcast_entry(&all).unwrap().data, ALL_DATA);
        let bin = broadcast(
            r#"["bin",{"_placeholder":true,"num":0},{"nested":{"_placeholder":true,"num":1}}]"#,
            vec![Bytes::from_static(&[1, 2, 3]), Bytes::from_static(&[255])],
            &["room1"],
            &[],
        );
        assert_eq!(broadcast_entry(&bin).unwrap().data, BIN_DATA);
    }

    #[test]
    fn node_broadcast_entries_decode_with_their_text_and_binary() {
        let (uid, nsp, Message::Broadcast(b)) = decode(&entry("3", HELLO_DATA)).unwrap() else {
            panic!("not a broadcast")
        };
        assert_eq!((uid.as_str(), nsp.as_str()), (NODE_UID, "/"));
        assert_eq!(&*b.args, r#"["hello","world",{"a":1,"b":[true,null]}]"#);
        assert_eq!((b.rooms, b.except), (vec!["room1".to_owned()], vec!["s1".to_owned()]));

        let (_, _, Message::Broadcast(b)) = decode(&entry("3", BIN_DATA)).unwrap() else {
            panic!("not a broadcast")
        };
        assert_eq!(
            &*b.args,
            r#"["bin",{"_placeholder":true,"num":0},{"nested":{"_placeholder":true,"num":1}}]"#
        );
        assert_eq!(
            b.attachments,
            vec![Bytes::from_static(&[1, 2, 3]), Bytes::from_static(&[255])]
        );
        assert_eq!(b.rooms, vec!["room1".to_owned()]);
        // roomcast's own entries read back as they were written.
        let mine = broadcast(r#"["x",{"z":1,"a":"é"}]"#, vec![], &[], &["me"]);
        let e = broadcast_entry(&mine).unwrap();
        let fields: Vec<(Vec<u8>, Vec<u8>)> = e
            .fields()
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        assert_eq!(decode(&fields).unwrap().2, Message::Broadcast(mine));
    }

    #[test]
    fn membership_and_disconnect_entries_match_node_both_ways() {
        let sel = ["room1".to_owned()];
        let join = membership_entry(NODE_UID, "/", &sel, &["r2".into(), "r3".into()], true);
        assert_eq!((join.kind, join.data.as_str()), (4, JOIN_DATA));
        let leave = membership_entry(NODE_UID, "/", &sel, &["r2".into()], false);
        assert_eq!((leave.kind, leave.data.as_str()), (5, LEAVE_DATA));
        let gone = disconnect_entry(NODE_UID, "/", &["nobody".into()], true);
        assert_eq!((gone.kind, gone.data.as_str()), (6, DISCONNECT_DATA));

        let (_, _, Message::Request(r)) = decode(&entry("4", JOIN_DATA)).unwrap() else {
            panic!("not a request")
        };
        assert_eq!(r.kind, requests::kind::REMOTE_JOIN);
        assert_eq!(
            (r.rooms, r.target_rooms),
            (vec!["room1".to_owned()], vec!["r2".to_owned(), "r3".to_owned()])
        );
        let (_, _, Message::Request(r)) = decode(&entry("5", LEAVE_DATA)).unwrap() else {
            panic!("not a request")
        };
        assert_eq!(r.kind, requests::kind::REMOTE_LEAVE);
        let (_, _, Message::Request(r)) = decode(&entry("6", DISCONNECT_DATA)).unwrap() else {
            panic!("not a request")
        };
        assert!(r.kind == requests::kind::REMOTE_DISCONNECT && r.close);
        let (_, _, Message::Request(r)) = decode(&entry(
            "6",
            r#"{"opts":{"rooms":["nobody"],"except":[],"flags":{}},"close":false}"#,
        ))
        .unwrap() else {
            panic!("not a request")
        };
        assert!(!r.close);
    }

    #[test]
    fn pubsub_requests_and_answers_are_msgpack_of_the_whole_message() {
        // Node's FETCH_SOCKETS, byte for byte, and what roomcast reads in it.
        let fetch = unhex(FETCH_HEX);
        assert_eq!(
            fetch_request(NODE_UID, "/", "ddb13f41b0ee500a", &["room1".into()], &[]),
            fetch
        );
        let (uid, _, Message::Request(r)) = decode_message(&fetch).unwrap() else {
            panic!("not a request")
        };
        assert_eq!(uid, NODE_UID);
        assert_eq!(
            (r.kind, r.request_id.as_deref(), r.rooms),
            (
                requests::kind::REMOTE_FETCH,
                Some("ddb13f41b0ee500a"),
                vec!["room1".to_owned()]
            )
        );
        // roomcast's answer, as Node's decoder (msgpack, then the map's
        // members) sees it.
        let socket = requests::socket_entry("s1", &["lobby".into()], Some("ann"));
        let answer = encode_message(
            kind::FETCH_SOCKETS_RESPONSE,
            "roomcast-node",
            "/",
            &json!({"requestId": "ddb13f41b0ee500a", "sockets": [socket]}),
        );
        let mp = rmpv::decode::read_value(&mut answer.as_slice()).unwrap();
        let keys: Vec<&str> = mp.as_map().unwrap().iter().map(|(k, _)| k.as_str().unwrap()).collect();
        assert_eq!(keys, ["type", "data", "uid", "nsp"]);
        let (uid, nsp, Message::Response(data)) = decode_message(&answer).unwrap() else {
            panic!("not an answer")
        };
        assert_eq!((uid.as_str(), nsp.as_str()), ("roomcast-node", "/"));
        assert_eq!(data["sockets"][0]["rooms"], json!(["s1", "lobby"]));
        // A SERVER_SIDE_EMIT with requestId from Node, as captured.
        let emit = unhex("84a47479706509a46461746182a9726571756573744964a57265712d32a67061636b657491a470696e67a3756964ab636170747572652d756964a36e7370a12f");
        let (_, _, Message::Request(r)) = decode_message(&emit).unwrap() else {
            panic!("not a request")
        };
        assert_eq!(
            (r.kind, r.request_id.as_deref()),
            (requests::kind::SERVER_SIDE_EMIT, Some("req-2"))
        );
    }

    #[test]
    fn sessions_are_stored_as_node_stores_them() {
        let session = Session {
            sid: "kTMe5I4kKA5UPeW2AAAA".into(),
            pid: "oNPLAH_LC4oVdKFyAAAB".into(),
            rooms: vec!["kTMe5I4kKA5UPeW2AAAA".into(), "room1".into(), "r3".into()],
            data: json!({"user": "alice", "n": 1}),
        };
        assert_eq!(decode_session(SESSION.as_bytes()).unwrap(), session);
        // serde_json orders the data's members ("n" before "user"): the
        // same map for every reader, not the same bytes as Node's.
        let mine = encode_session(&session);
        assert_eq!(decode_session(mine.as_bytes()).unwrap(), session);
        // With the members in that order, the very bytes Node stores.
        let ordered = Session {
            sid: "dhbOW659Atx9jpp_AAAA".into(),
            pid: "mcfWJZvdw73l-y-gAAAB".into(),
            rooms: vec!["dhbOW659Atx9jpp_AAAA".into(), "room1".into(), "r3".into()],
            data: json!({"publish": ["news:*"], "subscribe": ["*"], "user": "alice"}),
        };
        assert_eq!(encode_session(&ordered), SESSION_ORDERED);
        assert_eq!(decode_session(SESSION_ORDERED.as_bytes()).unwrap(), ordered);
        for bad in ["", "!!!", "kA==", "gaNzaWQB"] {
            assert!(decode_session(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn stream_names_follow_the_adapters_hash() {
        // hashCode and the stream Node.js wrote each namespace's entries to
        // with streamCount 3 and streamName "s" (captured likewise).
        for (nsp, hash, stream) in [
            ("/", 47, "s-2"),
            ("/chat", 46457863, "s-1"),
            ("/notifications", -1014064871, "s--2"),
            ("/admin-panel", 193169015, "s-2"),
            ("/é", 1690, "s-1"),
            ("/😀", 1818066, "s-0"),
        ] {
            assert_eq!(hash_code(nsp), hash, "{nsp}");
            assert_eq!(stream_of("s", 3, nsp), stream, "{nsp}");
        }
        assert_eq!(stream_of("socket.io", 1, "/chat"), "socket.io");
    }

    #[test]
    fn garbage_entries_are_errors_not_panics() {
        let fields = |pairs: &[(&str, &[u8])]| -> Vec<(Vec<u8>, Vec<u8>)> {
            pairs.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec())).collect()
        };
        for bad in [
            fields(&[]),
            fields(&[("uid", b"u"), ("type", b"3"), ("data", b"{}")]),
            fields(&[("uid", b"u"), ("nsp", b"/"), ("type", b"x"), ("data", b"{}")]),
            fields(&[("uid", b"u"), ("nsp", b"/"), ("type", b"3"), ("data", b"{")]),
            fields(&[("uid", b"u"), ("nsp", b"/"), ("type", b"3"), ("data", b"%%%")]),
            fields(&[("uid", b"u"), ("nsp", b"/"), ("type", b"3"), ("data", b"kA==")]),
            fields(&[("uid", &[0xff]), ("nsp", b"/"), ("type", b"3"), ("data", b"{}")]),
        ] {
            assert!(decode(&bad).is_err(), "{bad:?}");
        }
    }
}
