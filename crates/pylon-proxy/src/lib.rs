//! The data plane, in request order: ingress → auth → route → upstream → respond (+ app routes).
//!
//! [`Gateway`] holds an immutable [`Snapshot`] built from the config; handlers read it without
//! locks. Nothing on the request path waits on a store.

mod app;
mod auth;
mod breaker;
mod error;
mod ingress;
mod log;
mod respond;
mod route;
mod server;
mod snapshot;
mod upstream;

pub use auth::{hash_key, KeyIndex};
pub use error::ProxyError;
pub use server::{router, serve};
pub use snapshot::{BuildError, Gateway, Snapshot};
