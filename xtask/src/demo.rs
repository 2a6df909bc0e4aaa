//! The demo: real traffic between network namespaces, recorded by wgo and summarised.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use wgo::testbed::{self, Testbed, WgoProcess};

use crate::build::root;

pub fn run() -> anyhow::Result<()> {
    crate::build::all()?;
    crate::setup::packages(crate::setup::DEMO_PACKAGES)?;
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo creates network namespaces and loads eBPF: run it as root");
    }
    let wgo = root().join("target/release/wgo");
    let peer = root().join("target/release/wgo-peer");
    let out_dir = root().join("wgo-out");
    std::fs::create_dir_all(&out_dir)?;
    let dump = out_dir.join("demo-node1.pcapng");

    eprintln!("demo: creating 2 nodes (network namespaces + cgroups) on a bridge");
    let bed = Testbed::new(2)?;
    let (n1, n2) = (bed.node("node1"), bed.node("node2"));
    let _udp = n2.spawn(n2.command(&peer)?.args(["udp-echo", "--bind", "[::]:7000"]))?;
    let _tcp = n2.spawn(n2.command(&peer)?.args(["tcp-echo", "--bind", "[::]:7001"]))?;

    eprintln!("demo: recording node1's cgroup {}", n1.cgroup.display());
    let rec = WgoProcess::spawn(
        Command::new(&wgo)
            .args(["record", "--node", "node1", "--cgroup"])
            .arg(&n1.cgroup)
            .arg("--out")
            .arg(&dump),
        "recording",
        Duration::from_secs(10),
    )?;

    eprintln!("demo: node1 talks to node2 over UDP, TCP and ICMP, IPv4 and IPv6");
    std::thread::sleep(Duration::from_millis(300)); // let the echo servers bind
    for to in [format!("{}:7000", n2.ipv4), format!("[{}]:7000", n2.ipv6)] {
        testbed::run(n1.command(&peer)?.args(["udp-request", "--to", &to, "--count", "10", "--tag", "TASK"]))?;
    }
    for to in [format!("{}:7001", n2.ipv4), format!("[{}]:7001", n2.ipv6)] {
        testbed::run(n1.command(&peer)?.args(["tcp-send", "--to", &to, "--bytes", "20000"]))?;
    }
    testbed::run(n1.command("ping")?.args(["-c", "3", "-i", "0.2", &n2.ipv4.to_string()]))?;
    testbed::run(n1.command("ping")?.args(["-6", "-c", "3", "-i", "0.2", &n2.ipv6.to_string()]))?;

    let (status, stdout, stderr) = rec.stop(Duration::from_secs(30))?;
    if !status.success() {
        bail!("wgo record failed ({status}): {stderr}");
    }
    print!("{stdout}");
    let size = std::fs::metadata(&dump).with_context(|| format!("reading {}", dump.display()))?.len();
    println!("demo: {} ({size} bytes) opens in Wireshark: wireshark {}", dump.display(), dump.display());
    drop(bed);
    eprintln!("demo: removed the namespaces and cgroups");
    Ok(())
}
