//! Getting dumps from the nodes to the collector: the signed trigger and the shipping
//! frames ([`wire`], pure and fuzzed), the shared secret ([`secret`]), the agent's
//! spool ([`spool`]), shipping ([`ship`]), and the collector ([`collector`]) with its
//! [`manifest`]. It may use `clock`; it treats dumps as opaque files.

pub mod collector;
pub mod manifest;
pub mod secret;
pub mod ship;
pub mod spool;
pub mod wire;
