//! Everything passgate says to Microsoft: the app-only token, the device facts it reads, and the
//! one forward of an authorised action. Nothing in here decides anything.

pub mod facts;
pub mod forward;
pub mod names;
pub mod slots;
pub mod token;
