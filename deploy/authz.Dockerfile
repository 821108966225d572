# syntax=docker/dockerfile:1
# The paddock-authz service. Build from the repository root:
#   docker build -f deploy/authz.Dockerfile -t paddock-authz .
# (docker-compose.yml does this.) Nothing in CI builds this image.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p paddock-authz --bin paddock-authz \
    && cp target/release/paddock-authz /usr/local/bin/paddock-authz

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/paddock --create-home paddock
COPY --from=build /usr/local/bin/paddock-authz /usr/local/bin/paddock-authz
USER paddock
WORKDIR /var/lib/paddock
# Inside a container the service must listen on every interface; publish
# the port only where clients need it.
ENV PADDOCK_AUTHZ_LISTEN=0.0.0.0:7102 \
    PADDOCK_DATA_DIR=/var/lib/paddock \
    PADDOCK_SERVICE_TOKEN_FILE=/var/lib/paddock/service-token
VOLUME ["/var/lib/paddock"]
EXPOSE 7102
# The service shuts down gracefully on SIGINT.
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/paddock-authz"]
