# syntax=docker/dockerfile:1
# roomcast's image: built in the Rust image, run from a slim Debian as a
# non-root user. Configuration comes from ROOMCAST__<SECTION>__<KEY>
# variables (see config/default.toml); docker-compose.yml runs a cluster.
# tests/deployment.rs keeps this file, docker-compose.yml and
# deploy/haproxy.cfg consistent.

# The socket.io-client browser bundle and the Socket.IO Admin UI's files, from npm, which build.rs embeds.
FROM node:20-bookworm-slim AS web
WORKDIR /web
COPY web/package.json web/package-lock.json ./
RUN npm ci --no-audit --no-fund

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
COPY --from=web /web/node_modules web/node_modules
# The registry and the target dir are cache mounts, so a rebuild after a
# source change compiles roomcast only. The binary is copied out of the
# cache mount to a path the next stage can read. The release profile
# (Cargo.toml) ships it without debug info and stripped; the `profiling`
# profile keeps symbols for perf (docs/profiling.md).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin roomcast \
    && cp target/release/roomcast /usr/local/bin/roomcast

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin roomcast
COPY --from=build /usr/local/bin/roomcast /usr/local/bin/roomcast
# bash and its /dev/tcp: no HTTP client is installed just for the check.
COPY --chmod=755 deploy/healthcheck /usr/local/bin/roomcast-healthcheck
# The production profile (docker-compose.yml sets ROOMCAST_CONFIG to it).
COPY config/production.toml /etc/roomcast/production.toml
# The working directory holds data/ (the default SQLite audit log and the
# audit spill file), writable by the roomcast user.
WORKDIR /var/lib/roomcast
# data/ exists in the image, owned by roomcast, so that a volume mounted
# there (docker-compose.yml) starts with that owner.
RUN mkdir -p /var/lib/roomcast/data \
    && chown roomcast:roomcast /var/lib/roomcast /var/lib/roomcast/data \
    && chmod 0700 /var/lib/roomcast/data
USER roomcast
ENV ROOMCAST__SERVER__HOST=0.0.0.0 \
    ROOMCAST__SERVER__PORT=3000 \
    ROOMCAST__LOG__FORMAT=json
EXPOSE 3000
# GETs the health route of the port in ROOMCAST__SERVER__PORT.
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 CMD ["roomcast-healthcheck"]
# SIGTERM drains (see config/default.toml, server.drain_window_ms); the
# process exits within drain_window_ms + audit.shutdown_flush_ms (12 s by
# default), longer than `docker stop`'s default 10 s: use `docker stop -t
# 15` (compose sets stop_grace_period: 15s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["roomcast"]
