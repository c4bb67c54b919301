//! The HTTP API under `/api/v1`, for backends: publish to rooms, list rooms
//! and members, disconnect a socket, read the audit log. Bearer API keys from `api.keys`; every
//! error is JSON `{"error":{"code","message"}}`; the OpenAPI document is at
//! `/api/v1/openapi.json` (no key needed).

use std::sync::Arc;

use actix::Addr;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::audit::reader::{AuditReader, Search};
use crate::audit::store::AuditQuery;
use crate::broker::{check_room, looks_like_socket_id, Publish, PublishError};
use crate::cluster::{Cluster, Membership, Unavailable};

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Most rooms (and `except` ids) in one publish.
pub const MAX_TARGETS: usize = 100;

/// What the API handlers share.
pub struct ApiState {
    /// This node and the others.
    pub cluster: Cluster,
    /// Accepted Bearer keys.
    pub keys: Vec<String>,
    /// Configured namespaces.
    pub namespaces: Vec<String>,
    /// Longest room name.
    pub max_room_len: usize,
    /// Members listed per room.
    pub presence_limit: usize,
    /// Queries of the audit log.
    pub audit: Addr<AuditReader>,
}

/// An API error: status, stable code, message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if self.status == StatusCode::UNAUTHORIZED {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        response.json(json!({"error": {"code": self.code, "message": self.message}}))
    }
}

type Data = web::Data<ApiState>;

/// The `/api/v1` scope: the OpenAPI document, then everything else behind
/// [`require_key`].
pub fn scope(state: Data, max_payload: usize) -> actix_web::Scope {
    let json = web::JsonConfig::default()
        .limit(max_payload)
        .error_handler(|err, _| ApiError::bad_request(format!("invalid JSON body: {err}")).into());
    let path = web::PathConfig::default().error_handler(|err, _| ApiError::bad_request(err.to_string()).into());
    let query = web::QueryConfig::default().error_handler(|err, _| ApiError::bad_request(err.to_string()).into());
    web::scope("/api/v1")
        .app_data(state)
        .app_data(json)
        .app_data(path)
        .app_data(query)
        .route("/openapi.json", web::get().to(openapi))
        .service(
            web::scope("")
                .wrap(actix_web::middleware::from_fn(require_key))
                .route("/publish", web::post().to(publish))
                .route("/rooms", web::get().to(rooms))
                .route("/rooms/{room}", web::get().to(room))
                .route("/sockets/{id}/disconnect", web::post().to(disconnect))
                .route("/sockets/{id}/join", web::post().to(join))
                .route("/sockets/{id}/leave", web::post().to(leave))
                .route("/audit", web::get().to(audit))
                .default_service(web::to(|| async {
                    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint or method").error_response()
                })),
        )
}

/// Middleware: answers 401 to a request without a valid key before its
/// handler runs, so before its body is read: a client without a key cannot
/// make the node buffer and parse `engine.max_payload` bytes of JSON per
/// request, nor hold a request open by announcing a body it never sends.
/// (actix-http closes the connection after such an answer, as the body was
/// not read.) The handlers check the key again, which costs nothing and
/// keeps a route added outside this scope closed.
async fn require_key(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse, actix_web::Error> {
    // No state (never: the scope has it) is no key.
    let refused = match req.app_data::<Data>() {
        Some(state) => authorize(req.request(), state).err(),
        None => Some(unauthorized()),
    };
    match refused {
        None => next.call(req).await.map(|r| r.map_into_boxed_body()),
        Some(err) => Ok(req.into_response(err.error_response())),
    }
}

fn authorize(req: &HttpRequest, state: &ApiState) -> Result<(), ApiError> {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(key)
            if state
                .keys
                .iter()
                .any(|k| constant_time_eq(k.as_bytes(), key.as_bytes())) =>
        {
            Ok(())
        }
        _ => Err(unauthorized()),
    }
}

fn unauthorized() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "a valid API key is required (Authorization: Bearer <key>)",
    )
}

/// Compares without stopping at the first difference, so response times
/// do not tell how much of a key was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn namespace(state: &ApiState, nsp: Option<&str>) -> Result<Arc<str>, ApiError> {
    let nsp = nsp.unwrap_or("/");
    if state.namespaces.iter().any(|n| n == nsp) {
        Ok(nsp.into())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_namespace",
            format!("namespace {nsp:?} is not configured"),
        ))
    }
}

/// A name that must be a room (join, leave, members): a socket id is not one.
fn room_name(state: &ApiState, room: &str) -> Result<Arc<str>, ApiError> {
    check_room(room, state.max_room_len)
        .map(|()| room.into())
        .map_err(|why| ApiError::new(StatusCode::BAD_REQUEST, "invalid_room", why.to_string()))
}

/// A publish target: a room, or a socket id (that socket, on any node).
fn target_name(state: &ApiState, name: &str) -> Result<Arc<str>, ApiError> {
    if looks_like_socket_id(name) {
        return Ok(name.into());
    }
    room_name(state, name)
}

impl From<Unavailable> for ApiError {
    fn from(e: Unavailable) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string())
    }
}

async fn openapi() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(OPENAPI)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    namespace: Option<String>,
    room: Option<String>,
    rooms: Option<Vec<String>>,
    event: String,
    /// Present (`null` included) or absent; the JSON text as the backend
    /// wrote it, relayed as it is.
    #[serde(default, deserialize_with = "present")]
    data: Option<Box<RawValue>>,
    except: Option<Vec<String>>,
}

/// Keeps an explicit `null` as `Some("null")` (serde reads it as absent).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

async fn publish(req: HttpRequest, state: Data, body: web::Json<PublishBody>) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let body = body.into_inner();
    let nsp = namespace(&state, body.namespace.as_deref())?;
    let names: Vec<String> = match (body.room, body.rooms) {
        (Some(room), None) => vec![room],
        (None, Some(rooms)) if !rooms.is_empty() && rooms.len() <= MAX_TARGETS => rooms,
        _ => {
            return Err(ApiError::bad_request(format!(
                "give either \"room\" or \"rooms\" (1 to {MAX_TARGETS})"
            )))
        }
    };
    let rooms = names
        .iter()
        .map(|r| target_name(&state, r))
        .collect::<Result<Vec<_>, _>>()?;
    let except = body.except.unwrap_or_default();
    let ids = except.iter().map(|s| s.as_str().into()).collect();
    let publish = Publish::event(nsp, rooms, ids, &body.event, body.data.as_deref(), vec![])
        .map_err(|e: PublishError| ApiError::new(StatusCode::BAD_REQUEST, e.code(), e.to_string()))?;
    if except.len() > MAX_TARGETS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_TARGETS} ids in \"except\""
        )));
    }
    let published = state.cluster.backend_publish(publish).await?;
    let local = published.recipients;
    // Only this node's recipients are known when the answer is sent: the
    // other nodes deliver from Redis without answering (at most once, as
    // the official adapter). Counting them would mean a cluster request per
    // publish, waiting for every node: the answer says what it counts
    // instead. `recipients` is the old name of `local_recipients`, kept for
    // the backends that read it.
    let mut answer = json!({
        "local_recipients": local,
        "cluster": state.cluster.spans_nodes(),
        "recipients": local,
    });
    if let Some(stored) = published.stored {
        // Streams mode: false = Redis could not take it, only this node's
        // members got it.
        answer["stored"] = json!(stored);
    }
    Ok(HttpResponse::Accepted().json(answer))
}

#[derive(Deserialize)]
struct NamespaceQuery {
    namespace: Option<String>,
}

async fn rooms(req: HttpRequest, state: Data, query: web::Query<NamespaceQuery>) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let nsp = namespace(&state, query.namespace.as_deref())?;
    let all = state.cluster.rooms(nsp.clone()).await?;
    let mut body = serde_json::Map::new();
    if let Some(partial) = all.partial {
        body.insert("partial".into(), json!(partial));
    }
    let counts = all.counts;
    let rooms: Vec<Value> = counts
        .iter()
        .map(|(name, n)| json!({"name": name, "members": n}))
        .collect();
    body.insert("namespace".into(), json!(&*nsp));
    body.insert("rooms".into(), json!(rooms));
    Ok(HttpResponse::Ok().json(Value::Object(body)))
}

async fn room(
    req: HttpRequest,
    state: Data,
    path: web::Path<String>,
    query: web::Query<NamespaceQuery>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let nsp = namespace(&state, query.namespace.as_deref())?;
    let room = room_name(&state, &path)?;
    let m = state
        .cluster
        .room_members(nsp.clone(), room.clone(), state.presence_limit)
        .await?;
    let mut body = m.to_json();
    body.insert("namespace".into(), json!(&*nsp));
    body.insert("room".into(), json!(&*room));
    Ok(HttpResponse::Ok().json(Value::Object(body)))
}

#[derive(Deserialize)]
struct DisconnectQuery {
    namespace: Option<String>,
}

async fn disconnect(
    req: HttpRequest,
    state: Data,
    path: web::Path<String>,
    query: web::Query<DisconnectQuery>,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    // The namespace matters only to ask the other nodes: a wrong one is an
    // error only when the socket is not here.
    let nsp = namespace(&state, query.namespace.as_deref());
    let detail = "disconnected through the API".to_owned();
    let found = state.cluster.kick(&path, nsp.as_ref().ok().cloned(), detail).await?;
    if !found && state.cluster.spans_nodes() {
        nsp?;
    }
    if found {
        Ok(HttpResponse::Accepted().json(json!({"disconnected": true})))
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no socket with this id",
        ))
    }
}

/// `GET /audit`: one page of the audit log, newest first.
async fn audit(req: HttpRequest, state: Data, query: web::Query<AuditQuery>) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let filter = query.filter().map_err(ApiError::bad_request)?;
    let page = state
        .audit
        .send(Search(filter))
        .await
        .map_err(|_| Unavailable)?
        .map_err(|e| {
            tracing::warn!("audit query failed: {e}");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the audit database is unavailable",
            )
        })?;
    Ok(HttpResponse::Ok().json(page))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MembershipBody {
    namespace: Option<String>,
    room: String,
}

async fn join(
    req: HttpRequest,
    state: Data,
    path: web::Path<String>,
    body: web::Json<MembershipBody>,
) -> Result<HttpResponse, ApiError> {
    membership(req, state, path, body, true).await
}

async fn leave(
    req: HttpRequest,
    state: Data,
    path: web::Path<String>,
    body: web::Json<MembershipBody>,
) -> Result<HttpResponse, ApiError> {
    membership(req, state, path, body, false).await
}

/// Makes a socket join or leave a room, here or on the node that has it.
async fn membership(
    req: HttpRequest,
    state: Data,
    path: web::Path<String>,
    body: web::Json<MembershipBody>,
    join: bool,
) -> Result<HttpResponse, ApiError> {
    authorize(&req, &state)?;
    let nsp = namespace(&state, body.namespace.as_deref())?;
    let room = room_name(&state, &body.room)?;
    let socket_id: Arc<str> = path.as_str().into();
    match state.cluster.membership(nsp, socket_id, room, join).await? {
        Membership::Done => Ok(HttpResponse::Accepted().json(json!({"ok": true}))),
        Membership::RoomLimit => Err(ApiError::new(
            StatusCode::CONFLICT,
            "room_limit",
            "a room limit was reached",
        )),
        Membership::NotFound => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no socket with this id",
        )),
    }
}
