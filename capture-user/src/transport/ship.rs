//! Shipping dumps from an agent's spool to a collector: authenticated both ways, encrypted,
//! rate-limited, resumable, retried with backoff until a deadline.

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::spool::SpoolEntry;
use super::wire::{self, Channel, Frame, Offer, Secret, Side};

#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error("{0}")]
    Spool(String),
    #[error("the collector at {to} refused the dump until the deadline ({attempts} attempts): {reason}")]
    Refused { to: SocketAddr, attempts: u32, reason: String },
    #[error("gave up shipping to {to} after {attempts} attempts ({last})")]
    Deadline { to: SocketAddr, attempts: u32, last: String },
    #[error("stopped by a signal while shipping to {0}")]
    Stopped(SocketAddr),
}

/// Sends at most `rate` bytes per second (0: unlimited), in chunks.
struct Pacer {
    rate: u64,
    start: Instant,
    sent: u64,
}

impl Pacer {
    fn wait(&mut self, more: u64) {
        self.sent += more;
        if self.rate == 0 {
            return;
        }
        let due = Duration::from_secs_f64(self.sent as f64 / self.rate as f64);
        let elapsed = self.start.elapsed();
        if due > elapsed {
            std::thread::sleep(due - elapsed);
        }
    }
}

pub struct ShipOptions<'a> {
    pub secret: &'a Secret,
    pub rate: u64,
    pub deadline: Instant,
    /// Set (by SIGTERM, say) to give up at once: the dump stays in the spool.
    pub stop: Option<&'a AtomicBool>,
}

impl ShipOptions<'_> {
    fn stopped(&self) -> bool {
        self.stop.is_some_and(|s| s.load(Ordering::Relaxed))
    }
}

/// Where a dump's bytes are: its spool file, or memory (when the spool could not take it).
#[derive(Clone, Copy)]
pub enum Source<'a> {
    File(&'a Path),
    Memory(&'a [u8]),
}

/// Ships one dump, retrying with backoff until it is delivered or the deadline passes.
pub fn ship(entry: &SpoolEntry, source: Source<'_>, to: SocketAddr, opts: &ShipOptions<'_>) -> Result<(), ShipError> {
    let digest = entry.digest().ok_or_else(|| ShipError::Spool(format!("bad digest {:?} in spool entry", entry.sha256)))?;
    let mut attempts = 0;
    let mut backoff = Duration::from_millis(200);
    loop {
        attempts += 1;
        match ship_once(entry, source, &digest, to, opts) {
            Ok(()) => return Ok(()),
            Err(_) if opts.stopped() => return Err(ShipError::Stopped(to)),
            Err(failed) => {
                // A refusal may pass (the collector had too many incidents open, or waits for
                // another trigger until restarted): retried like a failure, so that the
                // application is not stopped before the deadline.
                let (refused, why) = match failed {
                    Attempt::Refused(r) => (true, r),
                    Attempt::Retry(r) => (false, r),
                };
                if Instant::now() + backoff > opts.deadline {
                    return Err(if refused {
                        ShipError::Refused { to, attempts, reason: why }
                    } else {
                        ShipError::Deadline { to, attempts, last: why }
                    });
                }
                if refused {
                    tracing::warn!("the collector at {to} refused the dump ({why}); retrying in {backoff:?}");
                } else {
                    tracing::info!("shipping to {to} failed ({why}); retrying in {backoff:?}");
                }
                // In small steps, so that a stop is noticed at once.
                if !pause(backoff, opts) {
                    return Err(ShipError::Stopped(to));
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Sleeps `d` in small steps; false if a stop came meanwhile.
fn pause(d: Duration, opts: &ShipOptions<'_>) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if opts.stopped() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20).min(until.saturating_duration_since(Instant::now())));
    }
    true
}

enum Attempt {
    Retry(String),
    Refused(String),
}

impl From<std::io::Error> for Attempt {
    fn from(e: std::io::Error) -> Attempt {
        Attempt::Retry(e.to_string())
    }
}

fn connect(to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_write_timeout(Some(Duration::from_secs(30)))?;
    s.set_nodelay(true)?;
    Ok(s)
}

fn ship_once(entry: &SpoolEntry, source: Source<'_>, digest: &[u8; 32], to: SocketAddr, opts: &ShipOptions<'_>) -> Result<(), Attempt> {
    let mut s = connect(to)?;
    // A cut link must not hold us past the deadline in a blocked write.
    let left = opts.deadline.saturating_duration_since(Instant::now()).clamp(Duration::from_secs(1), Duration::from_secs(30));
    s.set_write_timeout(Some(left))?;
    s.set_read_timeout(Some(left))?;
    let nonce: [u8; 16] = wire::random_bytes();
    s.write_all(&Frame::Hello { node: entry.node.clone(), nonce }.encode())?;
    let Frame::Challenge { nonce: cnonce, mac } = wire::read_frame(&mut s)? else {
        return Err(Attempt::Retry("collector did not send a challenge".into()));
    };
    if !wire::check_collector_mac(opts.secret, &nonce, &cnonce, &mac) {
        // Someone without the secret: never send it our dump. Not a delivery either: the
        // real collector may still answer at this address, so keep trying until the deadline.
        return Err(Attempt::Retry("the collector failed authentication (wrong secret, or not the collector)".into()));
    }
    // Sealed from here on: a frame that does not open (a refusal injected on the path, say)
    // is a failed attempt, retried, never taken for the collector's word.
    let mut ch = Channel::new(opts.secret, &nonce, &cnonce, &entry.node, Side::Agent);
    let mut offer = Offer { trigger_id: entry.trigger_id, heard_ns: entry.heard_ns, size: entry.size, sha256: *digest, mac: [0; 32] };
    offer.mac = wire::agent_mac(opts.secret, &nonce, &cnonce, &entry.node, &offer);
    s.write_all(&ch.seal(&Frame::Offer(offer)))?;
    let offset = match wire::read_sealed(&mut s, &mut ch)? {
        Frame::Resume { offset } if offset <= entry.size => offset,
        Frame::Resume { offset } => return Err(Attempt::Retry(format!("collector asked to resume at {offset}, past the end"))),
        Frame::Refuse { reason } => return Err(Attempt::Refused(reason)),
        _ => return Err(Attempt::Retry("unexpected reply to the offer".into())),
    };
    let mut f: Box<dyn Read> = match source {
        Source::File(path) => {
            let mut f = std::fs::File::open(path)?;
            f.seek(SeekFrom::Start(offset))?;
            Box::new(f)
        }
        Source::Memory(bytes) => Box::new(bytes.get(offset as usize..).unwrap_or(&[])),
    };
    let mut pacer = Pacer { rate: opts.rate, start: Instant::now(), sent: 0 };
    let chunk = if opts.rate == 0 { wire::DATA_CHUNK } else { (opts.rate as usize / 20).clamp(1024, wire::DATA_CHUNK) };
    let mut buf = vec![0u8; chunk];
    let mut done = offset;
    while done < entry.size {
        if opts.stopped() {
            return Err(Attempt::Retry(format!("stopped at {done} of {} bytes", entry.size)));
        }
        if Instant::now() > opts.deadline {
            return Err(Attempt::Retry(format!("deadline passed at {done} of {} bytes", entry.size)));
        }
        let want = buf.len().min((entry.size - done) as usize);
        f.read_exact(&mut buf[..want])?;
        s.write_all(&ch.seal_data(&buf[..want]))?;
        done += want as u64;
        pacer.wait(want as u64);
    }
    match wire::read_sealed(&mut s, &mut ch)? {
        Frame::Done { ok: true, mac } if wire::check_done_mac(opts.secret, &nonce, true, &mac) => Ok(()),
        Frame::Done { ok: false, .. } => Err(Attempt::Retry("the collector's copy did not match the digest; sending it again".into())),
        _ => Err(Attempt::Retry("no valid confirmation from the collector".into())),
    }
}
