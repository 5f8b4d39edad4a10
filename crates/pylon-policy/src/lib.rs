//! Pure decisions, no I/O: what the data plane decides from values alone, so each rule can be
//! tested by property and example without a server.

pub mod alert;
pub mod bucket;
pub mod flags;
pub mod guard;
mod lexicon;
pub mod renewal;
pub mod rollout;
