//! The data plane, in request order (`pipeline.rs` lists the phases): ingress → auth → route →
//! limits → cache lookup → upstream → respond → usage
//! (+ app routes).
//!
//! [`Gateway`] holds an immutable [`Snapshot`] built from the config; handlers read it without
//! locks. Nothing on the request path waits on a store.

mod app;
mod app_cache;
mod auth;
mod aws;
mod breaker;
mod cache;
mod client;
mod context;
mod conversation;
mod count;
mod credential;
mod edge_cache;
mod error;
mod gateway;
mod head_errors;
mod health;
mod ingress;
mod limits;
mod log;
mod lookup;
mod ofrep;
mod pipeline;
mod price;
mod probe;
mod proxy_protocol;
mod respond;
mod rollout;
mod route;
mod server;
mod snapshot;
mod stored;
pub mod tls;
mod upstream;
mod usage;
mod worker;

pub use auth::{hash_key, KeyIndex};
pub use cache::VectorIndex;
pub use error::{BuildError, ProxyError};
pub use gateway::{AcmeState, Arm, ArmState, BackupState, Check, Gateway, LoadedFlags};
pub use limits::spend_key;
pub use server::{metrics_router, router, serve_redirect, Workers, COMPRESSION_LEVEL};
pub use snapshot::Snapshot;
pub use usage::{RequestEvent, SemanticAudit, UsageTotal};
pub use worker::count as worker_count;

/// Whether a request arrived over TLS (a session cookie is then `Secure`).
pub fn over_tls(extensions: &http::Extensions) -> bool {
    extensions.get::<context::Secure>().is_some_and(|s| s.0)
}
