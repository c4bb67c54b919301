-- The audit log (see src/audit/store.rs). Text and integer columns only, the
-- same as the PostgreSQL schema, so one set of statements serves both.
CREATE TABLE audit_events (
    -- Insertion order (roomcast audit --follow).
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    -- UUID v7 made when the event happened: inserts are idempotent by it,
    -- and it orders queries and their cursor.
    id TEXT NOT NULL UNIQUE,
    -- RFC 3339 UTC with microseconds; sorts as time.
    at TEXT NOT NULL,
    node TEXT NOT NULL,
    kind TEXT NOT NULL,
    reason TEXT NOT NULL,
    code INTEGER NOT NULL,
    sid TEXT,
    socket_id TEXT,
    namespace TEXT,
    transport TEXT,
    peer TEXT,
    user_agent TEXT,
    user_id TEXT,
    detail TEXT NOT NULL,
    excerpt TEXT
);
CREATE INDEX audit_events_at ON audit_events (at);
CREATE INDEX audit_events_kind ON audit_events (kind, id);
CREATE INDEX audit_events_sid ON audit_events (sid);
CREATE INDEX audit_events_socket_id ON audit_events (socket_id);
CREATE INDEX audit_events_user_id ON audit_events (user_id);
