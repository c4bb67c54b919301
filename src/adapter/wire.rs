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
//! is accepted too). Locally a payload is JSON text with Socket.IO
//! placeholders `{"_placeholder":true,"num":n}` plus the attachments; this
//! module converts between the two ([`json_to_msgpack`], [`msgpack_to_json`])
//! without a `serde_json::Value` in between, so every object keeps its
//! members in the order written. msgpack has no text for a number: a node
//! reading a broadcast gets the same values (integers within 64 bits
//! exact, other numbers the same double), not the same text. A text msgpack
//! cannot carry (a string with a lone surrogate, a number beyond a double)
//! is not sent ([`WireError::Unencodable`]): the adapter counts it as a
//! lost cross-node broadcast, and this node's members get it all the same.
//! `rooms` and `except` hold room names, and a socket id is also the name of
//! that socket's own room. An empty `rooms` is the whole namespace.

use std::fmt;

use bytes::Bytes;
use bytestring::ByteString;
use rmpv::Value as Mp;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
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
    /// `[event, args...]`: JSON text with placeholders for binary values.
    pub args: ByteString,
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
    /// A payload msgpack cannot carry (a string with a lone surrogate, a
    /// number beyond a double's range).
    #[error("cannot be sent as msgpack: {0}")]
    Unencodable(String),
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
pub fn encode(b: &Broadcast) -> Result<Vec<u8>, WireError> {
    let strings = |v: &[String]| Mp::Array(v.iter().map(|s| Mp::from(s.as_str())).collect());
    let packet = Mp::Map(vec![
        (Mp::from("type"), Mp::from(2)),
        (Mp::from("data"), json_to_msgpack(&b.args, &b.attachments)?),
        (Mp::from("nsp"), Mp::from(b.nsp.as_str())),
    ]);
    let opts = Mp::Map(vec![
        (Mp::from("rooms"), strings(&b.rooms)),
        (Mp::from("except"), strings(&b.except)),
        (Mp::from("flags"), Mp::Map(vec![])),
    ]);
    let msg = Mp::Array(vec![Mp::from(b.uid.as_str()), packet, opts]);
    let mut out = Vec::with_capacity(64 + b.args.len());
    // unwrap: writing to a Vec cannot fail.
    rmpv::encode::write_value(&mut out, &msg).unwrap();
    Ok(out)
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
    let (args, attachments) = msgpack_to_json(&data);
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
        args: args.into(),
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

/// JSON text with placeholders → msgpack with the attachments in place,
/// every object's members in the order written. A placeholder is exactly
/// `{"_placeholder":true,"num":n}` (either order) with an attachment `n`.
pub fn json_to_msgpack(text: &str, attachments: &[Bytes]) -> Result<Mp, WireError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let mp = ToMsgpack(attachments)
        .deserialize(&mut de)
        .and_then(|mp| de.end().map(|()| mp))
        .map_err(|e| WireError::Unencodable(e.to_string()))?;
    Ok(mp)
}

/// Builds a msgpack value as the JSON text is read.
#[derive(Clone, Copy)]
struct ToMsgpack<'a>(&'a [Bytes]);

impl<'de> DeserializeSeed<'de> for ToMsgpack<'_> {
    type Value = Mp;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Mp, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ToMsgpack<'_> {
    type Value = Mp;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Mp, E> {
        Ok(Mp::Nil)
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Mp, E> {
        Ok(Mp::Boolean(b))
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Mp, E> {
        Ok(Mp::from(n))
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Mp, E> {
        Ok(Mp::from(n))
    }
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Mp, E> {
        Ok(Mp::F64(n))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Mp, E> {
        Ok(Mp::from(s))
    }
    fn visit_string<E: de::Error>(self, s: String) -> Result<Mp, E> {
        Ok(Mp::from(s))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Mp, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Mp::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Mp, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            entries.push((Mp::from(key), map.next_value_seed(self)?));
        }
        Ok(match placeholder(&entries).and_then(|n| self.0.get(n)) {
            Some(bin) => Mp::Binary(bin.to_vec()),
            None => Mp::Map(entries),
        })
    }
}

/// The attachment a map `{"_placeholder":true,"num":n}` stands for.
fn placeholder(entries: &[(Mp, Mp)]) -> Option<usize> {
    let [a, b] = entries else { return None };
    let get = |key: &str| {
        [a, b]
            .into_iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    };
    match (get("_placeholder"), get("num")) {
        (Some(Mp::Boolean(true)), Some(Mp::Integer(n))) => n.as_u64().and_then(|n| usize::try_from(n).ok()),
        _ => None,
    }
}

/// msgpack → JSON text, every map's entries in their order, binary values
/// replaced by placeholders numbered depth-first in document order (as the
/// sender numbered them) and collected. A string that is not UTF-8 is
/// written with U+FFFD for its bad bytes; a number as its value (a float
/// that is not finite as `null`, as `JSON.stringify` writes it).
pub fn msgpack_to_json(v: &Mp) -> (String, Vec<Bytes>) {
    let mut out = Vec::with_capacity(128);
    let mut attachments = Vec::new();
    write_json(v, &mut out, &mut attachments);
    // unwrap: only UTF-8 text is written.
    (String::from_utf8(out).unwrap(), attachments)
}

fn write_json(v: &Mp, out: &mut Vec<u8>, attachments: &mut Vec<Bytes>) {
    use std::io::Write as _;
    // unwraps: writing to a Vec cannot fail.
    match v {
        // notepack encodes `undefined` as an extension; it has no JSON form.
        Mp::Nil | Mp::Ext(..) => out.extend_from_slice(b"null"),
        Mp::Boolean(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Mp::Integer(i) => match (i.as_u64(), i.as_i64()) {
            (Some(n), _) => write!(out, "{n}").unwrap(),
            (_, Some(n)) => write!(out, "{n}").unwrap(),
            _ => out.extend_from_slice(b"null"),
        },
        Mp::F32(f) => write_f64(f64::from(*f), out),
        Mp::F64(f) => write_f64(*f, out),
        Mp::String(s) => write_str(s.as_bytes(), out),
        Mp::Binary(b) => {
            write!(out, r#"{{"_placeholder":true,"num":{}}}"#, attachments.len()).unwrap();
            attachments.push(Bytes::copy_from_slice(b));
        }
        Mp::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json(item, out, attachments);
            }
            out.push(b']');
        }
        Mp::Map(entries) => {
            out.push(b'{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                match k {
                    Mp::String(s) => write_str(s.as_bytes(), out),
                    other => write_str(other.to_string().as_bytes(), out),
                }
                out.push(b':');
                write_json(v, out, attachments);
            }
            out.push(b'}');
        }
    }
}

fn write_f64(f: f64, out: &mut Vec<u8>) {
    // unwrap: writing to a Vec cannot fail (serde_json writes a non-finite
    // float as `null`).
    serde_json::to_writer(out, &f).unwrap();
}

fn write_str(s: &[u8], out: &mut Vec<u8>) {
    let s = String::from_utf8_lossy(s);
    // unwrap: writing to a Vec cannot fail.
    serde_json::to_writer(out, &*s).unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Broadcast {
        Broadcast {
            uid: "abc123".into(),
            nsp: "/".into(),
            args: ByteString::from_static(r#"["chat",{"text":"hi","blob":{"_placeholder":true,"num":0}}]"#),
            attachments: vec![Bytes::from_static(&[1, 2, 3])],
            rooms: vec!["lobby".into()],
            except: vec!["sock1".into()],
        }
    }

    fn args_of(text: &str, attachments: Vec<Bytes>) -> Broadcast {
        Broadcast {
            args: text.to_owned().into(),
            attachments,
            ..sample()
        }
    }

    #[test]
    fn round_trips_with_binary() {
        let b = sample();
        assert_eq!(decode(&encode(&b).unwrap()).unwrap(), b);
    }

    #[test]
    fn binary_travels_as_msgpack_bin() {
        let bytes = encode(&sample()).unwrap();
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
    fn members_keep_their_order_and_numbers_their_values() {
        let text = r#"["e",{"zeta":1,"alpha":{"yak":2,"bee":[3,{"q":1,"c":2}]},"10":2,"2":3,"":4},"\u00e9\/",[1.0,1e3,-0,-1,18446744073709551615,12345678901234567890123,0.1,5e-324],null,true]"#;
        let b = decode(&encode(&args_of(text, vec![])).unwrap()).unwrap();
        assert_eq!(
            &*b.args,
            r#"["e",{"zeta":1,"alpha":{"yak":2,"bee":[3,{"q":1,"c":2}]},"10":2,"2":3,"":4},"é/",[1.0,1000.0,-0.0,-1,18446744073709551615,1.2345678901234568e+22,0.1,5e-324],null,true]"#
        );
    }

    #[test]
    fn placeholders_are_numbered_depth_first_as_the_sender_did() {
        let text = r#"["e",{"z":{"_placeholder":true,"num":1},"a":[{"num":0,"_placeholder":true}],"m":{"_placeholder":true,"num":2,"x":1},"n":{"_placeholder":true,"num":9}}]"#;
        let (a, b) = (Bytes::from_static(b"a"), Bytes::from_static(b"b"));
        let got = decode(&encode(&args_of(text, vec![a.clone(), b.clone()])).unwrap()).unwrap();
        // "z" holds attachment 1 and comes first: it is 0 on arrival. Not
        // placeholders: one with a third member, one without an attachment.
        assert_eq!(
            &*got.args,
            r#"["e",{"z":{"_placeholder":true,"num":0},"a":[{"_placeholder":true,"num":1}],"m":{"_placeholder":true,"num":2,"x":1},"n":{"_placeholder":true,"num":9}}]"#
        );
        assert_eq!(got.attachments, vec![b, a]);
    }

    #[test]
    fn what_msgpack_cannot_carry_is_an_error() {
        for text in [r#"["e","\ud83d"]"#, r#"["e",1e400]"#] {
            assert!(
                matches!(encode(&args_of(text, vec![])), Err(WireError::Unencodable(_))),
                "{text}"
            );
        }
        // And what JSON cannot: strings that are not UTF-8 are written lossily.
        let data = Mp::Array(vec![
            Mp::from("e"),
            // fixstr of 2 bytes: "a", then a byte UTF-8 has no use for.
            rmpv::decode::read_value(&mut &[0xa2, b'a', 0xff][..]).unwrap(),
            Mp::F64(f64::NAN),
            Mp::Map(vec![(Mp::from(1), Mp::Nil)]),
        ]);
        assert_eq!(msgpack_to_json(&data).0, "[\"e\",\"a\u{fffd}\",null,{\"1\":null}]");
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
