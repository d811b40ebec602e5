//! In-process emulator of Entra ID and Microsoft Graph for `passgate dev` and the tests.
//! Only loopback listeners. Never imported by the gateway's request path.
