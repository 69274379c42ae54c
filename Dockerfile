# syntax=docker/dockerfile:1
# The worker image, built and pushed by the operator (none is published; docs/deploy.md says how):
#   docker build -t REGISTRY/internal-task-gateway:0.1.0 . && docker push REGISTRY/internal-task-gateway:0.1.0
# Both binaries are in it: itg-worker (the entrypoint) and itgctl (publish events, watch replies).
#
# Base images are pinned by digest, so a rebuild starts from the same bytes. These digests were each found
# pinned to the same tag in several independent public Dockerfiles (rust:1-bookworm then held Rust 1.98.1);
# they were not read from the registries here, which the build machines cannot reach. Before a release,
# and to move to a newer base, read each tag's digest (`docker buildx imagetools inspect rust:1-bookworm`,
# `... gcr.io/distroless/cc-debian12:nonroot`) and replace it here.

FROM rust:1-bookworm@sha256:93ce27a88655056a51dbdd8f5f2d7ddc071c7b0070fb288a37b5a285fc83971e AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY crates ./crates
# Cargo.toml declares the bench target. cargo 1.95 looks for its file only when the bench is built, but
# `cargo bench` or `--all-targets` in this stage (and older cargo for any build) refuses the manifest without it.
COPY benches ./benches
# The registry and target caches survive between builds; the binaries are copied out of the cache mount.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin itg-worker --bin itgctl \
 && install -D -m 0755 -t /out target/release/itg-worker target/release/itgctl

# glibc and libgcc, no shell, no package manager. TLS is rustls: no OpenSSL needed.
FROM gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f
COPY --from=builder /out/itg-worker /out/itgctl /usr/local/bin/
USER 65532:65532
# admin.address: /healthz, /readyz, /metrics (set admin.address to 0.0.0.0:9464 to reach it).
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/itg-worker"]
CMD ["--config", "/etc/itg/config.yaml"]
