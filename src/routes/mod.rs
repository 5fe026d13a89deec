//! Request classification: which route of the table a request is, judged on
//! the path the upstream will route on.
//!
//! Paths are compared in a canonical form (percent-decoded, `\` as `/`,
//! repeated slashes and trailing slash dropped, dot segments resolved, matrix
//! parameters removed, lowercase), so that no spelling the upstream might
//! route as a login lets it pass as "other". A path that cannot be decoded, or
//! that only matches after a second decoding, is refused as ambiguous.
//!
//! One concern per module:
//! - `route`: what a route is ([`Route`], [`RouteKind`], [`Flavor`],
//!   [`Fields`], [`GraphqlOp`]), as configuration writes it;
//! - `defaults`: the built-in table, Authing's SDK calls
//!   ([`default_routes`], [`default_graphql_ops`]);
//! - `canonical`: the canonical path ([`canonical_path`], [`percent_decode`]);
//! - `table`: the compiled [`RouteTable`] and its lookup, [`RouteTable::classify`]
//!   into a [`Class`].

mod canonical;
mod defaults;
mod route;
mod table;

pub use canonical::{canonical_path, percent_decode};
pub use defaults::{default_graphql_ops, default_routes};
pub use route::{Fields, Flavor, GraphqlOp, IdField, IdKind, Route, RouteKind, Variant};
pub use table::{Class, RouteTable};
