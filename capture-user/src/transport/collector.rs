//! The collector: receives dumps from agents after a trigger, checks them, and writes
//! `DIR/<node>.pcapng` plus `DIR/manifest.json`, for one trigger ([`collect`]) or, as a
//! service, for every trigger in a directory of its own ([`serve`]). Restartable: partial
//! transfers resume.
//!
//! It runs on tokio and holds under load and attack: unauthenticated connections are
//! bounded (the oldest is dropped for a new one) and must complete their handshake within
//! a deadline, whole frames included; a bounded number of dumps are received at once while
//! the other agents wait; running out of descriptors is logged at a bounded rate, never fatal.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use super::manifest::Manifest;
use super::spool::hex;
use super::wire::{self, Channel, Frame, Heard, Secret, Side};
use crate::clock;

/// Largest dump accepted from one agent.
pub const MAX_DUMP_BYTES: u64 = 64 << 30;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Wait for these nodes by name.
    Names(Vec<String>),
    /// Wait for this many nodes.
    Count(usize),
    /// Wait for every node that says it heard the trigger.
    Heard,
}

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error(transparent)]
    Output(#[from] crate::outfile::OutputError),
    #[error(transparent)]
    Manifest(#[from] super::manifest::ManifestError),
    #[error("missing dumps from: {}", .0.join(", "))]
    Missing(Vec<String>),
    #[error("no dump arrived{}: no agent answered the trigger", if .heard == &0 { String::new() } else { format!(" ({} node(s) heard it and shipped nothing)", .heard) })]
    NoDump { heard: usize },
    #[error("{out} is not empty: {why}; collect into a new directory, or remove it")]
    Stale { out: PathBuf, why: String },
}

pub struct CollectOptions {
    pub out: PathBuf,
    pub secret: Secret,
    pub expect: Expect,
    pub wait: Duration,
    /// The trigger this collector waits for; None: adopt the manifest's, or the first offered.
    pub trigger_id: Option<u64>,
    pub trigger_sent_ns: Option<i64>,
    pub progress: bool,
    pub limits: Limits,
}

/// What one collector takes on at once. Past these it pushes back instead of growing.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections not yet authenticated; when full, the oldest is dropped for a new one
    /// (an attacker holding them open cannot lock agents out).
    pub handshakes: usize,
    /// Dumps being received at once; more authenticated agents wait for a turn.
    pub transfers: usize,
    /// Authenticated agents waiting for a turn; past this, a new one is dropped and retries later.
    pub waiting: usize,
    /// Of those, what one source address may hold: an insider on one host cannot take
    /// every slot, nor every place in the queue.
    pub per_source_transfers: usize,
    pub per_source_waiting: usize,
    /// From connect to a valid offer.
    pub handshake_deadline: Duration,
    /// Longest wait for any bytes while receiving a dump.
    pub idle_deadline: Duration,
    /// Slowest transfer kept, bytes per second over each `rate_window`: one that trickles
    /// is stopped, its slot freed, and the agent resumes later where its bytes end.
    pub min_rate: u64,
    pub rate_window: Duration,
}

/// The slowest `--ship-rate` an agent takes (0 aside, unlimited).
pub const MIN_SHIP_RATE: u64 = 4096;
/// The default [`Limits::min_rate`]: half the slowest agent's, for its pacing and the network's jitter.
pub const MIN_RATE: u64 = MIN_SHIP_RATE / 2;

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            handshakes: 256,
            transfers: 32,
            waiting: 512,
            per_source_transfers: 16,
            per_source_waiting: 256,
            handshake_deadline: Duration::from_secs(10),
            idle_deadline: Duration::from_secs(30),
            min_rate: MIN_RATE,
            rate_window: Duration::from_secs(10),
        }
    }
}

/// One incident: the dumps and manifest of one trigger, in a directory of its own.
struct Incident {
    dir: PathBuf,
    manifest: Manifest,
    /// Who delivers each node's dump: its address and digest, to refuse a second agent
    /// that uses the same name.
    owners: HashMap<String, (IpAddr, [u8; 32])>,
    /// When a node last said it heard the trigger or delivered its dump.
    changed: Instant,
    /// Its manifest is final (until a late dump reopens it).
    closed: bool,
    /// The last refusal or failed transfer of each node, for the manifest's `missing_why`.
    failures: HashMap<String, String>,
}

impl Incident {
    fn new(dir: PathBuf, manifest: Manifest) -> Incident {
        Incident { dir, manifest, owners: HashMap::new(), changed: Instant::now(), closed: false, failures: HashMap::new() }
    }

    /// Records who is missing, and why, in the manifest.
    fn close_missing(&mut self, missing: Vec<String>) {
        let why = |name: &String| {
            let heard = self.manifest.nodes.iter().any(|n| &n.name == name && n.heard_ns.is_some());
            match (self.failures.get(name), heard) {
                (Some(f), _) => f.clone(),
                (None, true) => "heard the trigger; no dump was offered (its agent may have no route here, or gave up)".into(),
                (None, false) => "never heard from".into(),
            }
        };
        self.manifest.missing_why = missing.iter().map(|n| (n.clone(), why(n))).collect();
        self.manifest.missing = missing;
    }

    /// Removes what failed transfers left in `.partial/`: an incident given up on keeps no
    /// half dumps filling the disk (a late dump starts over).
    fn remove_partials(&self) {
        let Ok(dir) = std::fs::read_dir(self.dir.join(".partial")) else { return };
        for e in dir.flatten() {
            if e.file_name().to_string_lossy().ends_with(".part") {
                match std::fs::remove_file(e.path()) {
                    Ok(()) => tracing::info!("removed the failed transfer {}", e.path().display()),
                    Err(err) => tracing::warn!("removing {}: {err}", e.path().display()),
                }
            }
        }
    }

    fn arrived(&self) -> usize {
        self.manifest.nodes.iter().filter(|n| n.arrived_ns.is_some()).count()
    }

    /// Every node that said it heard the trigger has delivered, and nobody new spoke up lately.
    fn all_heard_arrived(&self, quiet: Duration) -> bool {
        self.arrived() > 0 && self.manifest.nodes.iter().all(|n| n.arrived_ns.is_some()) && self.changed.elapsed() > quiet
    }
}

/// Where a trigger's dumps go.
enum Router {
    /// One incident in one directory (`wgo collect`, `wgo trigger`): the given trigger's, or
    /// the first one offered.
    Single { trigger_id: Option<u64> },
    /// Every trigger's incident in a directory of its own under `root` (`wgo serve`).
    Serve { root: PathBuf },
}

/// The key of the one incident in [`Router::Single`].
const SINGLE: u64 = 0;
/// Incidents open at once in `wgo serve`; more are refused until some close.
const MAX_OPEN_INCIDENTS: usize = 64;
/// How long an incident stays open after its last change once every node that heard has delivered.
const QUIET: Duration = Duration::from_secs(2);

struct State {
    router: Router,
    incidents: HashMap<u64, Incident>,
    bars: Option<indicatif::MultiProgress>,
    /// Errors seen, for a rate-limited log.
    rejected: RateLimited,
    /// Incidents on disk whose manifest is damaged, and why: their dumps are refused, not
    /// filed beside a manifest that would be written over.
    damaged: HashMap<u64, String>,
}

impl State {
    fn reject(&mut self, what: &str) {
        self.rejected.log(&format!("ignored {what}"));
    }

    /// The incident of trigger `id` (opened now in `wgo serve`, dated `at_ns`), or why its
    /// dumps are refused.
    fn incident(&mut self, id: u64, at_ns: i64) -> Result<&mut Incident, String> {
        match &self.router {
            Router::Single { trigger_id: Some(want) } if *want != id => {
                Err(format!("this collector waits for trigger {want:016x}, not {id:016x}"))
            }
            Router::Single { .. } => Ok(self.incidents.get_mut(&SINGLE).expect("the single incident")),
            Router::Serve { .. } if self.damaged.contains_key(&id) => Err(self.damaged[&id].clone()),
            Router::Serve { root } => {
                let root = root.clone();
                if !self.incidents.contains_key(&id) {
                    if self.incidents.values().filter(|i| !i.closed).count() >= MAX_OPEN_INCIDENTS {
                        self.make_room(id)?;
                    }
                    let dir = root.join(incident_dir_name(id, at_ns));
                    // Private: it holds dumps, and the reports made from them.
                    crate::outfile::create_private_dir(&dir)
                        .and_then(|()| crate::outfile::create_private_dir(&dir.join(".partial")))
                        .map_err(|e| format!("creating {}: {e}", dir.display()))?;
                    let manifest = Manifest {
                        trigger_id: Some(format!("{id:016x}")),
                        expected: Some(serde_json::json!("every node that heard the trigger")),
                        ..Manifest::default()
                    };
                    manifest.save(&dir).map_err(|e| format!("writing {}/manifest.json: {e}", dir.display()))?;
                    tracing::info!("trigger {id:016x}: a new incident in {}", dir.display());
                    self.incidents.insert(id, Incident::new(dir, manifest));
                }
                Ok(self.incidents.get_mut(&id).expect("just made"))
            }
        }
    }
}

impl State {
    /// Closes the open incident that no dump was offered to and that has been quiet
    /// longest, for trigger `id`: heard datagrams alone (which anyone holding the secret
    /// can send for any trigger) must not keep real dumps out. A dump offered to it later
    /// reopens it. Refused (and retried by the agent) only when every open incident has one.
    fn make_room(&mut self, id: u64) -> Result<(), String> {
        let idle =
            self.incidents.iter_mut().filter(|(_, i)| !i.closed && i.owners.is_empty() && i.arrived() == 0).min_by_key(|(_, i)| i.changed);
        let Some((&old, inc)) = idle else {
            return Err(format!("{MAX_OPEN_INCIDENTS} incidents are open already, each with dumps coming; trigger {id:016x} must wait"));
        };
        inc.closed = true;
        inc.close_missing(inc.manifest.nodes.iter().filter(|n| n.arrived_ns.is_none()).map(|n| n.name.clone()).collect());
        inc.manifest.complete = false;
        if let Err(e) = inc.manifest.save(&inc.dir) {
            tracing::error!("{e}");
        }
        tracing::warn!(
            "trigger {old:016x}: closed without a dump to make room for trigger {id:016x} ({MAX_OPEN_INCIDENTS} incidents were open; heard from {})",
            inc.manifest.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", ")
        );
        Ok(())
    }
}

/// `<UTC time>-<trigger id>`: incidents list in time order.
pub fn incident_dir_name(id: u64, at_ns: i64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_nanos(at_ns.max(0) as u64);
    let stamp = humantime::format_rfc3339_seconds(at).to_string().replace([':', '-'], "");
    format!("{stamp}-{id:016x}")
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CollectError {
    let what = what.into();
    move |source| CollectError::Io { what, source }
}

/// The trigger to collect for, from the options and what `out` already holds. Dumps of
/// another incident are refused rather than mixed in.
fn adopt(opts: &CollectOptions) -> Result<(Manifest, Option<u64>), CollectError> {
    let stale = |why: String| Err(CollectError::Stale { out: opts.out.clone(), why });
    let manifest = Manifest::load(&opts.out)?;
    let prior = manifest.as_ref().and_then(|m| m.trigger_id.as_deref()).and_then(|h| u64::from_str_radix(h, 16).ok());
    if let (Some(m), Some(old)) = (&manifest, prior) {
        return match opts.trigger_id {
            Some(new) if new != old => stale(format!("its manifest.json is for trigger {old:016x}, not {new:016x}")),
            // A restart: go on with the same trigger, and with what already arrived.
            _ => Ok((m.clone(), Some(old))),
        };
    }
    let dumps: Vec<String> = std::fs::read_dir(&opts.out)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".pcapng"))
        .collect();
    if !dumps.is_empty() {
        return stale(format!("it holds dumps ({}) of an incident no manifest.json names", dumps.join(", ")));
    }
    Ok((manifest.unwrap_or_default(), opts.trigger_id))
}

/// A tokio runtime with a fixed number of threads, whatever the load: under a task limit
/// (systemd's TasksMax, a container's pids limit) spawning more would fail.
fn runtime() -> Result<tokio::runtime::Runtime, CollectError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .thread_name("wgo-collect")
        .enable_all()
        .build()
        .map_err(io("starting the collector's runtime"))
}

/// Receives dumps on `listener` (and heard messages on `udp`) until every expected node
/// has delivered or `wait` passes. Returns the manifest; missing nodes are an error.
/// `ready` runs once the output directory is checked and its manifest written, before any
/// connection is taken: that is when a trigger may go out.
pub fn collect(opts: CollectOptions, listener: TcpListener, udp: UdpSocket, ready: impl FnOnce()) -> Result<Manifest, CollectError> {
    // Made private (0700) where missing: it will hold dumps.
    crate::outfile::create_private_dir(&opts.out.join(".partial")).map_err(io(format!("creating {}", opts.out.display())))?;
    let (mut manifest, trigger_id) = adopt(&opts)?;
    manifest.trigger_id = trigger_id.map(|id| format!("{id:016x}"));
    if opts.trigger_sent_ns.is_some() {
        manifest.trigger_sent_ns = opts.trigger_sent_ns;
    }
    manifest.expected = Some(match &opts.expect {
        Expect::Names(n) => serde_json::json!(n),
        Expect::Count(c) => serde_json::json!(c),
        Expect::Heard => serde_json::json!("every node that heard the trigger"),
    });
    manifest.complete = false;
    // Written before anything arrives: a restarted collector picks up this trigger.
    manifest.save(&opts.out)?;
    ready();
    let state = State {
        router: Router::Single { trigger_id },
        incidents: HashMap::from([(SINGLE, Incident::new(opts.out.clone(), manifest))]),
        bars: opts.progress.then(indicatif::MultiProgress::new),
        rejected: RateLimited::default(),
        damaged: HashMap::new(),
    };
    let deadline = Instant::now() + opts.wait;
    let expect = opts.expect.clone();
    let done = move |st: &mut State| {
        let inc = &st.incidents[&SINGLE];
        let arrived = |n: &str| inc.manifest.nodes.iter().any(|x| x.name == n && x.arrived_ns.is_some());
        let done = match &expect {
            Expect::Names(names) => names.iter().all(|n| arrived(n)),
            Expect::Count(c) => inc.arrived() >= *c,
            Expect::Heard => inc.all_heard_arrived(QUIET),
        };
        done || Instant::now() > deadline
    };
    let ctx = Arc::new(Ctx::new(state, opts.secret.clone(), opts.limits));
    runtime()?.block_on(receive(ctx.clone(), listener, udp, done))?;

    let mut st = ctx.state.lock().expect("lock");
    let inc = st.incidents.get_mut(&SINGLE).expect("the single incident");
    let mut missing: Vec<String> = match &opts.expect {
        Expect::Names(names) => {
            names.iter().filter(|n| !inc.manifest.nodes.iter().any(|x| &&x.name == n && x.arrived_ns.is_some())).cloned().collect()
        }
        Expect::Count(_) | Expect::Heard => inc.manifest.nodes.iter().filter(|n| n.arrived_ns.is_none()).map(|n| n.name.clone()).collect(),
    };
    if let Expect::Count(c) = opts.expect {
        let known = inc.manifest.nodes.len();
        if known < c {
            missing.push(format!("{} more node(s) that never answered", c - known));
        }
    }
    inc.close_missing(missing.clone());
    if !missing.is_empty() {
        inc.remove_partials();
    }
    // No dump is never a success, whatever was expected.
    let arrived = inc.arrived();
    inc.manifest.complete = missing.is_empty() && arrived > 0;
    inc.manifest.save(&opts.out)?;
    match (missing.is_empty(), arrived) {
        (false, _) => Err(CollectError::Missing(missing)),
        (true, 0) => Err(CollectError::NoDump { heard: inc.manifest.nodes.len() }),
        (true, _) => Ok(inc.manifest.clone()),
    }
}

/// What to do with an incident once it is complete, or given up on: its directory and manifest.
pub type OnClosed = Arc<dyn Fn(&std::path::Path, &Manifest) + Send + Sync>;

/// `wgo serve`: a collector that keeps running and files every trigger's dumps in
/// `incidents/<UTC time>-<trigger id>/` with its manifest.
pub struct ServeOptions {
    pub incidents: PathBuf,
    pub secret: Secret,
    /// An incident still missing dumps is closed (and reported) after this long without news.
    pub wait: Duration,
    pub limits: Limits,
    pub stop: Arc<AtomicBool>,
    /// Runs on a blocking thread each time an incident closes.
    pub on_closed: Option<OnClosed>,
}

/// Serves until `stop` is set. Incidents already on disk are picked up again, so that
/// dumps shipped late (from a spool) still join theirs.
pub fn serve(opts: ServeOptions, listener: TcpListener, udp: UdpSocket) -> Result<(), CollectError> {
    if !opts.incidents.is_dir() {
        crate::outfile::create_private_dir(&opts.incidents).map_err(io(format!("creating {}", opts.incidents.display())))?;
    }
    let (mut incidents, mut damaged) = (HashMap::new(), HashMap::new());
    for entry in std::fs::read_dir(&opts.incidents).map_err(io(format!("reading {}", opts.incidents.display())))?.flatten() {
        let dir = entry.path();
        let id =
            dir.file_name().and_then(|n| n.to_str()).and_then(|n| n.rsplit_once('-')).and_then(|(_, id)| u64::from_str_radix(id, 16).ok());
        let Some(id) = id else { continue };
        match Manifest::load(&dir) {
            Ok(Some(manifest)) => {
                let mut inc = Incident::new(dir, manifest);
                inc.closed = true;
                incidents.insert(id, inc);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!("{e}; dumps of trigger {id:016x} are refused until then");
                damaged.insert(id, e.to_string());
            }
        }
    }
    if !incidents.is_empty() {
        tracing::info!("{} earlier incident(s) in {}", incidents.len(), opts.incidents.display());
    }
    let state =
        State { router: Router::Serve { root: opts.incidents.clone() }, incidents, bars: None, rejected: RateLimited::default(), damaged };
    let ctx = Arc::new(Ctx::new(state, opts.secret.clone(), opts.limits));
    let (wait, stop) = (opts.wait, opts.stop.clone());
    // Reports run one at a time on a thread of their own, never on the runtime's blocking
    // pool: there, 8 slow reports held every thread that file I/O for deliveries needs.
    let reports = opts.on_closed.clone().map(|f| {
        let (tx, rx) = std::sync::mpsc::channel::<(PathBuf, Manifest)>();
        std::thread::Builder::new()
            .name("wgo-reports".into())
            .spawn(move || {
                for (dir, manifest) in rx {
                    f(&dir, &manifest);
                }
            })
            .map(|_| tx)
    });
    let reports = match reports {
        Some(r) => Some(r.map_err(io("starting the report thread"))?),
        None => None,
    };
    let tick = move |st: &mut State| {
        for inc in st.incidents.values_mut().filter(|i| !i.closed) {
            let given_up = inc.changed.elapsed() > wait;
            if !(inc.all_heard_arrived(QUIET) || given_up) {
                continue;
            }
            inc.closed = true;
            inc.close_missing(inc.manifest.nodes.iter().filter(|n| n.arrived_ns.is_none()).map(|n| n.name.clone()).collect());
            inc.manifest.complete = inc.manifest.missing.is_empty() && inc.arrived() > 0;
            if !inc.manifest.missing.is_empty() {
                inc.remove_partials();
            }
            if let Err(e) = inc.manifest.save(&inc.dir) {
                tracing::error!("writing {}/manifest.json: {e}", inc.dir.display());
            }
            let reason = inc.manifest.reason.as_deref().unwrap_or("no reason given");
            match inc.manifest.complete {
                true => tracing::info!("incident {} complete: {} dump(s); {reason}", inc.dir.display(), inc.arrived()),
                false => tracing::warn!(
                    "incident {}: gave up waiting; {} dump(s), missing {}; {reason}",
                    inc.dir.display(),
                    inc.arrived(),
                    inc.manifest.missing.join(", ")
                ),
            }
            if let Some(tx) = &reports
                && inc.arrived() > 0
            {
                let _ = tx.send((inc.dir.clone(), inc.manifest.clone()));
            }
        }
        stop.load(Ordering::Relaxed)
    };
    runtime()?.block_on(receive(ctx, listener, udp, tick))
}

/// Takes connections and heard messages until `done` says so (it runs every few ms, under the lock).
async fn receive(
    ctx: Arc<Ctx>,
    listener: TcpListener,
    udp: UdpSocket,
    mut done: impl FnMut(&mut State) -> bool,
) -> Result<(), CollectError> {
    listener.set_nonblocking(true).map_err(io("configuring the listener"))?;
    udp.set_nonblocking(true).map_err(io("configuring the heard socket"))?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(io("configuring the listener"))?;
    let udp = tokio::net::UdpSocket::from_std(udp).map_err(io("configuring the heard socket"))?;
    let heard = tokio::spawn(heard_loop(udp, ctx.clone()));
    // Handshakes in progress, oldest first: (connection number, its abort handle).
    let mut pending: VecDeque<(u64, tokio::task::AbortHandle)> = VecDeque::new();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let mut next_conn = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let mut accept_errors = RateLimited::default();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, from)) => {
                    while pending.len() >= ctx.limits.handshakes.max(1) {
                        let (_, oldest) = pending.pop_front().expect("non-empty");
                        oldest.abort();
                        ctx.state.lock().expect("lock").reject("the oldest unauthenticated connection: too many at once");
                    }
                    let id = next_conn;
                    next_conn += 1;
                    let (ctx, done_tx) = (ctx.clone(), done_tx.clone());
                    let task = tokio::spawn(async move {
                        if let Err(e) = serve_agent(stream, from, &ctx, || { let _ = done_tx.send(id); }).await {
                            ctx.state.lock().expect("lock").reject(&format!("connection from {from}: {e}"));
                        }
                        let _ = done_tx.send(id);
                    });
                    pending.push_back((id, task.abort_handle()));
                }
                Err(e) => {
                    // Out of descriptors, say: back off a little, log at a bounded rate, go on.
                    accept_errors.log(&format!("accepting a connection: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(id) = done_rx.recv() => {
                // Authenticated (or gone): no longer a handshake that may be dropped.
                if let Some(k) = pending.iter().position(|(x, _)| *x == id) {
                    pending.remove(k);
                }
            }
            _ = tick.tick() => {}
        }
        if done(&mut ctx.state.lock().expect("lock")) {
            break;
        }
    }
    heard.abort();
    for (_, p) in pending {
        p.abort();
    }
    Ok(())
}

/// A warning at most once a second, with how many there were.
#[derive(Default)]
struct RateLimited {
    count: u64,
    last: Option<Instant>,
}

impl RateLimited {
    fn log(&mut self, what: &str) {
        self.count += 1;
        if self.last.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
            tracing::warn!("{what} ({} so far)", self.count);
            self.last = Some(Instant::now());
        }
    }
}

/// What every connection shares.
struct Ctx {
    state: Arc<Mutex<State>>,
    secret: Secret,
    limits: Limits,
    transfers: Arc<Semaphore>,
    waiting: Arc<Semaphore>,
    /// Each source address's own share of the transfers and of the queue.
    sources: Mutex<HashMap<IpAddr, Source>>,
}

#[derive(Clone)]
struct Source {
    transfers: Arc<Semaphore>,
    waiting: Arc<Semaphore>,
}

/// Source addresses remembered at most; past it, those that hold nothing are forgotten.
const MAX_SOURCES: usize = 4096;

impl Ctx {
    fn new(state: State, secret: Secret, limits: Limits) -> Ctx {
        Ctx {
            state: Arc::new(Mutex::new(state)),
            secret,
            limits,
            transfers: Arc::new(Semaphore::new(limits.transfers.max(1))),
            waiting: Arc::new(Semaphore::new(limits.waiting.max(1))),
            sources: Mutex::new(HashMap::new()),
        }
    }

    fn source(&self, ip: IpAddr) -> Source {
        let mut m = self.sources.lock().expect("lock");
        if m.len() >= MAX_SOURCES {
            m.retain(|_, s| Arc::strong_count(&s.transfers) > 1 || Arc::strong_count(&s.waiting) > 1);
        }
        m.entry(ip)
            .or_insert_with(|| Source {
                transfers: Arc::new(Semaphore::new(self.limits.per_source_transfers.clamp(1, self.limits.transfers.max(1)))),
                waiting: Arc::new(Semaphore::new(self.limits.per_source_waiting.clamp(1, self.limits.waiting.max(1)))),
            })
            .clone()
    }
}

/// Heard messages: who heard the trigger, and when on their own clock.
async fn heard_loop(udp: tokio::net::UdpSocket, ctx: Arc<Ctx>) {
    let mut buf = [0u8; 1024];
    loop {
        let Ok((n, from)) = udp.recv_from(&mut buf).await else {
            // Whatever went wrong, not in a busy loop.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let mut st = ctx.state.lock().expect("lock");
        match Heard::decode(&buf[..n], &ctx.secret) {
            Ok(h) => {
                let Ok(inc) = st.incident(h.trigger_id, h.sent_ns) else { continue };
                let m = &mut inc.manifest;
                m.trigger_sent_ns.get_or_insert(h.sent_ns);
                if m.reason.is_none() && !h.reason.is_empty() {
                    m.reason = Some(h.reason.clone());
                }
                let node = m.node(&h.node);
                let new = node.heard_ns.is_none() && node.arrived_ns.is_none();
                node.heard_ns = Some(h.heard_ns);
                node.addr.get_or_insert_with(|| from.ip().to_canonical().to_string());
                if new {
                    inc.changed = Instant::now();
                    inc.closed = false;
                    if let Err(e) = inc.manifest.save(&inc.dir) {
                        tracing::error!("{}: {e}", h.node);
                    }
                }
            }
            Err(e) => st.reject(&format!("heard datagram from {from}: {e}")),
        }
    }
}

fn bad(m: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, m.into())
}

/// Reads one frame's payload within `limit`, refusing oversized lengths before allocating.
async fn read_payload(s: &mut TcpStream, limit: Duration) -> std::io::Result<Vec<u8>> {
    let read = async {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await?;
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 || len > wire::MAX_FRAME {
            return Err(bad(format!("frame length {len} out of range")));
        }
        let mut b = vec![0u8; len];
        s.read_exact(&mut b).await?;
        Ok(b)
    };
    tokio::time::timeout(limit, read).await.map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "too slow to send a frame"))?
}

/// Reads one plain frame (the hello) within `limit`.
async fn read_frame(s: &mut TcpStream, limit: Duration) -> std::io::Result<Frame> {
    Frame::decode(&read_payload(s, limit).await?).map_err(|e| bad(e.to_string()))
}

/// Reads and opens one sealed frame within `limit`.
async fn read_sealed(s: &mut TcpStream, ch: &mut Channel, limit: Duration) -> std::io::Result<Frame> {
    let b = read_payload(s, limit).await?;
    ch.open(b).map_err(|e| bad(e.to_string()))
}

async fn write_bytes(s: &mut TcpStream, b: &[u8], limit: Duration) -> std::io::Result<()> {
    tokio::time::timeout(limit, s.write_all(b))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "too slow to take a frame"))?
}

/// One agent's connection: authenticate both ways, resume, receive, verify, publish.
/// `authenticated` is called once the agent proved it holds the secret.
async fn serve_agent(mut s: TcpStream, from: SocketAddr, ctx: &Ctx, authenticated: impl FnOnce()) -> std::io::Result<()> {
    let (secret, limits) = (&ctx.secret, ctx.limits);
    let from_ip = from.ip().to_canonical();
    // The whole handshake, not each read, has a deadline: a byte every few seconds does not
    // keep a connection.
    let handshake_end = tokio::time::Instant::now() + limits.handshake_deadline;
    let left = || handshake_end.saturating_duration_since(tokio::time::Instant::now());
    let Frame::Hello { node, nonce } = read_frame(&mut s, left()).await? else { return Err(bad("expected hello")) };
    let cnonce: [u8; 16] = wire::random_bytes();
    let challenge = Frame::Challenge { nonce: cnonce, mac: wire::collector_mac(secret, &nonce, &cnonce) };
    write_bytes(&mut s, &challenge.encode(), left()).await?;
    // Sealed from here on, the refusal included.
    let mut ch = Channel::new(secret, &nonce, &cnonce, &node, Side::Collector);
    let offer = match read_sealed(&mut s, &mut ch, left()).await {
        Ok(Frame::Offer(offer)) => offer,
        Ok(_) => return Err(bad("expected offer")),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => return Err(bad(format!("{node} failed authentication ({e})"))),
        Err(e) => return Err(e),
    };
    if !wire::check_agent_mac(secret, &nonce, &cnonce, &node, &offer) {
        return Err(bad(format!("{node} failed authentication (wrong secret?)")));
    }
    authenticated();
    let placed = {
        let mut st = ctx.state.lock().expect("lock");
        match st.incident(offer.trigger_id, offer.heard_ns) {
            Err(reason) => Err(reason),
            Ok(_) if offer.size > MAX_DUMP_BYTES => {
                Err(format!("dump of {} bytes is larger than the {} allowed", offer.size, MAX_DUMP_BYTES))
            }
            Ok(inc) => {
                // What the manifest says arrived for this name: after a restart, the
                // owners are forgotten, and the manifest is what remembers.
                let delivered = inc.manifest.nodes.iter().find(|n| n.name == node && n.arrived_ns.is_some());
                let delivered = delivered.map(|n| (n.addr.clone().unwrap_or_default(), n.sha256.clone().unwrap_or_default()));
                let placed = match inc.owners.get(&node) {
                    Some((addr, sha)) if *addr != from_ip && *sha != offer.sha256 => Err(format!(
                        "two agents use the node name {node}: {addr} and {from_ip}; give each its own --node (the dump from {addr} is kept)"
                    )),
                    None if delivered.as_ref().is_some_and(|(_, sha)| *sha != hex(&offer.sha256)) => {
                        let (addr, _) = delivered.expect("checked");
                        Err(format!(
                            "a dump of node {node} was delivered already, from {addr}; a different one from {from_ip} is refused (give each agent its own --node; the delivered dump is kept)"
                        ))
                    }
                    _ => room_for(&inc.dir, &part_path(&inc.dir, &node, &offer), offer.size),
                };
                match placed {
                    Ok(()) => {
                        inc.owners.insert(node.clone(), (from_ip, offer.sha256));
                        Ok(inc.dir.clone())
                    }
                    Err(reason) => {
                        inc.failures.insert(node.clone(), format!("refused: {reason}"));
                        Err(reason)
                    }
                }
            }
        }
    };
    let (out, refusal) = match placed {
        Ok(dir) => (dir, None),
        Err(reason) => (PathBuf::new(), Some(reason)),
    };
    if let Some(reason) = refusal {
        tracing::error!("refused {node} from {from_ip}: {reason}");
        write_bytes(&mut s, &ch.seal(&Frame::Refuse { reason: reason.clone() }), limits.idle_deadline).await?;
        return Err(bad(reason));
    }
    // One of a bounded number of transfers at a time: the agent waits for its Resume. So
    // many may wait, no more: the others are let go, and retry after a backoff.
    // Its source's share first, then the collector's: what one host holds or queues for
    // never keeps the others out.
    let src = ctx.source(from_ip);
    let too_many = || bad(format!("{node}: too many agents waiting; it will retry"));
    let src_waiting = src.waiting.clone().try_acquire_owned().map_err(|_| too_many())?;
    let waiting = ctx.waiting.clone().try_acquire_owned().map_err(|_| too_many())?;
    let _src_turn = src.transfers.clone().acquire_owned().await.map_err(|_| bad("collector stopping"))?;
    let _turn = ctx.transfers.clone().acquire_owned().await.map_err(|_| bad("collector stopping"))?;
    drop((waiting, src_waiting));
    let part = part_path(&out, &node, &offer);
    let have = tokio::fs::metadata(&part).await.map(|m| m.len()).unwrap_or(0).min(offer.size);
    // Private: a dump holds payload bytes.
    // Kept, not truncated: a resumed transfer goes on after the prefix it already has.
    // Never through a symlink planted at its name.
    let mut f = tokio::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&part)
        .await?;
    f.set_len(have).await?;
    // Hash as the bytes arrive (a resumed prefix first), so nothing is read twice.
    let mut hash = <sha2::Sha256 as sha2::Digest>::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut read = 0u64;
    while read < have {
        let want = buf.len().min((have - read) as usize);
        f.read_exact(&mut buf[..want]).await?;
        sha2::Digest::update(&mut hash, &buf[..want]);
        read += want as u64;
    }
    write_bytes(&mut s, &ch.seal(&Frame::Resume { offset: have }), limits.idle_deadline).await?;

    let bar = ctx.state.lock().expect("lock").bars.as_ref().map(|m| {
        let b = m.add(indicatif::ProgressBar::new(offer.size));
        b.set_style(
            indicatif::ProgressStyle::with_template("{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        b.set_prefix(node.clone());
        b.set_position(have);
        b
    });
    let mut got = have;
    // Written a buffer at a time (each write is a hop to tokio's blocking pool), not a frame at
    // a time; but at least every quarter second, so that a slow transfer's bytes reach the disk
    // and a collector killed mid-transfer loses at most that much of it (the agent resumes).
    let mut pending: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut last_write = Instant::now();
    // Each window must bring `min_rate` bytes a second; a frame must arrive whole within one.
    let window = limits.rate_window.max(Duration::from_millis(1));
    let frame_limit = limits.idle_deadline.min(window);
    let (mut window_start, mut window_bytes) = (Instant::now(), 0u64);
    while got < offer.size {
        let bytes = match read_sealed(&mut s, &mut ch, frame_limit).await {
            Ok(Frame::Data(b)) if !b.is_empty() && b.len() as u64 <= offer.size - got => Ok(b),
            Ok(Frame::Data(b)) => Err(bad(format!("a data frame of {} bytes at {got} of {}", b.len(), offer.size))),
            Ok(_) => Err(bad("expected dump bytes")),
            Err(e) => Err(e),
        };
        let bytes = bytes.and_then(|b| {
            window_bytes += b.len() as u64;
            let elapsed = window_start.elapsed();
            if elapsed >= window {
                let least = (limits.min_rate as f64 * elapsed.as_secs_f64()) as u64;
                if window_bytes < least {
                    return Err(bad(format!(
                        "too slow: {window_bytes} bytes in {:.1} s, below the {} bytes/s a transfer must keep",
                        elapsed.as_secs_f64(),
                        limits.min_rate
                    )));
                }
                (window_start, window_bytes) = (Instant::now(), 0);
            }
            Ok(b)
        });
        let bytes = match bytes {
            Ok(b) => b,
            Err(e) => {
                // What arrived intact stays, for the agent's retry to resume after.
                f.write_all(&pending).await?;
                f.sync_data().await?;
                let why = format!("{node} stopped sending at {got} of {} bytes ({e}; it will resume)", offer.size);
                if let Ok(inc) = ctx.state.lock().expect("lock").incident(offer.trigger_id, offer.heard_ns) {
                    inc.failures.insert(node.clone(), format!("transfer stopped at {got} of {} bytes ({e})", offer.size));
                }
                return Err(bad(why));
            }
        };
        sha2::Digest::update(&mut hash, &bytes);
        pending.extend_from_slice(&bytes);
        got += bytes.len() as u64;
        if pending.len() >= 1 << 20 || last_write.elapsed() >= Duration::from_millis(250) {
            f.write_all(&pending).await?;
            pending.clear();
            last_write = Instant::now();
        }
        if let Some(b) = &bar {
            b.set_position(got);
        }
    }
    f.write_all(&pending).await?;
    f.sync_all().await?;
    drop(f);
    let digest: [u8; 32] = sha2::Digest::finalize(hash).into();
    let ok = digest == offer.sha256;
    if ok {
        let dest = out.join(format!("{node}.pcapng"));
        tokio::fs::rename(&part, &dest).await?;
        crate::outfile::sync_dir(&out)?;
        let mut st = ctx.state.lock().expect("lock");
        if let Router::Single { trigger_id } = &mut st.router {
            trigger_id.get_or_insert(offer.trigger_id);
        }
        let inc = st.incident(offer.trigger_id, offer.heard_ns).map_err(bad)?;
        if inc.manifest.trigger_id.is_none() {
            inc.manifest.trigger_id = Some(format!("{:016x}", offer.trigger_id));
        }
        let n = inc.manifest.node(&node);
        n.addr = Some(from_ip.to_string());
        n.bytes = Some(offer.size);
        n.sha256 = Some(hex(&offer.sha256));
        n.heard_ns = Some(offer.heard_ns);
        n.arrived_ns = Some(clock::wall_ns() as i64);
        n.file = Some(format!("{node}.pcapng"));
        inc.changed = Instant::now();
        inc.closed = false;
        // Not acknowledged unless recorded: the agent keeps its dump and retries.
        inc.manifest.save(&out).map_err(|e| {
            tracing::error!("{node}: its dump arrived, but {e}");
            std::io::Error::other(e)
        })?;
        if let Some(b) = &bar {
            b.finish();
        }
        tracing::info!("{node}: {} bytes arrived, digest ok", offer.size);
    } else {
        let _ = tokio::fs::remove_file(&part).await;
        if let Ok(inc) = ctx.state.lock().expect("lock").incident(offer.trigger_id, offer.heard_ns) {
            inc.failures.insert(node.clone(), "its dump arrived damaged (SHA-256 mismatch)".into());
        }
        tracing::warn!("{node}: digest mismatch, asking for it again");
    }
    write_bytes(&mut s, &ch.seal(&Frame::Done { ok, mac: wire::done_mac(secret, &nonce, ok) }), limits.idle_deadline).await?;
    Ok(())
}

/// Where a transfer's bytes collect until its digest is checked.
fn part_path(dir: &Path, node: &str, offer: &wire::Offer) -> PathBuf {
    dir.join(".partial").join(format!("{node}-{:016x}-{}.part", offer.trigger_id, &hex(&offer.sha256)[..16]))
}

/// Kept free beside every dump accepted: the manifest, and whatever else shares the disk.
const SPARE_BYTES: u64 = 16 << 20;

/// Whether `dir`'s file system can take the rest of a `size`-byte dump (what `part`
/// already holds counts), with [`SPARE_BYTES`] to spare; else why not. Accepting a dump
/// that cannot fit would leave a `.part` that fills the disk for every later one.
fn room_for(dir: &Path, part: &Path, size: u64) -> Result<(), String> {
    let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0).min(size);
    let free = free_bytes(dir).map_err(|e| format!("cannot tell the free space in {}: {e}", dir.display()))?;
    let need = size - have + SPARE_BYTES;
    if free < need {
        return Err(format!(
            "not enough space in {}: {free} bytes free, the dump needs {} more (and {SPARE_BYTES} to spare)",
            dir.display(),
            size - have
        ));
    }
    Ok(())
}

/// Bytes an unprivileged writer may still use on `dir`'s file system.
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other)?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: a valid NUL-terminated path and a buffer of the right type for statvfs to fill.
    if unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs succeeded, so it filled the buffer.
    let st = unsafe { st.assume_init() };
    // The casts are no-ops here, not on 32-bit targets.
    #[allow(clippy::unnecessary_cast)]
    let free = (st.f_bavail as u64).saturating_mul(st.f_frsize as u64);
    Ok(free)
}

/// The collector address to name in a trigger for agents at `dest`: `listen` itself, or,
/// when it is unspecified (0.0.0.0 or ::), the local address this host reaches `dest` from.
pub fn address_for(listen: SocketAddr, dest: SocketAddr) -> std::io::Result<SocketAddr> {
    if !listen.ip().is_unspecified() {
        return Ok(listen);
    }
    let probe = UdpSocket::bind(if dest.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
    probe.set_broadcast(true)?;
    // A UDP connect sends nothing: it only picks the route, and with it the local address.
    probe.connect(dest)?;
    Ok(SocketAddr::new(probe.local_addr()?.ip(), listen.port()))
}

/// Sends each (destination, datagram, is broadcast) `copies` times.
pub fn send_trigger(datagrams: &[(SocketAddr, Vec<u8>, bool)], copies: u32, gap: Duration) -> std::io::Result<()> {
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    sock.set_broadcast(true)?;
    let sock6 = if datagrams.iter().any(|(a, _, _)| a.is_ipv6()) { Some(UdpSocket::bind("[::]:0")?) } else { None };
    send_copies(datagrams, copies, gap, |a, bytes| {
        let s = if a.is_ipv6() { sock6.as_ref().expect("bound") } else { &sock };
        s.send_to(bytes, a).map(|_| ())
    });
    Ok(())
}

/// Sends each (destination, datagram, is broadcast) `copies` times, `gap` apart, through
/// `send`; a failed send is logged, and the others go on.
pub fn send_copies(
    datagrams: &[(SocketAddr, Vec<u8>, bool)],
    copies: u32,
    gap: Duration,
    mut send: impl FnMut(SocketAddr, &[u8]) -> std::io::Result<()>,
) {
    for k in 0..copies {
        for (a, bytes, broadcast) in datagrams {
            if let Err(e) = send(*a, bytes) {
                tracing::warn!("{} to {a}: {e}", if *broadcast { "broadcast" } else { "trigger" });
            }
        }
        if k + 1 < copies {
            std::thread::sleep(gap);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::ship::{self, ShipOptions, Source};
    use super::super::spool::{SpoolEntry, hex};
    use super::*;

    fn secret() -> Secret {
        Secret::new(b"collector test secret, 16+".to_vec()).unwrap()
    }

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("wgo-collector-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn sockets() -> (TcpListener, UdpSocket, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        (l, UdpSocket::bind(addr).unwrap(), addr)
    }

    fn options(out: &std::path::Path, expect: Expect, trigger_id: Option<u64>, limits: Limits) -> CollectOptions {
        CollectOptions {
            out: out.into(),
            secret: secret(),
            expect,
            wait: Duration::from_secs(20),
            trigger_id,
            trigger_sent_ns: None,
            progress: false,
            limits,
        }
    }

    /// A spooled dump of `size` bytes for `node`.
    fn spooled(spool: &std::path::Path, node: &str, trigger_id: u64, size: usize) -> SpoolEntry {
        let bytes: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        let mut e = SpoolEntry {
            node: node.into(),
            trigger_id,
            heard_ns: 1,
            collector: String::new(),
            size: size as u64,
            sha256: String::new(),
            shipped: false,
        };
        e.sha256 = hex(&<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        std::fs::write(e.dump_path(spool), &bytes).unwrap();
        e
    }

    fn ship_to(e: &SpoolEntry, spool: &std::path::Path, to: SocketAddr) -> Result<(), ship::ShipError> {
        ship_within(e, spool, to, Duration::from_secs(15))
    }

    fn ship_within(e: &SpoolEntry, spool: &std::path::Path, to: SocketAddr, deadline: Duration) -> Result<(), ship::ShipError> {
        let s = secret();
        let o = ShipOptions { secret: &s, rate: 0, deadline: Instant::now() + deadline, stop: None };
        ship::ship(e, Source::File(&e.dump_path(spool)), to, &o)
    }

    #[test]
    fn slow_unauthenticated_connections_cannot_keep_an_agent_out() {
        let (dir, spool) = (tempdir("slowloris"), tempdir("slowloris-spool"));
        let (l, u, addr) = sockets();
        let limits = Limits {
            handshakes: 8,
            transfers: 1,
            waiting: 4,
            handshake_deadline: Duration::from_millis(800),
            idle_deadline: Duration::from_secs(5),
            ..Limits::default()
        };
        let opts = options(&dir, Expect::Names(vec!["good".into()]), Some(7), limits);
        let collector = std::thread::spawn(move || collect(opts, l, u, || {}));
        // Forty connections that dribble a byte now and then: more than the handshake cap.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let loris = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                // Each sends a valid frame length (256 bytes), then the frame a byte at a time.
                let byte = |k: usize| [0u8, 0, 1, 0].get(k).copied().unwrap_or(1);
                let mut conns: Vec<(std::net::TcpStream, usize)> = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    while conns.len() < 40 {
                        match std::net::TcpStream::connect(addr) {
                            Ok(c) => conns.push((c, 0)),
                            Err(_) => break,
                        }
                    }
                    // Dropped ones (by the cap or the deadline) are replaced next round.
                    conns.retain_mut(|(c, k)| {
                        *k += 1;
                        std::io::Write::write_all(c, &[byte(*k - 1)]).is_ok()
                    });
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        std::thread::sleep(Duration::from_millis(500));
        // The collector holds at most its cap of them (the attacker holds its 40): without
        // the cap this process would hold 80 sockets and more.
        let fds = std::fs::read_dir("/proc/self/fd").unwrap().count();
        assert!(fds < 40 + 8 + 25, "{fds} descriptors open");
        let e = spooled(&spool, "good", 7, 300_000);
        let t = Instant::now();
        ship_to(&e, &spool, addr).expect("the agent gets through");
        assert!(t.elapsed() < Duration::from_secs(10), "took {:?}", t.elapsed());
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        loris.join().unwrap();
        let m = collector.join().unwrap().expect("complete");
        assert!(m.complete);
        assert_eq!(std::fs::read(dir.join("good.pcapng")).unwrap(), std::fs::read(e.dump_path(&spool)).unwrap());
        let _ = (std::fs::remove_dir_all(dir), std::fs::remove_dir_all(spool));
    }

    #[test]
    fn a_trigger_names_the_address_that_reaches_each_destination() {
        let any: SocketAddr = "0.0.0.0:7300".parse().unwrap();
        assert_eq!(address_for(any, "127.0.0.1:7301".parse().unwrap()).unwrap(), "127.0.0.1:7300".parse().unwrap());
        let named: SocketAddr = "10.1.2.3:7300".parse().unwrap();
        assert_eq!(address_for(named, "127.0.0.1:7301".parse().unwrap()).unwrap(), named, "a named address is kept");
        if std::net::UdpSocket::bind("[::1]:0").is_ok() {
            let any6: SocketAddr = "[::]:7300".parse().unwrap();
            assert_eq!(address_for(any6, "[::1]:7301".parse().unwrap()).unwrap(), "[::1]:7300".parse().unwrap());
        }
    }

    #[test]
    fn heard_datagrams_alone_cannot_keep_a_real_dump_out_and_a_refusal_is_retried() {
        let (root, spool) = (tempdir("crowd"), tempdir("crowd-spool"));
        let (l, u, addr) = sockets();
        let stop = Arc::new(AtomicBool::new(false));
        let opts = ServeOptions {
            incidents: root.clone(),
            secret: secret(),
            wait: Duration::from_secs(60),
            limits: Limits::default(),
            stop: stop.clone(),
            on_closed: None,
        };
        let server = std::thread::spawn(move || serve(opts, l, u));
        // An insider opens every incident slot with signed "heard" datagrams.
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sent = 1_790_000_000_000_000_000;
        for id in 1..=MAX_OPEN_INCIDENTS as u64 {
            let h = Heard { trigger_id: id, heard_ns: sent, sent_ns: sent + id as i64, node: "ghost".into(), reason: String::new() };
            udp.send_to(&h.encode(&secret()), addr).unwrap();
        }
        wait_until(|| std::fs::read_dir(&root).unwrap().count() == MAX_OPEN_INCIDENTS);
        // A real trigger's dump still gets in.
        let e = spooled(&spool, "n1", 0x1000, 3000);
        ship_to(&e, &spool, addr).unwrap();
        stop.store(true, Ordering::Relaxed);
        server.join().unwrap().unwrap();
        let real = std::fs::read_dir(&root).unwrap().flatten().find(|d| d.file_name().to_string_lossy().ends_with("0000000000001000"));
        assert!(real.is_some_and(|d| d.path().join("n1.pcapng").exists()), "the real dump was filed");

        // A collector that waits for another trigger refuses; the agent retries until its deadline.
        let dir = tempdir("refusing");
        let (l, u, addr) = sockets();
        let mut o = options(&dir, Expect::Count(1), Some(2), Limits::default());
        o.wait = Duration::from_secs(8);
        let collector = std::thread::spawn(move || collect(o, l, u, || {}));
        let e = spooled(&spool, "n1", 1, 100);
        let err = ship_within(&e, &spool, addr, Duration::from_secs(3)).unwrap_err();
        assert!(
            matches!(err, ship::ShipError::Refused { attempts, .. } if attempts > 1) && err.to_string().contains("waits for trigger"),
            "{err}"
        );
        assert!(collector.join().unwrap().is_err());
        let _ = (std::fs::remove_dir_all(root), std::fs::remove_dir_all(spool), std::fs::remove_dir_all(dir));
    }

    #[test]
    fn a_dump_that_cannot_fit_is_refused_and_the_manifest_says_why_each_node_is_missing() {
        let (dir, spool) = (tempdir("full"), tempdir("full-spool"));
        // The free-space check itself, whatever the disk's size (with room for what other
        // tests free meanwhile).
        let free = free_bytes(&dir).unwrap();
        let part = dir.join("none.part");
        let err = room_for(&dir, &part, 2 * free + (1 << 30)).unwrap_err();
        assert!(err.contains("not enough space"), "{err}");
        room_for(&dir, &part, 1000).unwrap();

        // What an earlier, failed transfer left.
        std::fs::create_dir_all(dir.join(".partial")).unwrap();
        let leftover = dir.join(".partial/n3-0000000000000005-0123456789abcdef.part");
        std::fs::write(&leftover, vec![0u8; 4096]).unwrap();
        let (l, u, addr) = sockets();
        let mut o = options(&dir, Expect::Names(vec!["n1".into(), "n2".into(), "n3".into()]), Some(5), Limits::default());
        o.wait = Duration::from_secs(4);
        let collector = std::thread::spawn(move || collect(o, l, u, || {}));
        // n1 heard the trigger and shipped nothing.
        let h = Heard { trigger_id: 5, heard_ns: 1, sent_ns: 1, node: "n1".into(), reason: String::new() };
        UdpSocket::bind("127.0.0.1:0").unwrap().send_to(&h.encode(&secret()), addr).unwrap();
        // n2 offers more than the disk holds (where the disk is smaller than the largest dump allowed).
        let too_big = free < MAX_DUMP_BYTES / 2;
        if too_big {
            let mut e = spooled(&spool, "n2", 5, 100);
            e.size = MAX_DUMP_BYTES;
            let err = ship_within(&e, &spool, addr, Duration::from_millis(1500)).unwrap_err();
            assert!(err.to_string().contains("not enough space"), "{err}");
        }
        assert!(matches!(collector.join().unwrap(), Err(CollectError::Missing(_))));
        let m = Manifest::load(&dir).unwrap().unwrap();
        assert!(m.missing_why["n1"].contains("heard the trigger"), "{:?}", m.missing_why);
        assert_eq!(m.missing_why["n3"], "never heard from");
        if too_big {
            assert!(m.missing_why["n2"].starts_with("refused: not enough space"), "{:?}", m.missing_why);
        }
        assert!(!leftover.exists(), "a given-up incident keeps no failed transfer");
        let _ = (std::fs::remove_dir_all(dir), std::fs::remove_dir_all(spool));
    }

    #[test]
    fn after_a_restart_a_second_dump_under_a_delivered_name_is_refused_not_swapped_in() {
        let (dir, spool) = (tempdir("samename"), tempdir("samename-spool"));
        let (l, u, addr) = sockets();
        let collector = std::thread::spawn({
            let o = options(&dir, Expect::Count(1), Some(9), Limits::default());
            move || collect(o, l, u, || {})
        });
        let first = spooled(&spool, "n1", 9, 2000);
        ship_to(&first, &spool, addr).unwrap();
        collector.join().unwrap().unwrap();
        // `wgo collect` again on the same directory: another agent calls itself n1 too.
        let (l, u, addr) = sockets();
        let mut o = options(&dir, Expect::Count(2), None, Limits::default());
        o.wait = Duration::from_secs(3);
        let collector = std::thread::spawn(move || collect(o, l, u, || {}));
        let other_spool = tempdir("samename-other");
        let other = spooled(&other_spool, "n1", 9, 3000);
        let err = ship_within(&other, &other_spool, addr, Duration::from_millis(800)).unwrap_err();
        assert!(err.to_string().contains("a dump of node n1 was delivered already"), "{err}");
        // The same dump again (a resend) is still taken.
        ship_to(&first, &spool, addr).unwrap();
        let _ = collector.join().unwrap();
        assert_eq!(hex(&super::super::spool::file_sha256(&dir.join("n1.pcapng")).unwrap()), first.sha256, "the delivered dump is kept");
        let _ = (std::fs::remove_dir_all(dir), std::fs::remove_dir_all(spool), std::fs::remove_dir_all(other_spool));
    }

    #[test]
    fn slow_reports_do_not_hold_up_deliveries() {
        let (root, spool) = (tempdir("slowreports"), tempdir("slowreports-spool"));
        let (l, u, addr) = sockets();
        let stop = Arc::new(AtomicBool::new(false));
        // Each report blocks until the test lets it go.
        let (started, release) = (Arc::new(std::sync::atomic::AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
        let on_closed: OnClosed = {
            let (started, release) = (started.clone(), release.clone());
            Arc::new(move |_: &std::path::Path, _: &Manifest| {
                started.fetch_add(1, Ordering::SeqCst);
                while !release.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        let opts = ServeOptions {
            incidents: root.clone(),
            secret: secret(),
            wait: Duration::from_secs(60),
            limits: Limits::default(),
            stop: stop.clone(),
            on_closed: Some(on_closed),
        };
        let server = std::thread::spawn(move || serve(opts, l, u));
        // Nine incidents complete, so nine reports are due (more than the runtime's 8
        // blocking threads), and the first one never ends.
        for id in 1..=9u64 {
            ship_to(&spooled(&spool, "n1", id, 500), &spool, addr).unwrap();
        }
        // Every incident closed (its manifest final), so every report is due.
        let complete = |d: &std::fs::DirEntry| Manifest::load(&d.path()).ok().flatten().is_some_and(|m| m.complete);
        wait_until(|| std::fs::read_dir(&root).unwrap().flatten().filter(complete).count() == 9);
        wait_until(|| started.load(Ordering::SeqCst) >= 1);
        // A delivery still goes through at once.
        ship_within(&spooled(&spool, "n2", 10, 500), &spool, addr, Duration::from_secs(10)).unwrap();
        release.store(true, Ordering::SeqCst);
        wait_until(|| started.load(Ordering::SeqCst) >= 9);
        stop.store(true, Ordering::Relaxed);
        server.join().unwrap().unwrap();
        let _ = (std::fs::remove_dir_all(root), std::fs::remove_dir_all(spool));
    }

    #[test]
    fn a_trigger_nobody_answered_is_not_complete() {
        let dir = tempdir("nobody");
        let (l, u, _) = sockets();
        let mut opts = options(&dir, Expect::Heard, Some(3), Limits::default());
        opts.wait = Duration::from_millis(300);
        let err = collect(opts, l, u, || {}).unwrap_err();
        assert!(matches!(err, CollectError::NoDump { heard: 0 }) && err.to_string().contains("no agent answered"), "{err}");
        let m = Manifest::load(&dir).unwrap().unwrap();
        assert!(!m.complete && m.nodes.is_empty(), "{m:?}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn dumps_of_another_incident_are_refused_not_mixed_in() {
        let dir = tempdir("stale");
        // A manifest for trigger 1: a collector for trigger 2 refuses the directory.
        let m = Manifest { trigger_id: Some(format!("{:016x}", 1)), ..Manifest::default() };
        m.save(&dir).unwrap();
        let (l, u, _) = sockets();
        let mut ready = false;
        let err = collect(options(&dir, Expect::Count(1), Some(2), Limits::default()), l, u, || ready = true).unwrap_err();
        assert!(matches!(err, CollectError::Stale { .. }), "{err}");
        assert!(err.to_string().contains("manifest.json is for trigger 0000000000000001"), "{err}");
        assert!(!ready, "no trigger goes out for a refused directory");

        // Dumps that no manifest names: refused too.
        std::fs::remove_file(dir.join("manifest.json")).unwrap();
        std::fs::write(dir.join("node1.pcapng"), b"old").unwrap();
        let (l, u, _) = sockets();
        let err = collect(options(&dir, Expect::Count(1), Some(2), Limits::default()), l, u, || {}).unwrap_err();
        assert!(err.to_string().contains("node1.pcapng") && err.to_string().contains("new directory"), "{err}");

        // A damaged manifest is named, and left as it is: not taken for a missing one.
        std::fs::remove_file(dir.join("node1.pcapng")).unwrap();
        std::fs::write(dir.join("manifest.json"), b"{\"trigger_id\": \"0000000000000001\", \"no").unwrap();
        let (l, u, _) = sockets();
        let err = collect(options(&dir, Expect::Count(1), Some(2), Limits::default()), l, u, || {}).unwrap_err();
        assert!(err.to_string().contains("manifest.json is damaged"), "{err}");
        assert_eq!(std::fs::read(dir.join("manifest.json")).unwrap(), b"{\"trigger_id\": \"0000000000000001\", \"no");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_manifest_names_the_trigger_before_anything_arrives_and_a_restart_keeps_it() {
        let dir = tempdir("restart");
        let (l, u, _) = sockets();
        let mut opts = options(&dir, Expect::Count(1), Some(0xabc), Limits::default());
        opts.wait = Duration::from_millis(200);
        let mut seen = None;
        let err = collect(opts, l, u, || seen = Manifest::load(&dir).unwrap()).unwrap_err();
        assert!(matches!(err, CollectError::Missing(_)));
        assert_eq!(seen.and_then(|m| m.trigger_id).as_deref(), Some("0000000000000abc"), "written before the trigger goes out");
        // `wgo collect` after a crash: no id given, the manifest's is kept, and an agent
        // offering a dump of another trigger is refused.
        let spool = tempdir("restart-spool");
        let (l, u, addr) = sockets();
        let mut opts = options(&dir, Expect::Count(1), None, Limits::default());
        opts.wait = Duration::from_secs(3);
        let collector = std::thread::spawn(move || collect(opts, l, u, || {}));
        let old = spooled(&spool, "n1", 0x999, 1000);
        // Refused until its deadline (a refusal is retried), well within the collector's wait.
        let e = ship_within(&old, &spool, addr, Duration::from_millis(800)).unwrap_err();
        assert!(e.to_string().contains("waits for trigger 0000000000000abc"), "{e}");
        let current = spooled(&spool, "n2", 0xabc, 1000);
        ship_to(&current, &spool, addr).unwrap();
        assert!(collector.join().unwrap().unwrap().complete);
        let _ = (std::fs::remove_dir_all(dir), std::fs::remove_dir_all(spool));
    }

    #[test]
    fn serve_files_each_trigger_in_its_own_directory_and_reports_it_when_complete() {
        let (root, spool) = (tempdir("serve"), tempdir("serve-spool"));
        let (l, u, addr) = sockets();
        let stop = Arc::new(AtomicBool::new(false));
        let closed: Arc<Mutex<Vec<(PathBuf, Manifest)>>> = Arc::default();
        let on_closed: OnClosed = {
            let closed = closed.clone();
            Arc::new(move |dir: &std::path::Path, m: &Manifest| closed.lock().unwrap().push((dir.to_path_buf(), m.clone())))
        };
        let opts = ServeOptions {
            incidents: root.clone(),
            secret: secret(),
            wait: Duration::from_secs(30),
            limits: Limits::default(),
            stop: stop.clone(),
            on_closed: Some(on_closed),
        };
        let server = std::thread::spawn(move || serve(opts, l, u));
        // Two nodes hear trigger 0xa (one with its reason), one node trigger 0xb.
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sent = 1_790_000_000_000_000_000;
        for (id, node, reason) in [(0xa, "n1", "n2: app (pid 5) killed by SIGSEGV"), (0xa, "n2", ""), (0xb, "n1", "manual")] {
            let h = Heard { trigger_id: id, heard_ns: sent + 5, sent_ns: sent, node: node.into(), reason: reason.into() };
            udp.send_to(&h.encode(&secret()), addr).unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
        for (node, id) in [("n1", 0xa), ("n2", 0xa), ("n1", 0xb)] {
            let e = spooled(&spool, node, id, 5000);
            ship_to(&e, &spool, addr).unwrap();
        }
        wait_until(|| closed.lock().unwrap().len() == 2);
        stop.store(true, Ordering::Relaxed);
        server.join().unwrap().unwrap();
        let mut closed = closed.lock().unwrap().clone();
        closed.sort_by(|a, b| a.0.cmp(&b.0));
        let a = closed.iter().find(|(_, m)| m.trigger_id.as_deref() == Some("000000000000000a")).unwrap();
        assert_eq!(a.0.file_name().unwrap().to_str().unwrap(), format!("{}-000000000000000a", "20260921T141320Z"));
        assert!(a.1.complete && a.1.missing.is_empty());
        assert_eq!(a.1.reason.as_deref(), Some("n2: app (pid 5) killed by SIGSEGV"));
        assert_eq!(a.1.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["n1", "n2"]);
        assert!(a.0.join("n1.pcapng").exists() && a.0.join("n2.pcapng").exists());
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&a.0), 0o700, "an incident directory holds payload bytes");
            assert_eq!(mode(&a.0.join("n1.pcapng")), 0o600);
        }
        let b = closed.iter().find(|(_, m)| m.trigger_id.as_deref() == Some("000000000000000b")).unwrap();
        assert_eq!(b.1.nodes.len(), 1);
        assert_eq!(Manifest::load(&b.0).unwrap().unwrap(), b.1, "the manifest on disk is the one reported");

        // Restarted, it finds the incidents again: a late dump joins its own, reopens and closes it again.
        let (l, u, addr) = sockets();
        let stop = Arc::new(AtomicBool::new(false));
        let reclosed: Arc<Mutex<Vec<Manifest>>> = Arc::default();
        let opts = ServeOptions {
            incidents: root.clone(),
            secret: secret(),
            wait: Duration::from_secs(30),
            limits: Limits::default(),
            stop: stop.clone(),
            on_closed: Some({
                let r = reclosed.clone();
                Arc::new(move |_: &std::path::Path, m: &Manifest| r.lock().unwrap().push(m.clone()))
            }),
        };
        let server = std::thread::spawn(move || serve(opts, l, u));
        let late = spooled(&spool, "n3", 0xb, 700);
        ship_to(&late, &spool, addr).unwrap();
        wait_until(|| reclosed.lock().unwrap().len() == 1);
        stop.store(true, Ordering::Relaxed);
        server.join().unwrap().unwrap();
        assert_eq!(reclosed.lock().unwrap()[0].nodes.len(), 2);
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 2, "no third incident");
        let _ = (std::fs::remove_dir_all(root), std::fs::remove_dir_all(spool));
    }

    /// What an on-path attacker does to the connections it relays.
    #[derive(Clone, Copy, PartialEq)]
    enum OnPath {
        /// Relays every byte, and keeps a copy.
        Watch,
        /// Puts a refusal of its own in place of the collector's answer to the offer.
        InjectRefusal,
        /// Flips a bit of the agent's first dump frame, on the first connection only.
        FlipFirstDumpFrame,
    }

    /// A relay between agents and the collector at `to`; returns its address and what it saw.
    fn on_path(to: SocketAddr, mode: OnPath) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
        use std::io::{Read, Write};
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<u8>>> = Arc::default();
        let seen2 = seen.clone();
        // One frame (length and payload) from `r`, or None at its end.
        fn frame(r: &mut std::net::TcpStream) -> Option<Vec<u8>> {
            let mut len = [0u8; 4];
            r.read_exact(&mut len).ok()?;
            let mut b = vec![0u8; u32::from_be_bytes(len) as usize];
            r.read_exact(&mut b).ok()?;
            Some([len.to_vec(), b].concat())
        }
        std::thread::spawn(move || {
            for (k, agent) in l.incoming().flatten().enumerate() {
                let Ok(collector) = std::net::TcpStream::connect(to) else { continue };
                for (mut from, mut to, up) in
                    [(agent.try_clone().unwrap(), collector.try_clone().unwrap(), true), (collector, agent, false)]
                {
                    let seen = seen2.clone();
                    std::thread::spawn(move || {
                        let mut n = 0;
                        while let Some(mut f) = frame(&mut from) {
                            seen.lock().unwrap().extend_from_slice(&f);
                            if mode == OnPath::InjectRefusal && !up && n == 1 {
                                f = Frame::Refuse { reason: "injected on the path".into() }.encode();
                            }
                            if mode == OnPath::FlipFirstDumpFrame && up && n == 2 && k == 0 {
                                f[100] ^= 1;
                            }
                            n += 1;
                            if to.write_all(&f).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        (addr, seen)
    }

    /// A spooled dump that holds `marker` many times over.
    fn spooled_with(spool: &std::path::Path, node: &str, trigger_id: u64, marker: &[u8], copies: usize) -> SpoolEntry {
        let bytes = marker.repeat(copies);
        let e = SpoolEntry {
            node: node.into(),
            trigger_id,
            heard_ns: 1,
            collector: String::new(),
            size: bytes.len() as u64,
            sha256: hex(&<sha2::Sha256 as sha2::Digest>::digest(&bytes)),
            shipped: false,
        };
        std::fs::write(e.dump_path(spool), &bytes).unwrap();
        e
    }

    #[test]
    fn nobody_on_the_path_reads_a_dump_or_forges_a_refusal() {
        let (dir, spool) = (tempdir("onpath"), tempdir("onpath-spool"));
        let (l, u, addr) = sockets();
        let collector = std::thread::spawn({
            let o = options(&dir, Expect::Names(vec!["n1".into(), "n2".into()]), Some(4), Limits::default());
            move || collect(o, l, u, || {})
        });
        // What crosses the wire holds none of the dump's bytes in the clear.
        let marker = b"PAYLOAD-MARKER-0451";
        let (watched, seen) = on_path(addr, OnPath::Watch);
        let e = spooled_with(&spool, "n1", 4, marker, 20_000);
        ship_to(&e, &spool, watched).unwrap();
        let seen = seen.lock().unwrap().clone();
        assert!(seen.len() as u64 > e.size, "the relay saw the transfer ({} bytes)", seen.len());
        assert!(!seen.windows(marker.len()).any(|w| w == marker), "a payload marker crossed the wire in the clear");
        assert_eq!(std::fs::read(dir.join("n1.pcapng")).unwrap(), std::fs::read(e.dump_path(&spool)).unwrap());

        // A refusal injected on the path is no refusal: a transport error, retried until the deadline.
        let (forging, _) = on_path(addr, OnPath::InjectRefusal);
        let e2 = spooled(&spool, "n2", 4, 70_000);
        let err = ship_within(&e2, &spool, forging, Duration::from_millis(1500)).unwrap_err();
        assert!(matches!(&err, ship::ShipError::Deadline { attempts, last, .. } if *attempts > 1 && last.contains("integrity")), "{err}");
        // A bit flipped in a dump frame ends that attempt; the retry resumes and delivers the dump intact.
        let (flipping, _) = on_path(addr, OnPath::FlipFirstDumpFrame);
        ship_to(&e2, &spool, flipping).unwrap();
        assert_eq!(std::fs::read(dir.join("n2.pcapng")).unwrap(), std::fs::read(e2.dump_path(&spool)).unwrap());
        assert!(collector.join().unwrap().unwrap().complete);
        let _ = (std::fs::remove_dir_all(dir), std::fs::remove_dir_all(spool));
    }

    /// An insider (it holds the secret) at `from`: offers a `size`-byte dump of `node` and
    /// returns the connection once the collector gave it a turn (its Resume), or None if it
    /// was let go or refused.
    fn insider_offer(to: SocketAddr, from: std::net::IpAddr, node: &str, size: u64) -> Option<(std::net::TcpStream, Channel)> {
        use std::io::Write;
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
        sock.bind(&SocketAddr::new(from, 0).into()).ok()?;
        sock.connect(&to.into()).ok()?;
        let mut s: std::net::TcpStream = sock.into();
        let nonce = [7u8; 16];
        s.write_all(&Frame::Hello { node: node.into(), nonce }.encode()).ok()?;
        let Frame::Challenge { nonce: cnonce, .. } = wire::read_frame(&mut s).ok()? else { return None };
        let mut ch = Channel::new(&secret(), &nonce, &cnonce, node, Side::Agent);
        let mut offer = wire::Offer { trigger_id: 11, heard_ns: 1, size, sha256: [3; 32], mac: [0; 32] };
        offer.mac = wire::agent_mac(&secret(), &nonce, &cnonce, node, &offer);
        s.write_all(&ch.seal(&Frame::Offer(offer))).ok()?;
        match wire::read_sealed(&mut s, &mut ch).ok()? {
            Frame::Resume { .. } => Some((s, ch)),
            _ => None,
        }
    }

    #[test]
    fn an_insider_trickling_from_one_host_cannot_hold_every_transfer_slot() {
        use std::io::{Read, Write};
        let (dir, spool) = (tempdir("insider"), tempdir("insider-spool"));
        let (l, u, addr) = sockets();
        let limits = Limits {
            transfers: 4,
            waiting: 8,
            per_source_transfers: 2,
            per_source_waiting: 4,
            min_rate: 4096,
            rate_window: Duration::from_millis(500),
            ..Limits::default()
        };
        let mut o = options(&dir, Expect::Names(vec!["real".into()]), Some(11), limits);
        o.wait = Duration::from_secs(30);
        let collector = std::thread::spawn(move || collect(o, l, u, || {}));
        // From 127.0.0.2: offers of 1 GiB that send a byte every 50 ms, and more offers
        // queued behind them, reopened whenever the collector lets one go.
        let insider: std::net::IpAddr = "127.0.0.2".parse().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (cut, held) = (Arc::new(std::sync::atomic::AtomicUsize::new(0)), Arc::new(std::sync::atomic::AtomicUsize::new(0)));
        let trickle = {
            let (stop, cut, held) = (stop.clone(), cut.clone(), held.clone());
            std::thread::spawn(move || {
                let mut workers = Vec::new();
                for k in 0..12 {
                    let (stop, cut, held) = (stop.clone(), cut.clone(), held.clone());
                    workers.push(std::thread::spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            let Some((mut s, mut ch)) = insider_offer(addr, insider, &format!("ghost{k}"), 1 << 30) else {
                                std::thread::sleep(Duration::from_millis(20));
                                continue;
                            };
                            held.fetch_add(1, Ordering::Relaxed);
                            while !stop.load(Ordering::Relaxed) && s.write_all(&ch.seal_data(b"x")).is_ok() {
                                std::thread::sleep(Duration::from_millis(50));
                            }
                            // The collector closes a transfer it stopped.
                            s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
                            if matches!(s.read(&mut [0u8; 64]), Ok(0) | Err(_)) && !stop.load(Ordering::Relaxed) {
                                cut.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }));
                }
                for w in workers {
                    w.join().unwrap();
                }
            })
        };
        wait_until(|| held.load(Ordering::Relaxed) >= 2);
        // A real agent on another host still gets a turn, and delivers.
        let e = spooled(&spool, "real", 11, 300_000);
        ship_within(&e, &spool, addr, Duration::from_secs(15)).expect("the real agent gets through");
        // The trickling transfers are stopped for their rate, not kept until their idle deadline.
        wait_until(|| cut.load(Ordering::Relaxed) >= 2);
        stop.store(true, Ordering::Relaxed);
        trickle.join().unwrap();
        let m = collector.join().unwrap().unwrap();
        assert!(m.complete);
        assert_eq!(std::fs::read(dir.join("real.pcapng")).unwrap(), std::fs::read(e.dump_path(&spool)).unwrap());
        let _ = (std::fs::remove_dir_all(dir), std::fs::remove_dir_all(spool));
    }

    fn wait_until(mut ok: impl FnMut() -> bool) {
        let t = Instant::now();
        while !ok() {
            assert!(t.elapsed() < Duration::from_secs(20), "timed out");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
