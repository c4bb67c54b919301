//! Covers payload fidelity: what a publisher sends is what every subscriber
//! receives, through every path a payload takes, with raw Engine.IO /
//! Socket.IO frames so that the exact text sent and received is compared.
//!
//! Two levels are asserted, by path:
//!
//! - **As written** (one node: a client's `publish`, the HTTP API's
//!   `POST /api/v1/publish`, the testing hooks): the subscriber's frame is
//!   exactly `42["<event>",<data>]` where `<data>` is, byte for byte, the
//!   JSON text of `data` as the publisher wrote it: every object's keys in
//!   the order written (integer-like keys included), strings with the
//!   escapes written (`\u00e9`, `\/`, surrogate pairs), numbers with the
//!   text written (`1.0`, `1e3`, `-0`, `12345678901234567890123`, `0.1`),
//!   and binary placeholders where they were. The inputs hold no
//!   insignificant whitespace (no Socket.IO client writes any), so whether
//!   a relay keeps it is not asserted. Why the text and not the value: the
//!   server needs nothing from `data` but where it ends (and the
//!   placeholders' count), JSON text is self-delimiting, and a Node.js
//!   Socket.IO server hands a JS client the value it was sent; clients in
//!   languages that keep more than JS (Python's big integers and `1.0` vs
//!   `1`, Java's BigDecimal) or that check a signature over the text get
//!   it only if the text is relayed as it is. A text that JSON's grammar
//!   allows and a client writes, which the server's own parser refuses
//!   (a string cut inside a surrogate pair, as JS's `JSON.stringify` writes
//!   it; an integer of 400 digits, as Python's `json.dumps` writes it), is
//!   relayed too, and the publisher keeps its connection.
//! - **Same value, same order** (across Redis, to another roomcast node):
//!   the adapter's wire format is the official `@socket.io/redis-adapter`'s
//!   (or, in streams mode, `@socket.io/redis-streams-adapter`'s), msgpack
//!   (classic; sharded and streams with binary) or JSON that the sending
//!   node builds (sharded, streams), which Node.js nodes read too: msgpack has no text
//!   for a number. Asserted: the same structure, every object's keys in
//!   the order written, strings equal (escapes resolved), integers within
//!   64 bits exact, other numbers the same IEEE-754 double (so `1.0` may
//!   arrive as `1`, `1e3` as `1000`, `-0` as `0`), binary attachments
//!   with the same bytes in the same order, placeholders numbered
//!   depth-first (as the sender numbered them).
//!
//! The cases: the reported payload `{"zeta":1,"alpha":{"yak":2,"bee":[3,
//! {"q":1,"c":2}]}}`, integer-like keys, arrays of objects nested deep,
//! unicode and escapes, numbers as written (in an array and as object
//! values), scalars, and binary attachments with placeholders inside nested
//! objects with keys on either side of them.
//!
//! The Node.js clients' view of the same paths (socket.io-client,
//! `@socket.io/redis-emitter`, a Node.js Socket.IO node sharing the adapter)
//! is tests/clients/js/fidelity.test.mjs and tests/cluster/fidelity.test.mjs;
//! python-socketio's is tests/clients/py/test_fidelity.py.
#![cfg(unix)]

mod common;

use std::fmt;

use common::eio::{next, send, Polling, Ws};
use common::redis::{client, connected, subscribe, text, PrivateRedis, Proto};
use common::{TestServer, SIO};
use roomcast::config::Settings;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use tokio_tungstenite::tungstenite::Message;

const ROOM: &str = "fidelity";
const API_KEY: &str = "fidelity-test-key-0123456789";

/// `(name, data as the publisher writes it)`.
const CASES: &[(&str, &str)] = &[
    (
        "the reported payload",
        r#"{"zeta":1,"alpha":{"yak":2,"bee":[3,{"q":1,"c":2}]}}"#,
    ),
    ("integer-like keys", r#"{"b":1,"10":2,"2":3,"":4,"a":5,"1":6}"#),
    (
        "arrays of objects, nested",
        r#"[{"z":1,"a":2},{"y":[{"x":null,"b":true},{"m":[],"d":{}}]},[{"k":{"j":{"i":"deep","h":[{"g":0,"f":1}]}}}]]"#,
    ),
    (
        "unicode and escapes",
        r#"{"é":"\u00e9","emoji":"😀","pair":"\ud83d\ude00","ctl":"a\tb\nc\u0000\u001f","slash":"\/","quote":"\"\\","seps":"\u2028\u2029","han":"中文","Ωkey\u0041":"ok"}"#,
    ),
    (
        "numbers as written, in an array",
        r#"[1.0,1e3,1E3,1e+3,-0,-0.0,12345678901234567890123,0.1,1.5e-7,100,-1,9007199254740993,18446744073709551616,5e-324,1.7976931348623157e308,0.30000000000000004]"#,
    ),
    (
        "numbers as written, as values",
        r#"{"price":10.50,"qty":3,"ratio":2.50e-1,"big":1E21,"neg":-0.0}"#,
    ),
    ("a string", r#""caf\u00e9 \/ ok""#),
    ("a number", "1.0"),
    ("null", "null"),
    ("an empty object", "{}"),
];

/// Texts JSON's grammar allows that a client writes and `serde_json::Value`
/// refuses: `(name, data)`.
const REFUSED_BY_VALUE: &[(&str, &str)] = &[
    // JSON.stringify("😀".slice(0, 1)) in any JS engine since ES2019.
    ("a string cut inside a surrogate pair", r#"{"cut":"\ud83d","z":0}"#),
    // Python: json.dumps({"n": 10**400}) (0 and "after" follow to show the
    // rest arrives too).
    (
        "an integer of 401 digits",
        "{\"n\":10000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000,\"after\":0}",
    ),
];

/// Binary attachments with placeholders inside nested objects, keys on
/// either side of them, and numbers as written: `(data, attachments)`.
const BINARY_DATA: &str = r#"{"zeta":{"_placeholder":true,"num":0},"alpha":[{"yak":{"_placeholder":true,"num":1},"bee":1.0}],"mid":{"q":"x","c":[{"_placeholder":true,"num":2},{"z":1,"a":2}]}}"#;
const BINARY_ATTACHMENTS: [&[u8]; 3] = [&[1, 2, 3], &[0xff, 0, 0xfe, 0x80], &[]];

// ------------------------------------------------------------ the servers

fn settings(tweak: impl FnOnce(&mut Settings)) -> Settings {
    common::settings(|s| {
        common::quiet(s);
        s.api.keys = vec![API_KEY.into()];
        tweak(s);
    })
}

fn node() -> TestServer {
    common::spawn(settings(|_| {}))
}

fn cluster_node(redis: &PrivateRedis, proto: Proto) -> TestServer {
    let url = redis.url();
    common::spawn(settings(move |s| {
        s.redis.url = url;
        proto.apply(s);
        s.redis.command_timeout_ms = 500;
        s.redis.reconnect_max_ms = 200;
    }))
}

// ----------------------------------------------------------- the clients

/// `42<id>["publish",{"room":…,"event":…,"data":<data>}]`, the text as given.
fn publish_frame(id: u32, event: &str, data: &str) -> String {
    format!(r#"42{id}["publish",{{"room":"{ROOM}","event":"{event}","data":{data}}}]"#)
}

/// What a subscriber must receive, as written: `42["<event>",<data>]`.
fn event_frame(event: &str, data: &str) -> String {
    format!(r#"42["{event}",{data}]"#)
}

/// Publishes `data` as written through `ws` and reads the ack, which must be
/// a success. `Err` with what came instead (the connection closed: the
/// server refused the text).
async fn publish_raw(ws: &mut Ws, id: u32, event: &str, data: &str) -> Result<(), String> {
    send(ws, publish_frame(id, event, data)).await;
    loop {
        match next(ws).await {
            Message::Text(t) if t.as_str() == "2" => send(ws, "3").await,
            Message::Text(t) if t.starts_with(&format!("43{id}[{{\"ok\":true")) => return Ok(()),
            Message::Text(t) => return Err(format!("the publish was answered {t}")),
            Message::Close(frame) => {
                return Err(format!(
                    "the server closed the publisher's connection ({frame:?}) instead of relaying it"
                ))
            }
            other => return Err(format!("the publish was answered with {other:?}")),
        }
    }
}

/// A client in "/" subscribed to `ROOM`.
async fn member(server: &TestServer) -> Ws {
    let mut ws = client(server).await;
    subscribe(&mut ws, ROOM).await;
    ws
}

/// A long-polling client in "/" subscribed to `ROOM`.
async fn polling_member(server: &TestServer) -> Polling {
    let p = Polling::open(server, SIO).await;
    p.post_ok("40").await;
    let connected = p.get_ok().await;
    assert!(connected.starts_with(r#"40{"sid":"#), "{connected}");
    p.post_ok(format!(r#"421["subscribe",{{"room":"{ROOM}"}}]"#)).await;
    assert_eq!(p.get_ok().await, r#"431[{"ok":true}]"#);
    p
}

/// POSTs `body` (as written) to the HTTP API's publish.
async fn api_publish(server: &TestServer, body: String) -> (u16, String) {
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/publish", server.http()))
        .bearer_auth(API_KEY)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .expect("an API answer");
    (resp.status().as_u16(), resp.text().await.unwrap_or_default())
}

/// The mismatches found, one paragraph each; fails listing all of them.
#[derive(Default)]
struct Findings(Vec<String>);

impl Findings {
    fn check(&mut self, what: String, sent: &str, want: &str, got: &str) {
        if got != want {
            self.0.push(format!(
                "{what}:\n    sent     {sent}\n    expected {want}\n    received {got}"
            ));
        }
    }

    fn add(&mut self, what: String) {
        self.0.push(what);
    }

    fn assert_none(self, path: &str) {
        assert!(
            self.0.is_empty(),
            "{path}: {} payload(s) did not arrive as sent:\n\n{}",
            self.0.len(),
            self.0.join("\n\n")
        );
    }
}

// ------------------------------------------------ one node: as written

#[actix_web::test]
async fn a_client_publish_reaches_subscribers_as_written() {
    let server = node();
    let mut publisher = client(&server).await;
    let mut ws = member(&server).await;
    let polling = polling_member(&server).await;
    let mut findings = Findings::default();
    for (i, (name, data)) in CASES.iter().enumerate() {
        let id = 10 + i as u32;
        if let Err(why) = publish_raw(&mut publisher, id, "chat", data).await {
            panic!("{name}: {why}");
        }
        let want = event_frame("chat", data);
        let got = text(&mut ws).await;
        findings.check(format!("{name} (WebSocket subscriber)"), data, &want, &got);
        let got = polling.get_ok().await;
        findings.check(format!("{name} (long-polling subscriber)"), data, &want, &got);
    }
    findings.assert_none("client publish, one node");
}

#[actix_web::test]
async fn a_binary_publish_keeps_its_placeholders_keys_and_attachments() {
    let server = node();
    let mut publisher = client(&server).await;
    let mut sub = member(&server).await;
    let n = BINARY_ATTACHMENTS.len();
    let frame = format!(r#"45{n}-7["publish",{{"room":"{ROOM}","event":"blob","data":{BINARY_DATA}}}]"#);
    send(&mut publisher, frame).await;
    for a in BINARY_ATTACHMENTS {
        send(&mut publisher, Message::binary(a.to_vec())).await;
    }
    let ack = text(&mut publisher).await;
    assert!(ack.starts_with(r#"437[{"ok":true"#), "{ack}");

    let mut findings = Findings::default();
    let want = format!(r#"45{n}-["blob",{BINARY_DATA}]"#);
    let got = text(&mut sub).await;
    findings.check("binary event (text part)".into(), BINARY_DATA, &want, &got);
    for (i, a) in BINARY_ATTACHMENTS.iter().enumerate() {
        match next(&mut sub).await {
            Message::Binary(b) if b.as_ref() == *a => {}
            other => findings.add(format!("attachment {i}: expected {a:?}, received {other:?}")),
        }
    }
    findings.assert_none("binary client publish, one node");
}

#[actix_web::test]
async fn an_http_api_publish_reaches_subscribers_as_written() {
    let server = node();
    let mut sub = member(&server).await;
    let mut findings = Findings::default();
    for (name, data) in CASES {
        // The single-room and the several-rooms forms.
        for body in [
            format!(r#"{{"room":"{ROOM}","event":"news","data":{data}}}"#),
            format!(r#"{{"rooms":["{ROOM}","elsewhere"],"event":"news","data":{data}}}"#),
        ] {
            let (status, answer) = api_publish(&server, body.clone()).await;
            assert_eq!(status, 202, "{name}: {body} → {answer}");
            let got = text(&mut sub).await;
            findings.check(format!("{name} ({body:.20}…)"), data, &event_frame("news", data), &got);
        }
    }
    findings.assert_none("HTTP API publish, one node");
}

#[actix_web::test]
async fn the_testing_hooks_echo_arguments_as_written() {
    let server = common::spawn(settings(|s| s.testing.hooks = true));
    let mut findings = Findings::default();

    // The CONNECT payload comes back in "auth".
    let auth = CASES[0].1;
    let (mut ws, _) = common::eio::open(&server, SIO).await;
    send(&mut ws, format!("40{auth}")).await;
    let connected = text(&mut ws).await;
    assert!(connected.starts_with(r#"40{"sid":"#), "{connected}");
    let got = text(&mut ws).await;
    findings.check(
        "CONNECT payload echoed in auth".into(),
        auth,
        &event_frame("auth", auth),
        &got,
    );

    for (i, (name, data)) in CASES.iter().enumerate() {
        // "message" → "message-back" with every argument.
        send(&mut ws, format!(r#"42["message",{data},{data}]"#)).await;
        let got = text(&mut ws).await;
        let want = format!(r#"42["message-back",{data},{data}]"#);
        findings.check(format!("{name} (message → message-back)"), data, &want, &got);
        // "message-with-ack" → the ack carries the arguments.
        let id = 20 + i;
        send(&mut ws, format!(r#"42{id}["message-with-ack",{data}]"#)).await;
        let got = text(&mut ws).await;
        findings.check(
            format!("{name} (message-with-ack)"),
            data,
            &format!("43{id}[{data}]"),
            &got,
        );
    }

    // Binary, both hooks.
    let n = BINARY_ATTACHMENTS.len();
    send(&mut ws, format!(r#"45{n}-["message",{BINARY_DATA}]"#)).await;
    for a in BINARY_ATTACHMENTS {
        send(&mut ws, Message::binary(a.to_vec())).await;
    }
    let got = text(&mut ws).await;
    let want = format!(r#"45{n}-["message-back",{BINARY_DATA}]"#);
    findings.check("binary message → message-back".into(), BINARY_DATA, &want, &got);
    for (i, a) in BINARY_ATTACHMENTS.iter().enumerate() {
        match next(&mut ws).await {
            Message::Binary(b) if b.as_ref() == *a => {}
            other => findings.add(format!(
                "message-back attachment {i}: expected {a:?}, received {other:?}"
            )),
        }
    }
    findings.assert_none("testing hooks");
}

#[actix_web::test]
async fn texts_the_value_parser_refuses_are_relayed_and_the_publisher_stays() {
    let server = node();
    let mut sub = member(&server).await;
    let mut findings = Findings::default();
    for (name, data) in REFUSED_BY_VALUE {
        // A publisher of its own per case: a refusal closes it.
        let mut publisher = client(&server).await;
        match publish_raw(&mut publisher, 1, "chat", data).await {
            Err(why) => findings.add(format!("{name}: {why}\n    sent {data:.120}")),
            Ok(()) => {
                let got = text(&mut sub).await;
                findings.check(name.to_string(), data, &event_frame("chat", data), &got);
            }
        }
        let (status, answer) =
            api_publish(&server, format!(r#"{{"room":"{ROOM}","event":"news","data":{data}}}"#)).await;
        if status == 202 {
            let got = text(&mut sub).await;
            findings.check(format!("{name} (HTTP API)"), data, &event_frame("news", data), &got);
        } else {
            findings.add(format!("{name} (HTTP API): refused with {status} {answer}"));
        }
    }
    findings.assert_none("texts serde_json::Value refuses");
}

// ------------------------------------- across Redis: same value, same order

common::redis::in_every_mode!(
    publishes_reach_another_node_in_order,
    binary_publishes_reach_another_node_in_order
);

/// A client's publish and an HTTP API publish on node 1 reach a subscriber
/// on node 2 with the same values in the same order.
async fn publishes_reach_another_node_in_order(proto: Proto) {
    let redis = PrivateRedis::start();
    let (n1, n2) = (cluster_node(&redis, proto), cluster_node(&redis, proto));
    connected(&n1, true).await;
    connected(&n2, true).await;
    let mut publisher = client(&n1).await;
    let mut sub = member(&n2).await;
    let mut findings = Findings::default();
    for (i, (name, data)) in CASES.iter().enumerate() {
        let want = event_frame("chat", data);
        if let Err(why) = publish_raw(&mut publisher, 10 + i as u32, "chat", data).await {
            panic!("{name}: {why}");
        }
        let got = text(&mut sub).await;
        findings.check_value(format!("{name} (client publish, node 1 → node 2)"), data, &want, &got);

        let body = format!(r#"{{"room":"{ROOM}","event":"news","data":{data}}}"#);
        let (status, answer) = api_publish(&n1, body).await;
        assert_eq!(status, 202, "{name}: {answer}");
        let want = event_frame("news", data);
        let got = text(&mut sub).await;
        findings.check_value(format!("{name} (HTTP API on node 1 → node 2)"), data, &want, &got);
    }
    findings.assert_none(&format!("across Redis ({proto:?})"));
}

/// A binary publish on node 1 reaches node 2 with its keys in order and its
/// attachments.
async fn binary_publishes_reach_another_node_in_order(proto: Proto) {
    let redis = PrivateRedis::start();
    let (n1, n2) = (cluster_node(&redis, proto), cluster_node(&redis, proto));
    connected(&n1, true).await;
    connected(&n2, true).await;
    let mut publisher = client(&n1).await;
    let mut sub = member(&n2).await;
    let n = BINARY_ATTACHMENTS.len();
    send(
        &mut publisher,
        format!(r#"45{n}-7["publish",{{"room":"{ROOM}","event":"blob","data":{BINARY_DATA}}}]"#),
    )
    .await;
    for a in BINARY_ATTACHMENTS {
        send(&mut publisher, Message::binary(a.to_vec())).await;
    }
    let ack = text(&mut publisher).await;
    assert!(ack.starts_with(r#"437[{"ok":true"#), "{ack}");

    // Compared with every placeholder replaced by its attachment's bytes:
    // the value a client sees.
    let got = text(&mut sub).await;
    let announced = got
        .strip_prefix("45")
        .and_then(|rest| rest.split_once('-'))
        .and_then(|(count, _)| count.parse::<usize>().ok())
        .unwrap_or(0);
    let mut received = Vec::new();
    for _ in 0..announced {
        match next(&mut sub).await {
            Message::Binary(b) => received.push(b.to_vec()),
            other => panic!("expected attachment {} of {announced}, got {other:?}", received.len()),
        }
    }
    let sent: Vec<Vec<u8>> = BINARY_ATTACHMENTS.iter().map(|a| a.to_vec()).collect();
    let want = format!(r#"45{n}-["blob",{BINARY_DATA}]"#);
    let mut findings = Findings::default();
    findings.check_binary_value(
        "binary event, node 1 → node 2".into(),
        (&want, &sent),
        (&got, &received),
    );
    findings.assert_none(&format!("binary across Redis ({proto:?})"));
}

// ------------------------------------------- JSON values with their order

impl Findings {
    /// Compares two Socket.IO frames (`4<type>[<n>-]<json>`) by the level
    /// "same value, same order" of the module documentation.
    fn check_value(&mut self, what: String, sent: &str, want: &str, got: &str) {
        let (want_head, want_json) = split_frame(want);
        let (got_head, got_json) = split_frame(got);
        let same = want_head == got_head
            && match (ordered(want_json), ordered(got_json)) {
                (Ok(w), Ok(g)) => w == g,
                _ => false,
            };
        if !same {
            self.0.push(format!(
                "{what} (compared as values in order):\n    sent     {sent}\n    expected {want}\n    received {got}"
            ));
        }
    }
}

impl Findings {
    /// As [`Findings::check_value`], for binary events: each frame with its
    /// attachments, compared with the attachments in their placeholders'
    /// places.
    fn check_binary_value(&mut self, what: String, want: (&str, &[Vec<u8>]), got: (&str, &[Vec<u8>])) {
        let resolved = |(frame, attachments): (&str, &[Vec<u8>])| {
            let (head, json) = split_frame(frame);
            let value = ordered(json).map(|v| v.resolve(attachments));
            (head.to_owned(), value)
        };
        let (want_head, want_value) = resolved(want);
        let (got_head, got_value) = resolved(got);
        let same = want_head == got_head && matches!((&want_value, &got_value), (Ok(w), Ok(g)) if w == g);
        if !same {
            self.0.push(format!(
                "{what} (compared as values in order, attachments in their places):\n    \
                 expected {} with {:?}\n    received {} with {:?}",
                want.0, want.1, got.0, got.1
            ));
        }
    }
}

/// A frame's head (`42`, `452-`) and its JSON text.
fn split_frame(frame: &str) -> (&str, &str) {
    let at = frame.find(['[', '{']).unwrap_or(frame.len());
    frame.split_at(at)
}

fn ordered(text: &str) -> Result<Ordered, serde_json::Error> {
    serde_json::from_str(text)
}

/// A JSON value with every object's members in the order of the text (a
/// `serde_json::Value` sorts them unless serde_json's `preserve_order` is
/// on, which this test must not depend on).
#[derive(Debug)]
enum Ordered {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Array(Vec<Ordered>),
    Object(Vec<(String, Ordered)>),
    /// A binary attachment in the place of its placeholder.
    Bin(Vec<u8>),
}

impl Ordered {
    /// Every placeholder `{"_placeholder":true,"num":n}` replaced by
    /// attachment n (left as it is when there is no such attachment).
    fn resolve(self, attachments: &[Vec<u8>]) -> Ordered {
        match self {
            Ordered::Array(items) => Ordered::Array(items.into_iter().map(|i| i.resolve(attachments)).collect()),
            Ordered::Object(members) => {
                if let [(p, Ordered::Bool(true)), (n, Ordered::Int(num))] = members.as_slice() {
                    let found = usize::try_from(*num).ok().and_then(|i| attachments.get(i));
                    if let (true, Some(bytes)) = (p == "_placeholder" && n == "num", found) {
                        return Ordered::Bin(bytes.clone());
                    }
                }
                Ordered::Object(members.into_iter().map(|(k, v)| (k, v.resolve(attachments))).collect())
            }
            other => other,
        }
    }
}

impl PartialEq for Ordered {
    fn eq(&self, other: &Self) -> bool {
        use Ordered::*;
        match (self, other) {
            (Null, Null) => true,
            (Bool(a), Bool(b)) => a == b,
            (Int(a), Int(b)) => a == b,
            // Numbers compare as the double a JavaScript client would see.
            (Int(a), Float(b)) | (Float(b), Int(a)) => *a as f64 == *b,
            (Float(a), Float(b)) => a == b,
            (Str(a), Str(b)) => a == b,
            (Array(a), Array(b)) => a == b,
            (Object(a), Object(b)) => a == b,
            (Bin(a), Bin(b)) => a == b,
            _ => false,
        }
    }
}

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Ordered, E> {
                Ok(Ordered::Null)
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Ordered, E> {
                Ok(Ordered::Bool(b))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Ordered, E> {
                Ok(Ordered::Int(n.into()))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Ordered, E> {
                Ok(Ordered::Int(n.into()))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Ordered, E> {
                Ok(Ordered::Float(n))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Ordered, E> {
                Ok(Ordered::Str(s.to_owned()))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Ordered, E> {
                Ok(Ordered::Str(s))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Ordered, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Ordered::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, Ordered>()? {
                    members.push(member);
                }
                Ok(Ordered::Object(members))
            }
        }
        d.deserialize_any(V)
    }
}

#[test]
fn the_ordered_comparison_tells_order_and_values_apart() {
    let same = |a: &str, b: &str| ordered(a).unwrap() == ordered(b).unwrap();
    assert!(same(r#"{"b":1,"a":[1.0,1e3]}"#, r#"{"b":1,"a":[1,1000]}"#));
    assert!(!same(r#"{"b":1,"a":2}"#, r#"{"a":2,"b":1}"#));
    assert!(!same(r#"[{"z":1,"a":2}]"#, r#"[{"a":2,"z":1}]"#));
    assert!(same(r#""\u00e9""#, r#""é""#));
    assert!(!same("9007199254740993", "9007199254740992"));
    assert!(same("12345678901234567890123", "1.2345678901234568e22"));
    assert!(!same("0.1", "0.10000000000000002"));
    assert!(!same(r#"{"a":1}"#, r#"{"a":1,"b":2}"#));

    // Placeholders compare by the bytes they stand for, not their numbers.
    let resolved = |text: &str, attachments: &[&[u8]]| {
        let attachments: Vec<Vec<u8>> = attachments.iter().map(|a| a.to_vec()).collect();
        ordered(text).unwrap().resolve(&attachments)
    };
    let x = r#"{"b":{"_placeholder":true,"num":0},"a":[{"_placeholder":true,"num":1}]}"#;
    let y = r#"{"b":{"_placeholder":true,"num":1},"a":[{"_placeholder":true,"num":0}]}"#;
    assert_eq!(resolved(x, &[b"b", b"a"]), resolved(y, &[b"a", b"b"]));
    assert_ne!(resolved(x, &[b"b", b"a"]), resolved(y, &[b"b", b"a"]));
}
