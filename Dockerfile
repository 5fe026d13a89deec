# Multi-stage build: compile in the Rust image, run on distroless.
# TLS roots are compiled in (webpki-roots), so the runtime image needs no CA bundle.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin poolgate

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/poolgate /usr/local/bin/poolgate
COPY config/ /etc/poolgate/
# In a container both listeners must bind all interfaces; expose only 8080 outside the pod.
ENV POOLGATE_LISTEN=0.0.0.0:8080 POOLGATE_ADMIN_LISTEN=0.0.0.0:9090
EXPOSE 8080 9090
USER nonroot
ENTRYPOINT ["/usr/local/bin/poolgate"]
CMD ["--config", "/etc/poolgate/poolgate.toml"]
