//! poolgate: a reverse-proxy security gateway that enforces an Authing user
//! pool's security policy in front of a login service.
//!
//! Request path (see docs/architecture.md): [`server`] accepts, [`gateway`]
//! classifies ([`routes`]), resolves the client ([`client_ip`]), judges
//! against the [`policy`] in force and forwards through [`proxy`]. The policy is
//! fetched by [`source`] and swapped lock-free; [`admin`] and [`metrics`]
//! observe it all.

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod app;
pub mod captcha;
pub mod client_ip;
pub mod coarse_timer;
pub mod config;
pub mod demo;
pub mod extract;
pub mod gateway;
pub mod guards;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod rejection_log;
pub mod response;
pub mod routes;
pub mod runtime;
pub mod server;
pub mod source;
pub mod store;

pub use app::App;
pub use config::Config;

/// An error and its causes on one line: hyper's top-level messages alone are vague.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
