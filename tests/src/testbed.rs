//! Many nodes on one machine, for tests, the demo and benchmarks.
//!
//! Each node gets its own network namespace and cgroup; nodes are joined by veth
//! pairs to a bridge that lives in a separate "switch" namespace, so the host's own
//! namespace is never touched. Everything is removed in `Drop`, also when a test panics.

use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// Runs a command, failing with its stderr when it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out)
}

fn ip(args: &[&str]) -> anyhow::Result<Output> {
    run(Command::new("ip").args(args))
}

/// A netfilter hook of a node's own firewall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Input,
    Output,
}

pub struct Node {
    pub name: String,
    pub netns: String,
    pub cgroup: PathBuf,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// This node's end of its link, as seen in the switch namespace.
    pub switch_port: String,
    netns_file: File,
}

impl Node {
    /// A command that runs inside this node: its network namespace and its cgroup.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> anyhow::Result<Command> {
        self.command_in(program, Some(&self.cgroup))
    }

    /// A command in this node's network namespace but outside its cgroup (or in another one).
    pub fn command_in(&self, program: impl AsRef<std::ffi::OsStr>, cgroup: Option<&Path>) -> anyhow::Result<Command> {
        let ns_fd = self.netns_file.try_clone()?;
        let procs = match cgroup {
            Some(cg) => Some(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(cg.join("cgroup.procs"))
                    .with_context(|| format!("opening {}/cgroup.procs", cg.display()))?,
            ),
            None => None,
        };
        let mut cmd = Command::new(program);
        // SAFETY: only async-signal-safe syscalls (setns, write) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns_fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(p) = &procs {
                    // "0" moves the writing process itself.
                    if libc::write(p.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        Ok(cmd)
    }

    /// Runs `f` on a thread that joined this node's network namespace (setns on a network
    /// namespace changes only the calling thread), e.g. to send crafted datagrams.
    pub fn in_netns<R: Send>(&self, f: impl FnOnce() -> R + Send) -> anyhow::Result<R> {
        let fd = self.netns_file.as_raw_fd();
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: fd is the open netns file, borrowed for this call; setns affects only this thread.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    return Err(anyhow::anyhow!("setns into {}: {}", self.netns, std::io::Error::last_os_error()));
                }
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in {} panicked", self.netns))?
        })
    }

    /// Spawns a process inside the node that is killed when the guard drops.
    pub fn spawn(&self, cmd: &mut Command) -> anyhow::Result<ChildGuard> {
        let child = cmd.spawn().with_context(|| format!("spawning {cmd:?} in node {}", self.name))?;
        Ok(ChildGuard(Some(child)))
    }

    /// Runs `ip ARGS` in this node's namespace.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut full = vec!["-n", &self.netns];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Runs an nft script (`nft -f -`) in this node's namespace.
    pub fn nft(&self, script: &str) -> anyhow::Result<()> {
        nft_in(&self.netns, &self.name, script)
    }

    /// This node's own firewall (table `wgo_fw`) drops what arrives from `peers` (`Input`) or
    /// what it sends to them (`Output`); `None` removes the table.
    pub fn firewall(&self, hook: Hook, peers: Option<&[Ipv4Addr]>) -> anyhow::Result<()> {
        let Some(peers) = peers else { return self.nft("delete table inet wgo_fw") };
        let set = peers.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ");
        let (chain, dir) = match hook {
            Hook::Input => ("input", "saddr"),
            Hook::Output => ("output", "daddr"),
        };
        self.nft(&format!(
            "table inet wgo_fw {{\n  chain {chain} {{\n    type filter hook {chain} priority 0; policy accept;\n    ip {dir} {{ {set} }} drop\n  }}\n}}\n"
        ))
    }

    /// Freezes (or thaws) every process of the node's cgroup (cgroup v2 `cgroup.freeze`),
    /// waiting until the kernel reports it done.
    pub fn freeze(&self, frozen: bool) -> anyhow::Result<()> {
        std::fs::write(self.cgroup.join("cgroup.freeze"), if frozen { "1" } else { "0" })
            .with_context(|| format!("writing {}/cgroup.freeze", self.cgroup.display()))?;
        let want = if frozen { "frozen 1" } else { "frozen 0" };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let events = std::fs::read_to_string(self.cgroup.join("cgroup.events"))?;
            if events.lines().any(|l| l == want) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{}: cgroup not {want} after 5 s", self.name);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// One rule of [`Testbed::switch_drop`].
pub struct SwitchRule {
    pub from: Vec<Ipv4Addr>,
    pub to: Vec<Ipv4Addr>,
    /// `None`: everything.
    pub percent: Option<u8>,
}

/// Runs an nft script (`nft -f -`) in a namespace.
fn nft_in(netns: &str, what: &str, script: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft")?;
    child.stdin.take().expect("piped").write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("nft in {what} failed: {}\nscript:\n{script}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// A child process killed (and reaped) on drop.
pub struct ChildGuard(Option<Child>);

impl ChildGuard {
    pub fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }
    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("child taken")
    }
    /// Sends a signal (e.g. SIGINT for a clean stop).
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.0 {
            // SAFETY: kill has no memory effects; the child is ours and not yet reaped.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }
    /// Waits for the child to exit, up to `timeout`; kills it if it does not.
    pub fn wait_timeout(mut self, timeout: Duration) -> anyhow::Result<std::process::Output> {
        let mut child = self.0.take().expect("child taken");
        let deadline = Instant::now() + timeout;
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let out = child.wait_with_output()?;
                bail!("process did not exit within {timeout:?}; stderr: {}", String::from_utf8_lossy(&out.stderr));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(child.wait_with_output()?)
    }
}

impl From<Child> for ChildGuard {
    fn from(c: Child) -> ChildGuard {
        ChildGuard(Some(c))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub struct Testbed {
    pub id: String,
    pub nodes: Vec<Node>,
    pub switch_netns: String,
    cgroup_parent: PathBuf,
}

/// IPv4 subnet every testbed uses inside its own namespaces (never routed anywhere).
pub const SUBNET_V4: [u8; 3] = [10, 99, 0];
pub const BROADCAST_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 255);

impl Testbed {
    /// Creates `count` nodes named `node1`…; requires root.
    pub fn new(count: usize) -> anyhow::Result<Testbed> {
        let names: Vec<String> = (1..=count).map(|i| format!("node{i}")).collect();
        Testbed::with_names(&names)
    }

    pub fn with_names(names: &[String]) -> anyhow::Result<Testbed> {
        let id = format!("w{}x{}", std::process::id() % 100_000, NEXT_ID.fetch_add(1, Ordering::Relaxed));
        let mount = wgo::node::cgroup::cgroup2_mount()?;
        let cgroup_parent = mount.join(format!("wgo-{id}"));
        let mut bed = Testbed { id: id.clone(), nodes: Vec::new(), switch_netns: format!("{id}-sw"), cgroup_parent };
        std::fs::create_dir(&bed.cgroup_parent).with_context(|| format!("creating cgroup {}", bed.cgroup_parent.display()))?;
        ip(&["netns", "add", &bed.switch_netns])?;
        ip(&["-n", &bed.switch_netns, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &bed.switch_netns, "link", "set", "br0", "up"])?;
        for (i, name) in names.iter().enumerate() {
            let node = bed.add_node(name, i as u8 + 1)?;
            bed.nodes.push(node);
        }
        Ok(bed)
    }

    fn add_node(&self, name: &str, n: u8) -> anyhow::Result<Node> {
        let netns = format!("{}-{}", self.id, name);
        let cgroup = self.cgroup_parent.join(name);
        std::fs::create_dir(&cgroup).with_context(|| format!("creating cgroup {}", cgroup.display()))?;
        ip(&["netns", "add", &netns])?;
        let port = format!("p{n}");
        ip(&["-n", &self.switch_netns, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &netns])?;
        ip(&["-n", &self.switch_netns, "link", "set", &port, "master", "br0", "up"])?;
        let ipv4 = Ipv4Addr::new(SUBNET_V4[0], SUBNET_V4[1], SUBNET_V4[2], n);
        let ipv6: Ipv6Addr = format!("fd00:77::{n}").parse().expect("valid v6");
        ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        ip(&["-n", &netns, "addr", "add", &format!("{ipv4}/24"), "brd", "+", "dev", "eth0"])?;
        ip(&["-n", &netns, "addr", "add", &format!("{ipv6}/64"), "dev", "eth0", "nodad"])?;
        ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
        let netns_file = File::open(format!("/run/netns/{netns}")).with_context(|| format!("opening netns {netns}"))?;
        Ok(Node { name: name.to_string(), netns, cgroup, ipv4, ipv6, switch_port: port, netns_file })
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes.iter().find(|n| n.name == name).unwrap_or_else(|| panic!("no node {name}"))
    }

    /// Runs an nft script in the switch's namespace (the bridge's own rules: the network).
    pub fn switch_nft(&self, script: &str) -> anyhow::Result<()> {
        nft_in(&self.switch_netns, "the switch", script)
    }

    /// Makes the switch drop `tenths`/10 of what `from` sends `to` (`udp_port`: only
    /// UDP to that port), or stops it: a lossy link, not either node's doing.
    pub fn lossy_link(&self, from: &str, to: &str, tenths: u8, udp_port: Option<u16>, on: bool) -> anyhow::Result<()> {
        if !on {
            return self.switch_nft("delete table bridge wgo_lossy");
        }
        let port = udp_port.map_or(String::new(), |p| format!("udp dport {p} "));
        self.switch_nft(&format!(
            "table bridge wgo_lossy {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    ip saddr {} ip daddr {} {port}numgen random mod 10 < {tenths} counter drop\n  }}\n}}\n",
            self.node(from).ipv4,
            self.node(to).ipv4
        ))
    }

    /// Installs (or, with `None`, removes) the switch's table `table`: each rule drops what
    /// any of its sources sends to any of its destinations, all of it or `percent`% at random.
    /// A fault of the network, not of either node. Each rule and brace on its own line (nft
    /// 1.0.6 rejects `... drop; } }`).
    pub fn switch_drop(&self, table: &str, rules: Option<&[SwitchRule]>) -> anyhow::Result<()> {
        let Some(rules) = rules else { return self.switch_nft(&format!("delete table bridge {table}")) };
        let mut script = format!("table bridge {table} {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n");
        for r in rules {
            let set = |a: &[Ipv4Addr]| a.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ");
            let chance = r.percent.map_or(String::new(), |p| format!("numgen random mod 100 < {p} "));
            script += &format!("    ip saddr {{ {} }} ip daddr {{ {} }} {chance}drop\n", set(&r.from), set(&r.to));
        }
        script += "  }\n}\n";
        self.switch_nft(&script)
    }

    /// Packets the switch's lossy rule dropped so far.
    pub fn lossy_link_drops(&self) -> anyhow::Result<u64> {
        let out = Command::new("ip").args(["netns", "exec", &self.switch_netns, "nft", "list", "table", "bridge", "wgo_lossy"]).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.split("counter packets ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .context("no counter in the lossy rule")
    }

    /// Takes a node's link down or up at the switch: a clean cut, both directions.
    pub fn set_link(&self, node: &str, up: bool) -> anyhow::Result<()> {
        let port = &self.node(node).switch_port;
        ip(&["-n", &self.switch_netns, "link", "set", port, if up { "up" } else { "down" }])?;
        Ok(())
    }

    /// A cgroup for processes that live in a node's namespace but must not be recorded.
    pub fn side_cgroup(&self, name: &str) -> anyhow::Result<PathBuf> {
        let p = self.cgroup_parent.join(name);
        if !p.exists() {
            std::fs::create_dir(&p).with_context(|| format!("creating cgroup {}", p.display()))?;
        }
        Ok(p)
    }
}

/// Kills every process in a cgroup and removes it.
fn remove_cgroup(path: &Path) {
    let _ = std::fs::write(path.join("cgroup.freeze"), "0");
    let _ = std::fs::write(path.join("cgroup.kill"), "1");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::remove_dir(path).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.cgroup_parent) {
            for e in entries.flatten() {
                if e.path().is_dir() {
                    remove_cgroup(&e.path());
                }
            }
        }
        remove_cgroup(&self.cgroup_parent);
        // Every namespace with our id, including any a failed setup left half made.
        let prefix = format!("{}-", self.id);
        if let Ok(entries) = std::fs::read_dir("/run/netns") {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&prefix) {
                    let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
                }
            }
        }
    }
}

/// A `wgo record`/`wgo agent` process whose output is collected for later checks.
pub struct WgoProcess {
    guard: ChildGuard,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl WgoProcess {
    /// Spawns `cmd` and waits until its stderr contains `ready` (e.g. "recording").
    pub fn spawn(cmd: &mut Command, ready: &str, timeout: Duration) -> anyhow::Result<WgoProcess> {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().with_context(|| format!("spawning {cmd:?}"))?;
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            collect(child.stdout.take().expect("piped"), stdout.clone()),
            collect(child.stderr.take().expect("piped"), stderr.clone()),
        ];
        let mut proc = WgoProcess { guard: ChildGuard(Some(child)), stdout, stderr, readers };
        let deadline = Instant::now() + timeout;
        while !proc.stderr().contains(ready) {
            if let Some(status) = proc.guard.child().try_wait()? {
                std::thread::sleep(Duration::from_millis(100));
                bail!("{cmd:?} exited ({status}) before it was ready: {}", proc.stderr());
            }
            if Instant::now() > deadline {
                bail!("{cmd:?} not ready after {timeout:?}; stderr so far: {}", proc.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(proc)
    }

    pub fn id(&self) -> u32 {
        self.guard.id()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("lock").clone()
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().expect("lock").clone()
    }

    pub fn signal(&self, sig: i32) {
        self.guard.signal(sig);
    }

    /// Waits for exit; returns the exit status with everything it printed.
    pub fn wait(mut self, timeout: Duration) -> anyhow::Result<(std::process::ExitStatus, String, String)> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.guard.child().try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                bail!("process {} did not exit within {timeout:?}; stderr: {}", self.id(), self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Ok((status, self.stdout(), self.stderr()))
    }

    /// Asks for a clean stop (SIGINT) and waits for it.
    pub fn stop(self, timeout: Duration) -> anyhow::Result<(std::process::ExitStatus, String, String)> {
        self.signal(libc::SIGINT);
        self.wait(timeout)
    }
}

/// A `$NOTIFY_SOCKET` for one process: it says `READY=1` there once it is recording
/// (as it would to systemd), so nobody has to look for its programs with outside tools.
pub struct ReadySocket {
    sock: std::os::unix::net::UnixDatagram,
    path: PathBuf,
}

impl ReadySocket {
    /// Binds a socket at `path` (which must not exist yet).
    pub fn bind(path: PathBuf) -> anyhow::Result<ReadySocket> {
        let _ = std::fs::remove_file(&path);
        let sock = std::os::unix::net::UnixDatagram::bind(&path).with_context(|| format!("binding {}", path.display()))?;
        Ok(ReadySocket { sock, path })
    }

    /// Sets the variable that points a command at this socket.
    pub fn point(&self, cmd: &mut Command) {
        cmd.env("NOTIFY_SOCKET", &self.path);
    }

    /// Waits for `READY=1`; fails after `timeout` or as soon as `proc` exits.
    pub fn wait(&self, proc: &mut WgoProcess, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        self.sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        let mut buf = [0u8; 4096];
        loop {
            match self.sock.recv(&mut buf) {
                Ok(n) if String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1") => return Ok(()),
                Ok(_) => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => return Err(e).context("reading the notify socket"),
            }
            if let Some(status) = proc.guard.child().try_wait()? {
                std::thread::sleep(Duration::from_millis(100));
                bail!("exited ({status}) before it was ready: {}", proc.stderr());
            }
            if Instant::now() > deadline {
                bail!("not ready after {timeout:?}; stderr so far: {}", proc.stderr());
            }
        }
    }
}

impl Drop for ReadySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn collect(pipe: impl std::io::Read + Send + 'static, sink: Arc<Mutex<String>>) -> std::thread::JoinHandle<()> {
    use std::io::BufRead;
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            let mut s = sink.lock().expect("lock");
            s.push_str(&line);
            s.push('\n');
        }
    })
}
