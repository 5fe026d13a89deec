# poolgate: multi-stage build. Compile in the Rust image, run on distroless.
# TLS roots are compiled in (webpki-roots), so the runtime image needs no CA bundle.
#
#   docker build -t poolgate .
#   docker run --rm -p 8080:8080 poolgate --config /etc/poolgate/poolgate.toml --demo-upstream
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# benches/ is declared in Cargo.toml ([[bench]]), so the manifest needs it to load.
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin poolgate

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/poolgate /usr/local/bin/poolgate
# The sample configuration (file source, config/pool.json); mount your own over /etc/poolgate.
COPY config/ /etc/poolgate/
# A container must listen on all interfaces to be reachable. The admin port keeps
# the config's loopback address unless POOLGATE_ADMIN_LISTEN is set (a pod sets
# it to 0.0.0.0:9090 for its probes; never expose it outside the pod).
ENV POOLGATE_LISTEN=0.0.0.0:8080
EXPOSE 8080 9090
# distroless "nonroot" (uid 65532), numeric so Kubernetes runAsNonRoot can verify it.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/poolgate"]
CMD ["--config", "/etc/poolgate/poolgate.toml"]
