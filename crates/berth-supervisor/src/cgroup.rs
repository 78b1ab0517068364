//! Memory and CPU limits for replicas, enforced by cgroups the way runc and systemd do it, with OOM-kill
//! detection.
//!
//! [`Cgroups::detect`] runs once per daemon. It creates one group directory for the daemon under the
//! daemon's *own* cgroup (read from `/proc/self/cgroup`), so that it works inside a delegated subtree (a
//! systemd unit with `Delegate=yes`, a container with its own cgroup namespace) and never touches cgroups
//! it was not given. Each instance then gets a child directory of that group: [`Cgroups::create`] writes its
//! limits and opens its `cgroup.procs` files, and the forked child joins by writing `0` to them between fork
//! and exec ([`join_in_child`]), so not a single instruction of the replica runs outside its limits.
//!
//! cgroup v2 (unified hierarchy) is preferred; a v1 `memory` hierarchy (plus `cpu` when writable) is used on
//! hybrid systems; where neither is writable the fallback is `RLIMIT_AS` per process, set in the child by
//! [`apply_rlimit_in_child`]. Instance directories outlive the daemon together with their replicas, so a
//! restarted daemon finds them again with [`Cgroups::open`] and clears the rest with
//! [`Cgroups::cleanup_stale`].

use std::fs::{self, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Resource, Rlimit, Signal};

/// How memory limits are enforced on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforcement {
    CgroupV2,
    CgroupV1,
    /// Per-process address-space limit: coarse (virtual memory, not resident), but better than nothing.
    Rlimit,
    /// Limits are not enforced at all.
    None,
}

impl Enforcement {
    pub fn describe(&self) -> &'static str {
        match self {
            Enforcement::CgroupV2 => "cgroup v2",
            Enforcement::CgroupV1 => "cgroup v1",
            Enforcement::Rlimit => "rlimit (cgroups not writable)",
            Enforcement::None => "none",
        }
    }
}

/// Resource limits of one replica; `None` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    /// CPU time per second of wall time, in thousandths of a core (`500` is half a core).
    pub cpu_millis: Option<u32>,
}

/// The daemon's cgroup group, detected once at startup.
#[derive(Debug)]
pub struct Cgroups {
    mode: Mode,
}

/// The cgroup of one replica instance. Dropping it closes the `cgroup.procs` files but leaves the cgroup and
/// its processes alone: replicas outlive the daemon on purpose.
#[derive(Debug)]
pub struct InstanceCgroup {
    version: Version,
    /// The v2 directory, or the v1 `memory` directory.
    primary: PathBuf,
    /// The v1 `cpu` directory, when that hierarchy is writable.
    cpu_v1: Option<PathBuf>,
    /// `cgroup.procs` of every directory above, open for writing; kept open so that a forked child can join
    /// without touching the filesystem.
    procs: Vec<OwnedFd>,
}

/// A cgroup file operation that failed, carried inside the [`io::Error`] returned by [`Cgroups::create`].
#[derive(Debug, thiserror::Error)]
#[error("failed to {action} {path}: {source}", path = path.display())]
pub struct CgroupFileError {
    action: &'static str,
    path: PathBuf,
    #[source]
    source: io::Error,
}

impl Cgroups {
    /// Finds a writable cgroup hierarchy and creates the group directory `group_name` (one per daemon state
    /// directory, for example `berth-3fa2c1`) under the daemon's own cgroup. Never fails: when no hierarchy is
    /// writable, enforcement falls back to [`Enforcement::Rlimit`].
    pub fn detect(group_name: &str) -> Cgroups {
        let mode = match is_plain_name(group_name) {
            true => detect_mode(group_name),
            false => {
                tracing::warn!(group = group_name, "cgroup group name is not a plain file name");
                Mode::Rlimit
            }
        };
        let cgroups = Cgroups { mode };
        match cgroups.enforcement() {
            Enforcement::CgroupV2 | Enforcement::CgroupV1 => {
                tracing::info!(enforcement = cgroups.enforcement().describe(), "resource limits enforced");
            }
            Enforcement::Rlimit | Enforcement::None => {
                tracing::warn!(
                    enforcement = cgroups.enforcement().describe(),
                    "no writable cgroup hierarchy; memory limits are approximate and cpu limits are not enforced"
                );
            }
        }
        cgroups
    }

    /// Limits are not enforced at all: [`Cgroups::create`] always returns `None`.
    pub fn disabled() -> Cgroups {
        Cgroups { mode: Mode::None }
    }

    pub fn enforcement(&self) -> Enforcement {
        match self.mode {
            Mode::V2 { .. } => Enforcement::CgroupV2,
            Mode::V1 { .. } => Enforcement::CgroupV1,
            Mode::Rlimit => Enforcement::Rlimit,
            Mode::None => Enforcement::None,
        }
    }

    /// Creates the cgroup of one instance and writes its limits; `None` when cgroups are not used. A leftover
    /// directory of the same name is reused after killing whatever still runs in it.
    ///
    /// The memory limit is hard and covers swap where the kernel accounts it. The CPU limit is best effort:
    /// a missing or read-only `cpu` controller is logged and skipped.
    pub fn create(&self, instance_id: &str, limits: &Limits) -> io::Result<Option<InstanceCgroup>> {
        if !is_plain_name(instance_id) {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                format!("instance id `{instance_id}` is not a plain file name"),
            ));
        }
        match &self.mode {
            Mode::V2 { group } => create_v2(&group.join(instance_id), limits).map(Some),
            Mode::V1 { memory, cpu } => {
                create_v1(&memory.join(instance_id), cpu.as_ref().map(|cpu| cpu.join(instance_id)), limits).map(Some)
            }
            Mode::Rlimit | Mode::None => Ok(None),
        }
    }

    /// Opens the existing cgroup of an instance that survived a daemon restart, without touching its limits
    /// or processes. `None` when cgroups are not used or the directory is gone.
    pub fn open(&self, instance_id: &str) -> Option<InstanceCgroup> {
        if !is_plain_name(instance_id) {
            return None;
        }
        let (version, primary, cpu_v1) = match &self.mode {
            Mode::V2 { group } => (Version::V2, group.join(instance_id), None),
            Mode::V1 { memory, cpu } => (
                Version::V1,
                memory.join(instance_id),
                cpu.as_ref().map(|cpu| cpu.join(instance_id)).filter(|dir| dir.is_dir()),
            ),
            Mode::Rlimit | Mode::None => return None,
        };
        if !primary.is_dir() {
            return None;
        }
        InstanceCgroup::open(version, primary, cpu_v1)
            .inspect_err(|error| tracing::warn!(instance = instance_id, error = %error, "cannot adopt cgroup"))
            .ok()
    }

    /// Kills the processes of, and removes, every instance cgroup whose name is not in `keep`.
    pub fn cleanup_stale(&self, keep: &[&str]) {
        let (version, hierarchies) = match &self.mode {
            Mode::V2 { group } => (Version::V2, vec![group.as_path()]),
            Mode::V1 { memory, cpu } => {
                (Version::V1, std::iter::once(memory.as_path()).chain(cpu.as_deref()).collect())
            }
            Mode::Rlimit | Mode::None => return,
        };
        for group in hierarchies {
            let Ok(entries) = fs::read_dir(group) else { continue };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                if keep.contains(&name) || !entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                    continue;
                }
                let dir = entry.path();
                tracing::debug!(cgroup = %dir.display(), "removing stale cgroup");
                kill_dirs(version, &[dir.as_path()]);
                remove_dir_retrying(&dir);
            }
        }
    }
}

impl InstanceCgroup {
    /// The open `cgroup.procs` files, one per hierarchy, for [`join_in_child`]. They stay valid as long as
    /// `self` lives.
    pub fn join_fds(&self) -> Vec<RawFd> {
        self.procs.iter().map(AsRawFd::as_raw_fd).collect()
    }

    /// How many times the kernel OOM killer killed a process of this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let file = match self.version {
            Version::V2 => "memory.events",
            Version::V1 => "memory.oom_control",
        };
        fs::read_to_string(self.primary.join(file)).ok().and_then(|text| parse_oom_kills(&text)).unwrap_or(0)
    }

    /// Current memory use of the cgroup in bytes (page cache included, as the limit counts it).
    pub fn memory_bytes(&self) -> Option<u64> {
        let file = match self.version {
            Version::V2 => "memory.current",
            Version::V1 => "memory.usage_in_bytes",
        };
        fs::read_to_string(self.primary.join(file)).ok()?.trim().parse().ok()
    }

    /// Kills every process in the cgroup and waits (about two seconds at most) until it is empty. Blocks the
    /// calling thread.
    pub fn kill_all(&self) {
        kill_dirs(self.version, &self.dirs());
    }

    /// Kills what is left and removes the cgroup directories, best effort.
    pub fn remove(&self) {
        self.kill_all();
        for dir in self.dirs() {
            remove_dir_retrying(dir);
        }
    }

    pub fn path(&self) -> &Path {
        &self.primary
    }

    fn open(version: Version, primary: PathBuf, cpu_v1: Option<PathBuf>) -> io::Result<InstanceCgroup> {
        let mut procs = vec![open_procs(&primary)?];
        let mut cpu_joined = None;
        if let Some(cpu) = cpu_v1 {
            match open_procs(&cpu) {
                Ok(fd) => {
                    procs.push(fd);
                    cpu_joined = Some(cpu);
                }
                Err(error) => tracing::warn!(error = %error, "cpu limit not enforced"),
            }
        }
        Ok(InstanceCgroup { version, primary, cpu_v1: cpu_joined, procs })
    }

    fn dirs(&self) -> Vec<&Path> {
        std::iter::once(self.primary.as_path()).chain(self.cpu_v1.as_deref()).collect()
    }
}

/// Moves the calling process into every cgroup in `fds` by writing `0` to each `cgroup.procs`.
///
/// Meant for `CommandExt::pre_exec`: it is async-signal-safe (raw `write(2)` only, no allocation).
pub fn join_in_child(fds: &[RawFd]) -> io::Result<()> {
    for &fd in fds {
        loop {
            // SAFETY: writes one byte from a static buffer; an invalid fd only makes write(2) fail.
            let written = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
            if written == 1 {
                break;
            }
            let error = io::Error::last_os_error();
            if error.kind() != ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }
    Ok(())
}

/// Limits the calling process's address space to `memory_bytes` (soft and hard `RLIMIT_AS`). Used when
/// enforcement is [`Enforcement::Rlimit`]; async-signal-safe, meant for `CommandExt::pre_exec`.
///
/// The limit counts virtual memory of one process, not the resident memory of a process tree, so runtimes
/// that reserve large address ranges up front need a generous value.
pub fn apply_rlimit_in_child(memory_bytes: u64) -> io::Result<()> {
    let current = rustix::process::getrlimit(Resource::As);
    let bytes = current.maximum.map_or(memory_bytes, |maximum| maximum.min(memory_bytes));
    rustix::process::setrlimit(Resource::As, Rlimit { current: Some(bytes), maximum: Some(bytes) })?;
    Ok(())
}

#[derive(Debug)]
enum Mode {
    V2 { group: PathBuf },
    V1 { memory: PathBuf, cpu: Option<PathBuf> },
    Rlimit,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// The leaf a v2 daemon moves itself into when its own cgroup must give up its processes to delegate
/// controllers ("no internal processes" rule).
const DAEMON_LEAF: &str = "berth-daemon";
const CPU_PERIOD_US: u64 = 100_000;
/// The kernel rejects CFS quotas below one millisecond.
const CPU_MIN_QUOTA_US: u64 = 1_000;
const KILL_DEADLINE: Duration = Duration::from_secs(2);
const RMDIR_DEADLINE: Duration = Duration::from_secs(1);
const POLL_INTERVAL: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    /// The directory of the hierarchy that is mounted, relative to the hierarchy's root.
    root: String,
    mount_point: PathBuf,
    fs_type: String,
    super_options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Membership {
    /// Empty for the v2 hierarchy; `name=systemd` style entries keep their name.
    controllers: Vec<String>,
    path: String,
}

fn detect_mode(group_name: &str) -> Mode {
    let (Ok(mountinfo), Ok(self_cgroup)) =
        (fs::read_to_string("/proc/self/mountinfo"), fs::read_to_string("/proc/self/cgroup"))
    else {
        return Mode::Rlimit;
    };
    let mounts = parse_mountinfo(&mountinfo);
    let memberships = parse_proc_cgroup(&self_cgroup);
    if let Some(group) = detect_v2(&mounts, &memberships, group_name) {
        return Mode::V2 { group };
    }
    if let Some(memory) = detect_v1(&mounts, &memberships, "memory", group_name)
        && memory.join("memory.limit_in_bytes").is_file()
    {
        let cpu =
            detect_v1(&mounts, &memberships, "cpu", group_name).filter(|cpu| cpu.join("cpu.cfs_quota_us").is_file());
        return Mode::V1 { memory, cpu };
    }
    Mode::Rlimit
}

fn detect_v2(mounts: &[Mount], memberships: &[Membership], group_name: &str) -> Option<PathBuf> {
    let membership = memberships.iter().find(|membership| membership.controllers.is_empty())?;
    let mut own =
        mounts.iter().filter(|mount| mount.fs_type == "cgroup2").find_map(|mount| own_dir(mount, &membership.path))?;
    if own.file_name().is_some_and(|name| name == DAEMON_LEAF) {
        own.pop();
    }
    let controllers = fs::read_to_string(own.join("cgroup.controllers")).ok()?;
    if !controllers.split_whitespace().any(|controller| controller == "memory") {
        return None;
    }
    enable_v2_controllers(&own)?;
    let group = own.join(group_name);
    create_dir(&group).ok()?;
    for controller in ["+memory", "+cpu"] {
        if let Err(error) = fs::write(group.join("cgroup.subtree_control"), controller) {
            tracing::debug!(cgroup = %group.display(), controller, error = %error, "cannot enable controller");
        }
    }
    let enabled = fs::read_to_string(group.join("cgroup.subtree_control")).ok()?;
    enabled.split_whitespace().any(|controller| controller == "memory").then_some(group)
}

/// Enables the memory (and, best effort, cpu) controller for the children of the daemon's own cgroup. A
/// non-root cgroup that holds processes cannot do that, so on `EBUSY` its processes move into a
/// [`DAEMON_LEAF`] child first, as container inits do; they stay inside the same subtree and limits.
fn enable_v2_controllers(own: &Path) -> Option<()> {
    let subtree_control = own.join("cgroup.subtree_control");
    let has_memory = |path: &Path| {
        fs::read_to_string(path).is_ok_and(|text| text.split_whitespace().any(|controller| controller == "memory"))
    };
    if !has_memory(&subtree_control)
        && let Err(error) = fs::write(&subtree_control, "+memory")
    {
        if error.raw_os_error() != Some(libc::EBUSY) {
            tracing::debug!(cgroup = %own.display(), error = %error, "cannot enable the memory controller");
            return None;
        }
        move_processes_to_leaf(own).ok()?;
        fs::write(&subtree_control, "+memory").ok()?;
    }
    if let Err(error) = fs::write(&subtree_control, "+cpu") {
        tracing::debug!(cgroup = %own.display(), error = %error, "cannot enable the cpu controller");
    }
    has_memory(&subtree_control).then_some(())
}

fn move_processes_to_leaf(own: &Path) -> io::Result<()> {
    let leaf = own.join(DAEMON_LEAF);
    create_dir(&leaf)?;
    for pid in read_pids(own) {
        if let Err(error) = fs::write(leaf.join("cgroup.procs"), pid.to_string()) {
            // A process may have exited meanwhile; any other failure shows up when enabling controllers.
            tracing::debug!(pid, error = %error, "cannot move process into the daemon leaf cgroup");
        }
    }
    tracing::info!(cgroup = %leaf.display(), "moved the daemon into a leaf cgroup to delegate controllers");
    Ok(())
}

fn detect_v1(mounts: &[Mount], memberships: &[Membership], controller: &str, group_name: &str) -> Option<PathBuf> {
    let membership =
        memberships.iter().find(|membership| membership.controllers.iter().any(|name| name == controller))?;
    let own = mounts
        .iter()
        .filter(|mount| mount.fs_type == "cgroup" && mount.super_options.iter().any(|option| option == controller))
        .find_map(|mount| own_dir(mount, &membership.path))?;
    let group = own.join(group_name);
    match create_dir(&group) {
        Ok(()) => Some(group),
        Err(error) => {
            tracing::debug!(cgroup = %group.display(), error = %error, "cgroup v1 hierarchy not writable");
            None
        }
    }
}

/// Where the cgroup at `path` (as listed in `/proc/self/cgroup`) appears under `mount`, if it does.
fn own_dir(mount: &Mount, path: &str) -> Option<PathBuf> {
    let root = mount.root.trim_end_matches('/');
    let relative = path.strip_prefix(root)?;
    if !(relative.is_empty() || relative.starts_with('/')) || relative.split('/').any(|part| part == "..") {
        return None;
    }
    let dir = mount.mount_point.join(relative.trim_start_matches('/'));
    dir.is_dir().then_some(dir)
}

fn create_v2(dir: &Path, limits: &Limits) -> io::Result<InstanceCgroup> {
    prepare_dir(Version::V2, dir)?;
    let memory_max = limits.memory_bytes.map_or_else(|| "max".to_owned(), |bytes| bytes.to_string());
    write_file(&dir.join("memory.max"), &memory_max)?;
    let swap_max = dir.join("memory.swap.max");
    if swap_max.exists() {
        let value = if limits.memory_bytes.is_some() { "0" } else { "max" };
        write_file(&swap_max, value)?;
    }
    let cpu_max = match limits.cpu_millis {
        Some(millis) => format!("{} {CPU_PERIOD_US}", cpu_quota_us(millis)),
        None => format!("max {CPU_PERIOD_US}"),
    };
    let cpu_file = dir.join("cpu.max");
    if let Err(error) = write_file(&cpu_file, &cpu_max)
        && limits.cpu_millis.is_some()
    {
        tracing::warn!(error = %error, "cpu limit not enforced");
    }
    InstanceCgroup::open(Version::V2, dir.to_owned(), None)
}

fn create_v1(memory: &Path, cpu: Option<PathBuf>, limits: &Limits) -> io::Result<InstanceCgroup> {
    prepare_dir(Version::V1, memory)?;
    let memory_limit = limits.memory_bytes.map_or_else(|| "-1".to_owned(), |bytes| bytes.to_string());
    // memory+swap may never be below memory alone: lift it first, then lower both.
    let memsw = memory.join("memory.memsw.limit_in_bytes");
    let has_memsw = memsw.exists();
    if has_memsw && let Err(error) = write_file(&memsw, "-1") {
        tracing::debug!(error = %error, "cannot reset memory+swap limit");
    }
    write_file(&memory.join("memory.limit_in_bytes"), &memory_limit)?;
    if has_memsw
        && limits.memory_bytes.is_some()
        && let Err(error) = write_file(&memsw, &memory_limit)
    {
        tracing::warn!(error = %error, "swap not limited; the replica may swap beyond its memory limit");
    }
    let cpu = cpu.filter(|cpu| match prepare_cpu_v1(cpu, limits.cpu_millis) {
        Ok(()) => true,
        Err(error) => {
            if limits.cpu_millis.is_some() {
                tracing::warn!(error = %error, "cpu limit not enforced");
            }
            false
        }
    });
    InstanceCgroup::open(Version::V1, memory.to_owned(), cpu)
}

fn prepare_cpu_v1(dir: &Path, cpu_millis: Option<u32>) -> io::Result<()> {
    prepare_dir(Version::V1, dir)?;
    write_file(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
    let quota = cpu_millis.map_or_else(|| "-1".to_owned(), |millis| cpu_quota_us(millis).to_string());
    write_file(&dir.join("cpu.cfs_quota_us"), &quota)
}

/// Creates `dir`, or empties a leftover of the same name.
fn prepare_dir(version: Version, dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        tracing::debug!(cgroup = %dir.display(), "reusing leftover cgroup");
        kill_dirs(version, &[dir]);
        return Ok(());
    }
    create_dir(dir).map_err(|source| file_error("create", dir, source))
}

fn cpu_quota_us(cpu_millis: u32) -> u64 {
    (u64::from(cpu_millis) * CPU_PERIOD_US / 1000).max(CPU_MIN_QUOTA_US)
}

fn kill_dirs(version: Version, dirs: &[&Path]) {
    if version == Version::V2 {
        for dir in dirs {
            let kill = dir.join("cgroup.kill");
            if kill.exists()
                && let Err(error) = fs::write(&kill, "1")
            {
                tracing::debug!(cgroup = %dir.display(), error = %error, "cgroup.kill failed");
            }
        }
    }
    let own_pid = std::process::id() as i32;
    let deadline = Instant::now() + KILL_DEADLINE;
    loop {
        let pids: Vec<i32> = dirs.iter().flat_map(|dir| read_pids(dir)).filter(|&pid| pid != own_pid).collect();
        if pids.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(cgroup = %dirs[0].display(), remaining = pids.len(), "processes survived SIGKILL");
            return;
        }
        for pid in pids {
            if let Some(pid) = Pid::from_raw(pid) {
                // ESRCH only means it is already gone.
                let _ = rustix::process::kill_process(pid, Signal::KILL);
            }
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// rmdir fails with `EBUSY` until the last killed task has left, so retry for a moment.
fn remove_dir_retrying(dir: &Path) {
    let deadline = Instant::now() + RMDIR_DEADLINE;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(error) if error.kind() == ErrorKind::NotFound => return,
            Err(error) if Instant::now() >= deadline => {
                tracing::warn!(cgroup = %dir.display(), error = %error, "cannot remove cgroup");
                return;
            }
            Err(_) => std::thread::sleep(POLL_INTERVAL),
        }
    }
}

fn read_pids(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|text| text.lines().filter_map(|line| line.trim().parse().ok()).filter(|&pid| pid > 0).collect())
        .unwrap_or_default()
}

fn open_procs(dir: &Path) -> io::Result<OwnedFd> {
    let path = dir.join("cgroup.procs");
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)
        .map(OwnedFd::from)
        .map_err(|source| file_error("open", &path, source))
}

fn write_file(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value).map_err(|source| file_error("write", path, source))
}

fn create_dir(dir: &Path) -> io::Result<()> {
    match fs::create_dir(dir) {
        Err(error) if error.kind() == ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        res => res,
    }
}

fn file_error(action: &'static str, path: &Path, source: io::Error) -> io::Error {
    io::Error::new(source.kind(), CgroupFileError { action, path: path.to_owned(), source })
}

fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0', '\n'])
}

/// Parses `/proc/self/mountinfo`, keeping cgroup mounts only.
fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (head, tail) = line.split_once(" - ")?;
            let head: Vec<&str> = head.split(' ').collect();
            let mut tail = tail.split(' ');
            let fs_type = tail.next()?;
            if fs_type != "cgroup" && fs_type != "cgroup2" {
                return None;
            }
            let super_options = tail.nth(1).unwrap_or("").split(',').map(str::to_owned).collect();
            Some(Mount {
                root: unescape_octal(head.get(3)?),
                mount_point: PathBuf::from(unescape_octal(head.get(4)?)),
                fs_type: fs_type.to_owned(),
                super_options,
            })
        })
        .collect()
}

/// Parses `/proc/self/cgroup`: `hierarchy-id:controllers:path` per line.
fn parse_proc_cgroup(text: &str) -> Vec<Membership> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let controllers = controllers.split(',').filter(|name| !name.is_empty()).map(str::to_owned).collect();
            Some(Membership { controllers, path: path.to_owned() })
        })
        .collect()
}

/// The `oom_kill N` line of v1 `memory.oom_control` and v2 `memory.events`.
fn parse_oom_kills(text: &str) -> Option<u64> {
    text.lines().find_map(|line| line.strip_prefix("oom_kill ")).and_then(|count| count.trim().parse().ok())
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut res = Vec::with_capacity(bytes.len());
    let mut idx = 0;
    while idx < bytes.len() {
        let octal =
            bytes.get(idx + 1..idx + 4).filter(|digits| digits.iter().all(|digit| (b'0'..=b'7').contains(digit)));
        match (bytes[idx], octal) {
            (b'\\', Some(digits)) => {
                res.push(digits.iter().fold(0u8, |acc, digit| acc.wrapping_mul(8).wrapping_add(digit - b'0')));
                idx += 4;
            }
            (byte, _) => {
                res.push(byte);
                idx += 1;
            }
        }
    }
    String::from_utf8_lossy(&res).into_owned()
}

#[cfg(test)]
mod tests;
