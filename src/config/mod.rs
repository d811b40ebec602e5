//! passgate's configuration: the YAML schema, its validation, and secret references.
//! Loading must reject anything ambiguous (unknown keys, implicit "any device") rather than guess:
//! a typo in a security policy must never silently widen it.

pub mod cidr;
pub mod console;
pub mod load;
pub mod locate;
pub mod schema;
pub mod secret;
pub mod settings;
pub mod summary;
pub mod warnings;

pub use console::{ConsoleConfig, ConsoleSettings};
pub use load::{load_file, load_str, parse_rate, ConfigError};
pub use schema::*;
pub use secret::{Secret, SecretError};
pub use settings::{Endpoints, OperatorAuthSettings, ServerSettings, Settings};
pub use summary::summary;
pub use warnings::{warnings, warnings_at, Warning};
