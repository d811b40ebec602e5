//! passgate's configuration: the YAML schema, its validation, and secret references.
//! Loading must reject anything ambiguous (unknown keys, implicit "any device") rather than guess:
//! a typo in a security policy must never silently widen it.

pub mod locate;
pub mod schema;
pub use schema::*;
