//! The broadcast message of `@socket.io/redis-adapter` 8.x and
//! `@socket.io/redis-emitter` 5.x, without I/O.
//!
//! Channel: `{key}#{nsp}#` for a broadcast to the whole namespace or to
//! several rooms, `{key}#{nsp}#{room}#` for a broadcast to exactly one room;
//! nodes `PSUBSCRIBE {key}#{nsp}#*`. The message is msgpack:
//!
//! ```text
//! [ uid: str,                                  sender's node id; a node drops its own
//!   packet: { "type": 2, "data": [event, args...], "nsp": "/" },
//!   opts:   { "rooms": [str], "except": [str], "flags": {…} } ]
//! ```
//!
//! Binary values travel as msgpack `bin` inside `data` (a packet type of 5
//! is accepted too). Locally a payload is JSON with Socket.IO placeholders
//! `{"_placeholder":true,"num":n}` plus the attachments; this module converts
//! between the two. `rooms` and `except` hold room names, and a socket id is
//! also the name of that socket's own room. An empty `rooms` is the whole
//! namespace.

use bytes::Bytes;
use rmpv::Value as Mp;
use serde_json::{Map, Value};
use thiserror::Error;

/// The default channel prefix (the adapter's `key` option).
pub const DEFAULT_KEY: &str = "socket.io";

/// A broadcast as it crosses Redis.
#[derive(Debug, Clone, PartialEq)]
pub struct Broadcast {
    /// The sender's node id.
    pub uid: String,
    /// Namespace.
    pub nsp: String,
    /// `[event, args...]` with placeholders for binary values.
    pub args: Value,
    /// The binary values, in placeholder order.
    pub attachments: Vec<Bytes>,
    /// Target rooms; empty = the whole namespace.
    pub rooms: Vec<String>,
    /// Rooms (socket ids included) that do not receive it.
    pub except: Vec<String>,
}

/// A message that is not a broadcast this node can deliver.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    /// Not msgpack.
    #[error("not msgpack: {0}")]
    Msgpack(String),
    /// Not JSON.
    #[error("not JSON: {0}")]
    Json(String),
    /// msgpack of another shape.
    #[error("unexpected message shape: {0}")]
    Shape(&'static str),
}

/// The channel a broadcast is published on.
pub fn channel(key: &str, nsp: &str, rooms: &[String]) -> String {
    match rooms {
        [room] => format!("{key}#{nsp}#{room}#"),
        _ => format!("{key}#{nsp}#"),
    }
}

/// The pattern a node subscribes to for a namespace.
pub fn pattern(key: &str, nsp: &str) -> String {
    format!("{key}#{nsp}#*")
}

/// Encodes a broadcast.
pub fn encode(b: &Broadcast) -> Vec<u8> {
    let strings = |v: &[String]| Mp::Array(v.iter().map(|s| Mp::from(s.as_str())).collect());
    let packet = Mp::Map(vec![
        (Mp::from("type"), Mp::from(2)),
        (Mp::from("data"), to_msgpack(&b.args, &b.attachments)),
        (Mp::from("nsp"), Mp::from(b.nsp.as_str())),
    ]);
    let opts = Mp::Map(vec![
        (Mp::from("rooms"), strings(&b.rooms)),
        (Mp::from("except"), strings(&b.except)),
        (Mp::from("flags"), Mp::Map(vec![])),
    ]);
    let msg = Mp::Array(vec![Mp::from(b.uid.as_str()), packet, opts]);
    let mut out = Vec::with_capacity(64);
    // unwrap: writing to a Vec cannot fail.
    rmpv::encode::write_value(&mut out, &msg).unwrap();
    out
}

/// Decodes a broadcast published by any node or emitter.
pub fn decode(mut bytes: &[u8]) -> Result<Broadcast, WireError> {
    let msg = rmpv::decode::read_value(&mut bytes).map_err(|e| WireError::Msgpack(e.to_string()))?;
    let Mp::Array(parts) = msg else {
        return Err(WireError::Shape("not an array"));
    };
    let [uid, packet, opts, ..] = parts.as_slice() else {
        return Err(WireError::Shape("fewer than 3 elements"));
    };
    let uid = uid.as_str().ok_or(WireError::Shape("uid is not a string"))?.to_owned();
    let field = |m: &Mp, k: &str| -> Option<Mp> {
        m.as_map()?
            .iter()
            .find(|(key, _)| key.as_str() == Some(k))
            .map(|(_, v)| v.clone())
    };
    let kind = field(packet, "type").and_then(|t| t.as_u64());
    if !matches!(kind, Some(2) | Some(5)) {
        return Err(WireError::Shape("not an EVENT packet"));
    }
    let nsp = match field(packet, "nsp") {
        None | Some(Mp::Nil) => "/".to_owned(),
        Some(v) => v.as_str().ok_or(WireError::Shape("nsp is not a string"))?.to_owned(),
    };
    let data = field(packet, "data").ok_or(WireError::Shape("no data"))?;
    if !matches!(&data, Mp::Array(a) if a.first().is_some_and(Mp::is_str)) {
        return Err(WireError::Shape("data is not [event, ...]"));
    }
    let mut attachments = Vec::new();
    let args = from_msgpack(&data, &mut attachments);
    let strings = |k: &str| -> Vec<String> {
        field(opts, k)
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect()
    };
    Ok(Broadcast {
        uid,
        nsp,
        args,
        attachments,
        rooms: strings("rooms"),
        except: strings("except"),
    })
}

/// Decodes a BROADCAST-with-ack request (type 7, a msgpack map
/// `{uid, requestId, type, packet, opts}`): `(uid, requestId, broadcast)`.
pub fn decode_ack_broadcast(mut bytes: &[u8]) -> Result<(String, String, Broadcast), WireError> {
    let msg = rmpv::decode::read_value(&mut bytes).map_err(|e| WireError::Msgpack(e.to_string()))?;
    let field = |k: &str| -> Option<Mp> {
        msg.as_map()?
            .iter()
            .find(|(key, _)| key.as_str() == Some(k))
            .map(|(_, v)| v.clone())
    };
    let text = |k: &str| field(k).and_then(|v| v.as_str().map(str::to_owned));
    let uid = text("uid").ok_or(WireError::Shape("no uid"))?;
    let request_id = text("requestId").ok_or(WireError::Shape("no requestId"))?;
    let as_array = Mp::Array(vec![
        Mp::from(uid.as_str()),
        field("packet").ok_or(WireError::Shape("no packet"))?,
        field("opts").unwrap_or(Mp::Map(vec![])),
    ]);
    let mut buf = Vec::new();
    // unwrap: writing to a Vec cannot fail.
    rmpv::encode::write_value(&mut buf, &as_array).unwrap();
    Ok((uid, request_id, decode(&buf)?))
}

/// JSON with placeholders → msgpack with the attachments in place.
pub(crate) fn to_msgpack(v: &Value, attachments: &[Bytes]) -> Mp {
    match v {
        Value::Null => Mp::Nil,
        Value::Bool(b) => Mp::Boolean(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Mp::from(i)
            } else if let Some(u) = n.as_u64() {
                Mp::from(u)
            } else {
                Mp::F64(n.as_f64().unwrap_or_default())
            }
        }
        Value::String(s) => Mp::from(s.as_str()),
        Value::Array(items) => Mp::Array(items.iter().map(|i| to_msgpack(i, attachments)).collect()),
        Value::Object(map) => {
            if map.get("_placeholder") == Some(&Value::Bool(true)) {
                if let Some(bin) = map
                    .get("num")
                    .and_then(Value::as_u64)
                    .and_then(|n| attachments.get(n as usize))
                {
                    return Mp::Binary(bin.to_vec());
                }
            }
            Mp::Map(
                map.iter()
                    .map(|(k, v)| (Mp::from(k.as_str()), to_msgpack(v, attachments)))
                    .collect(),
            )
        }
    }
}

/// msgpack → JSON, binary values replaced by placeholders (numbered in
/// depth-first order) and collected.
pub(crate) fn from_msgpack(v: &Mp, attachments: &mut Vec<Bytes>) -> Value {
    match v {
        Mp::Nil => Value::Null,
        Mp::Boolean(b) => Value::Bool(*b),
        Mp::Integer(i) => i
            .as_i64()
            .map(Value::from)
            .or_else(|| i.as_u64().map(Value::from))
            .unwrap_or(Value::Null),
        Mp::F32(f) => serde_json::Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number),
        Mp::F64(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Mp::String(s) => Value::String(s.as_str().unwrap_or_default().to_owned()),
        Mp::Binary(b) => {
            attachments.push(Bytes::copy_from_slice(b));
            serde_json::json!({"_placeholder": true, "num": attachments.len() - 1})
        }
        Mp::Array(items) => Value::Array(items.iter().map(|i| from_msgpack(i, attachments)).collect()),
        Mp::Map(entries) => {
            let mut map = Map::new();
            for (k, v) in entries {
                let key = match k {
                    Mp::String(s) => s.as_str().unwrap_or_default().to_owned(),
                    other => other.to_string(),
                };
                map.insert(key, from_msgpack(v, attachments));
            }
            Value::Object(map)
        }
        // notepack encodes `undefined` as an extension; it has no JSON form.
        Mp::Ext(..) => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Broadcast {
        Broadcast {
            uid: "abc123".into(),
            nsp: "/".into(),
            args: json!(["chat", {"text": "hi", "blob": {"_placeholder": true, "num": 0}}]),
            attachments: vec![Bytes::from_static(&[1, 2, 3])],
            rooms: vec!["lobby".into()],
            except: vec!["sock1".into()],
        }
    }

    #[test]
    fn round_trips_with_binary() {
        let b = sample();
        assert_eq!(decode(&encode(&b)).unwrap(), b);
    }

    #[test]
    fn binary_travels_as_msgpack_bin() {
        let bytes = encode(&sample());
        let v = rmpv::decode::read_value(&mut bytes.as_slice()).unwrap();
        let data = &v[1].as_map().unwrap()[1].1;
        let blob = data[1]
            .as_map()
            .unwrap()
            .iter()
            .find(|(k, _)| k.as_str() == Some("blob"));
        assert_eq!(blob.map(|(_, v)| v), Some(&Mp::Binary(vec![1, 2, 3])));
    }

    #[test]
    fn channels_follow_the_adapter() {
        assert_eq!(channel("socket.io", "/", &["lobby".into()]), "socket.io#/#lobby#");
        assert_eq!(channel("socket.io", "/", &[]), "socket.io#/#");
        assert_eq!(channel("socket.io", "/", &["a".into(), "b".into()]), "socket.io#/#");
        assert_eq!(pattern("socket.io", "/chat"), "socket.io#/chat#*");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode(b"").is_err());
        assert!(decode(&[0xc1]).is_err());
        let not_event = rmpv::Value::Array(vec![
            Mp::from("x"),
            Mp::Map(vec![(Mp::from("type"), Mp::from(1))]),
            Mp::Nil,
        ]);
        let mut buf = Vec::new();
        rmpv::encode::write_value(&mut buf, &not_event).unwrap();
        assert!(decode(&buf).is_err());
    }
}
