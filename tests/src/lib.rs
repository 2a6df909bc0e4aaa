//! wgo's test bed, kept out of the product: many nodes on one machine ([`testbed`]),
//! a netns cluster with agents for the shipping tests ([`cluster`]), dumps edited as a fault would have written them ([`edit`]), synthetic clusters with known truth ([`sim`]), real Debian programs under injected faults ([`corpus`]), Perfetto's official schema for checking traces ([`perfetto`]), pyarrow for checking the Parquet tables ([`tables`]), the demo ([`demo`]), where the
//! binaries under test are ([`bins`]), helpers the integration tests share
//! ([`helpers`]), and simulated agents and attackers for load tests ([`load`]). Its binaries: `wgo-peer` (traffic for tests and benchmarks),
//! `wgo-demo-app` (the demo's cluster app) and `wgo-demo` (the demo itself).
//! It may use all of `wgo`; nothing in `wgo` uses it.

pub mod bins;
pub mod cluster;
pub mod corpus;
pub mod demo;
pub mod edit;
pub mod helpers;
pub mod load;
pub mod perfetto;
pub mod sim;
pub mod tables;
pub mod testbed;
