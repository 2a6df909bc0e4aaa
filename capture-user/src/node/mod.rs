//! The node's side: everything that runs as root beside the application. Kernel attach
//! ([`capture`], the only aya user), the agent ring ([`ring`]), recording a cgroup into
//! it ([`recorder`]), cgroup lookup ([`cgroup`]), readiness ([`notify`]), the stop
//! policy ([`stop`]), crash watching ([`watch`]), the kernel's structure layout ([`btf`]) and the agent that ties them to a trigger ([`agent`]). It may use
//! `dump` (to write), `transport` (to ship), `packet` and `clock`.

pub mod agent;
pub mod btf;
pub mod capture;
pub mod cgroup;
pub mod notify;
pub mod recorder;
pub mod ring;
pub mod stop;
pub mod watch;
