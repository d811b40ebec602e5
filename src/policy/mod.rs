//! The policy decision (pure: no I/O, no clock reads — time is passed in) and rate limiting.
