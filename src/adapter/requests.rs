//! The request/response side of `@socket.io/redis-adapter` 8.x (classic).
//!
//! Requests are published on `{key}-request#{nsp}#`, JSON objects except
//! BROADCAST-with-ack (type 7), a msgpack map. Answers go to the shared
//! `{key}-response#{nsp}#` as JSON. Every node subscribed to the request
//! channel is counted (`PUBSUB NUMSUB`) by a requester and must answer, so
//! this node answers every type it is asked:
//!
//! | type | request | this node |
//! |---|---|---|
//! | 0 SOCKETS | `{uid, requestId, rooms}` | `{requestId, sockets:[id…]}` |
//! | 1 ALL_ROOMS | `{uid, requestId}` | `{requestId, rooms:[…]}` (socket ids included) |
//! | 2/3 REMOTE_JOIN/LEAVE | `{uid?, opts:{rooms,except}, rooms}` | applies it, no answer |
//! | 4 REMOTE_DISCONNECT | `{uid?, opts, close}` | applies it, no answer |
//! | 5 REMOTE_FETCH | `{uid, requestId, opts}` | `{requestId, sockets:[{id, handshake, rooms, data}]}` |
//! | 6 SERVER_SIDE_EMIT | `{uid, requestId?, data}` | no server-side listeners: `{type:6, requestId, data:null}` when asked |
//! | 7 BROADCAST (ack) | msgpack `{uid, requestId, packet, opts}` | delivers it (without an ack id) and answers `{type:8, requestId, clientCount:0}` |
//!
//! 0, 1, 5, 6 and 7 from this node's own uid are skipped; 2, 3 and 4 are
//! applied whatever the uid (a Node originator applies them on the echo).
//! A requester counts answers (not who sent them) up to NUMSUB − 1, within
//! a timeout; missing answers make the result partial.

use serde_json::{json, Value};

use super::wire;

/// Request types (the adapter's `RequestType`).
pub mod kind {
    /// Legacy `allSockets`.
    pub const SOCKETS: u64 = 0;
    /// `allRooms`.
    pub const ALL_ROOMS: u64 = 1;
    /// `socketsJoin`.
    pub const REMOTE_JOIN: u64 = 2;
    /// `socketsLeave`.
    pub const REMOTE_LEAVE: u64 = 3;
    /// `disconnectSockets`.
    pub const REMOTE_DISCONNECT: u64 = 4;
    /// `fetchSockets`.
    pub const REMOTE_FETCH: u64 = 5;
    /// `serverSideEmit`.
    pub const SERVER_SIDE_EMIT: u64 = 6;
    /// `emitWithAck` broadcast.
    pub const BROADCAST: u64 = 7;
    /// Answer to 7: how many clients got it.
    pub const BROADCAST_CLIENT_COUNT: u64 = 8;
}

/// The request channel of a namespace.
pub fn request_channel(key: &str, nsp: &str) -> String {
    format!("{key}-request#{nsp}#")
}

/// The shared response channel of a namespace.
pub fn response_channel(key: &str, nsp: &str) -> String {
    format!("{key}-response#{nsp}#")
}

/// A decoded request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Sender (absent from emitter requests).
    pub uid: Option<String>,
    /// Absent for requests without answers.
    pub request_id: Option<String>,
    /// The type.
    pub kind: u64,
    /// Selection rooms (`opts.rooms`, or `rooms` of a SOCKETS request).
    pub rooms: Vec<String>,
    /// Selection exclusions (`opts.except`).
    pub except: Vec<String>,
    /// Rooms to join or leave (types 2/3).
    pub target_rooms: Vec<String>,
    /// Close the connection (type 4).
    pub close: bool,
    /// The broadcast of a type 7.
    pub broadcast: Option<wire::Broadcast>,
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// Decodes a request (JSON, or msgpack for type 7). `None`: not a request.
pub fn decode(payload: &[u8]) -> Option<Request> {
    if payload.first() != Some(&b'{') {
        let (uid, request_id, broadcast) = wire::decode_ack_broadcast(payload).ok()?;
        return Some(Request {
            uid: Some(uid),
            request_id: Some(request_id),
            kind: kind::BROADCAST,
            rooms: broadcast.rooms.clone(),
            except: broadcast.except.clone(),
            target_rooms: vec![],
            close: false,
            broadcast: Some(broadcast),
        });
    }
    let v: Value = serde_json::from_slice(payload).ok()?;
    let kind = v.get("type")?.as_u64()?;
    let opts = v.get("opts");
    let (rooms, target_rooms) = if kind == kind::SOCKETS {
        (strings(v.get("rooms")), vec![])
    } else {
        (strings(opts.and_then(|o| o.get("rooms"))), strings(v.get("rooms")))
    };
    Some(Request {
        uid: v.get("uid").and_then(Value::as_str).map(str::to_owned),
        request_id: v.get("requestId").and_then(Value::as_str).map(str::to_owned),
        kind,
        rooms,
        except: strings(opts.and_then(|o| o.get("except"))),
        target_rooms,
        close: v.get("close").and_then(Value::as_bool).unwrap_or(false),
        broadcast: None,
    })
}

/// A REMOTE_FETCH request.
pub fn fetch_request(uid: &str, request_id: &str, rooms: &[String], except: &[String]) -> Vec<u8> {
    json!({"uid": uid, "requestId": request_id, "type": kind::REMOTE_FETCH,
           "opts": {"rooms": rooms, "except": except}})
    .to_string()
    .into_bytes()
}

/// A REMOTE_DISCONNECT request.
pub fn disconnect_request(uid: &str, rooms: &[String], close: bool) -> Vec<u8> {
    json!({"uid": uid, "type": kind::REMOTE_DISCONNECT, "opts": {"rooms": rooms, "except": []}, "close": close})
        .to_string()
        .into_bytes()
}

/// A REMOTE_JOIN (`join`) or REMOTE_LEAVE request for the sockets `selection`.
pub fn membership_request(uid: &str, selection: &[String], rooms: &[String], join: bool) -> Vec<u8> {
    let kind = if join { kind::REMOTE_JOIN } else { kind::REMOTE_LEAVE };
    json!({"uid": uid, "type": kind, "opts": {"rooms": selection, "except": []}, "rooms": rooms})
        .to_string()
        .into_bytes()
}

/// One socket in a REMOTE_FETCH answer. Its `handshake` has the members
/// of Socket.IO's (empty: this node does not keep the request a socket
/// came with), because code written for Node.js reads them from a
/// `RemoteSocket` (@socket.io/admin-ui's `instrument()` reads
/// `handshake.headers[…]`, and a Node.js process without it stops).
pub fn socket_entry(id: &str, rooms: &[String], user: Option<&str>) -> Value {
    let mut all = vec![id.to_owned()];
    all.extend(rooms.iter().cloned());
    let handshake = json!({"headers": {}, "time": "", "address": "", "xdomain": false, "secure": false,
                           "issued": 0, "url": "", "query": {}, "auth": {}});
    json!({"id": id, "handshake": handshake, "rooms": all, "data": {"user": user}})
}

/// A remote socket parsed from an answer: `(id, rooms without its own id, user)`.
pub fn parse_socket(v: &Value) -> Option<(String, Vec<String>, Option<String>)> {
    if let Some(id) = v.as_str() {
        return Some((id.to_owned(), vec![], None));
    }
    let id = v.get("id")?.as_str()?.to_owned();
    let rooms = strings(v.get("rooms")).into_iter().filter(|r| *r != id).collect();
    let user = v
        .get("data")
        .and_then(|d| d.get("user"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    Some((id, rooms, user))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_captured_requests() {
        let fetch = br#"{"uid":"BwDWGi","requestId":"hMfxbc","type":5,"opts":{"rooms":["room1"],"except":["room2"]}}"#;
        let r = decode(fetch).unwrap();
        assert_eq!((r.kind, r.request_id.as_deref()), (kind::REMOTE_FETCH, Some("hMfxbc")));
        assert_eq!(
            (r.rooms, r.except),
            (vec!["room1".to_owned()], vec!["room2".to_owned()])
        );
        let join = br#"{"type":2,"opts":{"rooms":["room2"],"except":[]},"rooms":["room5"]}"#;
        let r = decode(join).unwrap();
        assert_eq!((r.uid, r.target_rooms), (None, vec!["room5".to_owned()]));
        let disconnect = br#"{"type":4,"opts":{"rooms":["room2"],"except":[]},"close":true}"#;
        assert!(decode(disconnect).unwrap().close);
        assert!(decode(b"{not json").is_none());
    }

    #[test]
    fn socket_entries_round_trip() {
        let e = socket_entry("s1", &["lobby".into()], Some("ann"));
        assert_eq!(e["rooms"], json!(["s1", "lobby"]));
        assert_eq!(
            parse_socket(&e),
            Some(("s1".into(), vec!["lobby".into()], Some("ann".into())))
        );
        assert_eq!(parse_socket(&json!("s2")), Some(("s2".into(), vec![], None)));
    }
}
