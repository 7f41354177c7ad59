# kichhoat in a container: `docker build -t kichhoat .` then
#   docker run -d --name kichhoat -p 8080:8080 -v kichhoat-data:/var/lib/kichhoat \
#     -e KICHHOAT_WEBHOOK_TOKEN=... -v /path/registry.csv:/etc/kichhoat/registry.csv:ro \
#     -e KICHHOAT_REGISTRY=/etc/kichhoat/registry.csv --restart on-failure kichhoat
# A registry is required (KICHHOAT_REGISTRY, mounted read-only), or KICHHOAT_DEMO=true for the demo
# citizens. See the README's "Running it in production".

# Build stage: the release binary (flows and message catalogues are built into it).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY flows ./flows
COPY fixtures ./fixtures
COPY tests ./tests
RUN cargo build --release --locked --bin kichhoat && strip target/release/kichhoat

# Run stage: a slim image, the binary only, a user without a login or a home of its own.
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin kichhoat \
    && mkdir -p /var/lib/kichhoat && chown kichhoat:kichhoat /var/lib/kichhoat && chmod 0700 /var/lib/kichhoat
COPY --from=build /src/target/release/kichhoat /usr/local/bin/kichhoat
USER kichhoat:kichhoat
WORKDIR /var/lib/kichhoat
# The data dir: sled database, key file, audit trail, SMS outbox. Keep it on a volume, and back it up.
VOLUME ["/var/lib/kichhoat"]
ENV KICHHOAT_DATA_DIR=/var/lib/kichhoat \
    KICHHOAT_LISTEN=0.0.0.0:8080 \
    KICHHOAT_LOG_FORMAT=json
EXPOSE 8080
# Readiness: /healthz answers 200 only while the store takes writes (bash's /dev/tcp: no curl needed).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
# SIGTERM shuts down cleanly (docker stop's default); a store write fault exits non-zero, for
# `--restart on-failure` to start it again once the disk has room.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/kichhoat"]
CMD ["serve"]
