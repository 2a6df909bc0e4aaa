//! Finding and checking cgroup v2 directories.
//!
//! The cgroup2 mount point differs between hosts (`/sys/fs/cgroup` on unified hosts,
//! `/sys/fs/cgroup/unified` on hybrid ones), so it is always read from mountinfo.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no cgroup2 filesystem is mounted here (looked in /proc/self/mountinfo); wgo needs cgroup v2. Under `ip netns exec`, which mounts a /sys of its own without the cgroup filesystems, run wgo with `nsenter --net=/run/netns/NAME` instead: it enters only the network namespace"
    )]
    NoCgroup2Mount,
    #[error("cgroup path {0} does not exist")]
    Missing(PathBuf),
    #[error("{path} is on a cgroup v1 hierarchy; wgo needs a cgroup v2 directory (cgroup2 is mounted at {mount})")]
    Version1 { path: PathBuf, mount: String },
    #[error("{0} is not a cgroup directory (not on a cgroup2 filesystem)")]
    NotCgroup(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;

/// Where cgroup2 is mounted, from `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|source| CgroupError::Io { path: "/proc/self/mountinfo".into(), source })?;
    parse_cgroup2_mount(&info).ok_or(CgroupError::NoCgroup2Mount)
}

fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // Fields: id parent maj:min root mountpoint opts [optional...] - fstype source superopts
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        (fstype == "cgroup2").then(|| left.split_whitespace().nth(4).map(unescape_mount))?
    })
}

/// Where a cgroup v1 controller's hierarchy is mounted (hybrid hosts), if anywhere.
pub fn v1_mount(controller: &str) -> Option<PathBuf> {
    parse_v1_mount(&std::fs::read_to_string("/proc/self/mountinfo").ok()?, controller)
}

fn parse_v1_mount(mountinfo: &str, controller: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut r = right.split_whitespace();
        let (fstype, _source, opts) = (r.next()?, r.next()?, r.next()?);
        (fstype == "cgroup" && opts.split(',').any(|o| o == controller)).then(|| left.split_whitespace().nth(4).map(unescape_mount))?
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount(s: &str) -> PathBuf {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            match u8::from_str_radix(&code, 8) {
                Ok(b) => out.push(b as char),
                Err(_) => {
                    out.push('\\');
                    out.push_str(&code);
                }
            }
        } else {
            out.push(c);
        }
    }
    PathBuf::from(out)
}

/// Resolves a user-given cgroup: absolute paths are taken as they are, relative ones
/// are taken under the cgroup2 mount. The result must be a cgroup v2 directory.
pub fn resolve(path: &Path) -> Result<PathBuf, CgroupError> {
    let full = if path.is_absolute() { path.to_path_buf() } else { cgroup2_mount()?.join(path) };
    check_v2(&full)?;
    Ok(full)
}

/// Checks that `path` exists and is a directory on a cgroup2 filesystem.
pub(crate) fn check_v2(path: &Path) -> Result<(), CgroupError> {
    let meta = std::fs::metadata(path).map_err(|source| match source.kind() {
        // Nothing there because no cgroup2 is mounted at all (`ip netns exec`): say that.
        std::io::ErrorKind::NotFound if cgroup2_mount().is_err() => CgroupError::NoCgroup2Mount,
        std::io::ErrorKind::NotFound => CgroupError::Missing(path.to_path_buf()),
        _ => CgroupError::Io { path: path.to_path_buf(), source },
    })?;
    if !meta.is_dir() {
        return Err(CgroupError::NotCgroup(path.to_path_buf()));
    }
    match fs_magic(path)? {
        CGROUP2_SUPER_MAGIC => Ok(()),
        CGROUP_SUPER_MAGIC => Err(CgroupError::Version1 {
            path: path.to_path_buf(),
            mount: cgroup2_mount().map(|p| p.display().to_string()).unwrap_or_else(|_| "nowhere".into()),
        }),
        _ => Err(CgroupError::NotCgroup(path.to_path_buf())),
    }
}

fn fs_magic(path: &Path) -> Result<i64, CgroupError> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| CgroupError::NotCgroup(path.to_path_buf()))?;
    // SAFETY: statfs is plain integers; all-zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is NUL-terminated, st is a valid out-pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(CgroupError::Io { path: path.to_path_buf(), source: std::io::Error::last_os_error() });
    }
    Ok(st.f_type as i64)
}

/// A cgroup's id (its directory's inode number, as `bpf_get_current_cgroup_id` gives it)
/// and its depth below the cgroup2 root.
pub(crate) fn id_and_level(path: &Path) -> Result<(u64, u32), CgroupError> {
    use std::os::unix::fs::MetadataExt;
    check_v2(path)?;
    let io = |source| CgroupError::Io { path: path.to_path_buf(), source };
    let ino = std::fs::metadata(path).map_err(io)?.ino();
    let root = cgroup2_mount()?;
    let full = std::fs::canonicalize(path).map_err(io)?;
    let below = full.strip_prefix(&root).map_err(|_| CgroupError::NotCgroup(path.to_path_buf()))?;
    Ok((ino, below.components().count() as u32))
}

/// Process ids currently in the cgroup at `path` (not its children).
pub fn processes(path: &Path) -> Result<Vec<u32>, CgroupError> {
    let procs = path.join("cgroup.procs");
    let text = std::fs::read_to_string(&procs).map_err(|source| CgroupError::Io { path: procs, source })?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// Cgroups walked at most below a recorded one, when finding its processes.
const MAX_CGROUPS: usize = 4096;

/// The processes of the cgroup at `path` and of every cgroup below it (bounded by
/// [`MAX_CGROUPS`]); cgroups that vanish meanwhile are skipped.
pub fn processes_below(path: &Path) -> Vec<u32> {
    let (mut todo, mut pids, mut seen) = (vec![path.to_path_buf()], Vec::new(), 0);
    while let Some(dir) = todo.pop() {
        seen += 1;
        if seen > MAX_CGROUPS {
            break;
        }
        pids.extend(processes(&dir).unwrap_or_default());
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        todo.extend(entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
    }
    pids
}

/// The network namespaces (inode numbers) of `pids`, read from `proc` (`/proc`): the ones a
/// process is in now, so a process that entered another namespace since it joined the cgroup
/// (`nsenter --net`) counts in its new one. Processes gone meanwhile are skipped.
pub fn netns_of(proc: &Path, pids: &[u32]) -> std::collections::BTreeSet<u32> {
    use std::os::unix::fs::MetadataExt;
    pids.iter().filter_map(|pid| std::fs::metadata(proc.join(pid.to_string()).join("ns/net")).ok()).map(|m| m.ino() as u32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hybrid_and_unified_mounts() {
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                      37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(parse_cgroup2_mount(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let unified = "25 20 0:22 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(parse_cgroup2_mount(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        let escaped = "25 20 0:22 / /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(parse_cgroup2_mount(escaped), Some(PathBuf::from("/mnt/my cg")));
        assert_eq!(parse_cgroup2_mount("1 2 0:1 / /x rw - ext4 /dev/sda rw\n"), None);
        assert_eq!(parse_v1_mount(hybrid, "freezer"), Some(PathBuf::from("/sys/fs/cgroup/freezer")));
        assert_eq!(parse_v1_mount(hybrid, "memory"), None);
    }

    #[test]
    fn processes_below_a_cgroup_and_their_namespaces() {
        let d = std::env::temp_dir().join(format!("wgo-cgroup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("a/b")).unwrap();
        std::fs::write(d.join("cgroup.procs"), "").unwrap();
        std::fs::write(d.join("a/cgroup.procs"), "12\n").unwrap();
        std::fs::write(d.join("a/b/cgroup.procs"), "13\n14\n").unwrap();
        let mut pids = processes_below(&d);
        pids.sort();
        assert_eq!(pids, [12, 13, 14]);
        // A fake /proc: 12 and 13 share a namespace, 14 is in another, 99 is gone.
        let proc = d.join("proc");
        for (pid, ns) in [(12, "x"), (13, "x"), (14, "y")] {
            std::fs::create_dir_all(proc.join(format!("{pid}/ns"))).unwrap();
            let target = proc.join(ns);
            std::fs::write(&target, "").unwrap();
            std::os::unix::fs::symlink(&target, proc.join(format!("{pid}/ns/net"))).unwrap();
        }
        assert_eq!(netns_of(&proc, &[12, 13, 14, 99]).len(), 2);
        assert!(netns_of(&proc, &[99]).is_empty(), "an empty cgroup follows no namespace, not ours");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn rejects_missing_and_non_cgroup_paths() {
        assert!(matches!(check_v2(Path::new("/nonexistent/wgo")), Err(CgroupError::Missing(_))));
        assert!(matches!(check_v2(Path::new("/tmp")), Err(CgroupError::NotCgroup(_))));
    }
}
