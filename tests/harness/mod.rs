//! The one harness of the integration tests: everything runs over real
//! sockets on 127.0.0.1, and every wait has a deadline (a test fails, it
//! never hangs). Each test file includes it as `mod harness;` and most say
//! `use harness::*;`.
//!
//! - [`upstream`]: [`FakeUpstream`], a login service that answers like
//!   Authing, records every request, and can be told to answer late, not at
//!   all, or with bytes that are not HTTP.
//! - [`authing`]: [`FakeAuthing`], Authing's management API as poolgate
//!   calls it (token, pool detail, whitelist), switchable to failures.
//! - [`client`]: HTTP/1 and h2c clients and the [`Reply`] they read; the
//!   one-connection-per-request flavour is [`fresh`]; login bodies and the
//!   answers the gateway gives.
//! - [`admin`]: the admin endpoints and the one Prometheus text parser.
//! - [`process`]: [`Proc`], the built binary run as a child process.
//! - [`wait`]: deadlines and waiting for a condition (no guessed sleeps).
//! - [`fixture`]: pools, configs and the [`Setup`] builder that starts a
//!   gateway on a file or Authing source, its counters in memory or Redis.
//! - [`redis`]: `redis-server` processes (plain, TLS, cluster) for the
//!   shared-store tests; not glob-exported (`use harness::redis::...`).
// Each test file is its own crate and uses only part of the harness.
#![allow(dead_code, unused_imports)]

pub mod admin;
pub mod authing;
pub mod client;
pub mod fixture;
pub mod process;
pub mod redis;
pub mod upstream;
pub mod wait;

pub use admin::*;
pub use authing::*;
pub use client::*;
pub use fixture::*;
pub use process::*;
pub use upstream::*;
pub use wait::*;

/// The one-connection-per-request client (see [`client::fresh`]).
pub use client::fresh;

/// The v2 password login route.
pub const LOGIN: &str = "/api/v2/login/account";
/// The v3 sign-in route.
pub const SIGNIN: &str = "/api/v3/signin";
/// The v2 e-mail registration route.
pub const REGISTER: &str = "/api/v2/register/email";
/// The v3 sign-up route.
pub const SIGNUP: &str = "/api/v3/signup";
/// The GraphQL endpoint.
pub const GRAPHQL: &str = "/graphql/v2";
