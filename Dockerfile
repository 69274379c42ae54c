# syntax=docker/dockerfile:1
# The worker image: docker build -t internal-task-gateway:0.1.0 .
# Both binaries are in it: itg-worker (the entrypoint) and itgctl (publish events, watch replies).

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY crates ./crates
# The registry and target caches survive between builds; the binaries are copied out of the cache mount.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin itg-worker --bin itgctl \
 && install -D -m 0755 -t /out target/release/itg-worker target/release/itgctl

# glibc and libgcc, no shell, no package manager. TLS is rustls: no OpenSSL needed.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/itg-worker /out/itgctl /usr/local/bin/
USER 65532:65532
# admin.address: /healthz, /readyz, /metrics (set admin.address to 0.0.0.0:9464 to reach it).
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/itg-worker"]
CMD ["--config", "/etc/itg/config.yaml"]
