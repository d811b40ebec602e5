//! Tamper-evident audit log: hash-chained JSON Lines, made durable (fsync) before any forward.
