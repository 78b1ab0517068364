use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};

use super::*;

const MIB: u64 = 1 << 20;

/// A daemon group unique to one test, removed (with everything in it) when the test ends, even on failure.
struct TestGroup {
    cgroups: Cgroups,
}

impl TestGroup {
    /// `None`, after saying why, where this machine gives us no writable cgroup hierarchy.
    fn new(tag: &str) -> Option<TestGroup> {
        let cgroups = Cgroups::detect(&format!("berth-test-{}-{tag}", std::process::id()));
        match cgroups.enforcement() {
            Enforcement::CgroupV2 | Enforcement::CgroupV1 => Some(TestGroup { cgroups }),
            other => {
                eprintln!("skipping: no writable cgroup hierarchy (enforcement: {})", other.describe());
                None
            }
        }
    }

    fn create(&self, instance_id: &str, limits: Limits) -> InstanceCgroup {
        self.cgroups
            .create(instance_id, &limits)
            .expect("the group is writable, so its children are")
            .expect("cgroups are enforced")
    }
}

impl Drop for TestGroup {
    fn drop(&mut self) {
        self.cgroups.cleanup_stale(&[]);
        match &self.cgroups.mode {
            Mode::V2 { group } => remove_dir_retrying(group),
            Mode::V1 { memory, cpu } => {
                remove_dir_retrying(memory);
                if let Some(cpu) = cpu {
                    remove_dir_retrying(cpu);
                }
            }
            Mode::Rlimit | Mode::None => {}
        }
    }
}

fn spawn_joined(instance: &InstanceCgroup, program: &str, args: &[&str]) -> Child {
    let fds = instance.join_fds();
    let mut command = Command::new(program);
    command.args(args).stdin(Stdio::null());
    // SAFETY: join_in_child is async-signal-safe.
    unsafe { command.pre_exec(move || join_in_child(&fds)) };
    command.spawn().expect("coreutils are installed")
}

/// `tail` keeps a whole line in memory, and 200 MiB of zeros is one line.
fn spawn_memory_hog(pre_exec: impl FnMut() -> io::Result<()> + Send + Sync + 'static) -> (Child, Child) {
    let mut feeder = Command::new("head")
        .args(["-c", "200M", "/dev/zero"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("head is installed");
    let feed = feeder.stdout.take().expect("stdout was piped");
    let mut command = Command::new("tail");
    command.stdin(Stdio::from(feed)).stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: the callers pass async-signal-safe closures.
    unsafe { command.pre_exec(pre_exec) };
    (feeder, command.spawn().expect("tail is installed"))
}

#[test]
fn a_replica_over_its_memory_limit_is_oom_killed() {
    let Some(group) = TestGroup::new("oom") else { return };
    let instance = group.create("hog", Limits { memory_bytes: Some(32 * MIB), cpu_millis: Some(500) });
    assert_eq!(instance.oom_kills(), 0);
    let cpu_quota = match &instance.cpu_v1 {
        Some(cpu) => fs::read_to_string(cpu.join("cpu.cfs_quota_us")).ok(),
        None => fs::read_to_string(instance.path().join("cpu.max")).ok(),
    };
    if let Some(cpu_quota) = cpu_quota {
        assert!(cpu_quota.starts_with("50000"), "cpu quota is {cpu_quota}");
    }
    let fds = instance.join_fds();
    let (mut feeder, mut hog) = spawn_memory_hog(move || join_in_child(&fds));

    let status = hog.wait().expect("tail can be reaped");
    let _ = feeder.kill();
    let _ = feeder.wait();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "tail ended with {status}");
    assert!(instance.oom_kills() >= 1, "oom_kill counter is {}", instance.oom_kills());

    instance.remove();
    assert!(!instance.path().exists());
}

#[test]
fn kill_all_empties_the_cgroup_and_remove_deletes_it() {
    let Some(group) = TestGroup::new("kill") else { return };
    let instance = group.create("sleeper", Limits::default());
    let mut child = spawn_joined(&instance, "sleep", &["1000"]);
    assert_eq!(read_pids(instance.path()), vec![child.id() as i32]);
    assert!(instance.memory_bytes().is_some_and(|bytes| bytes > 0));

    instance.kill_all();
    assert_eq!(read_pids(instance.path()), Vec::<i32>::new());
    let status = child.wait().expect("sleep can be reaped");
    assert_eq!(status.signal(), Some(libc::SIGKILL));

    instance.remove();
    assert!(!instance.path().exists());
}

#[test]
fn a_leftover_cgroup_is_emptied_and_reused_with_new_limits() {
    let Some(group) = TestGroup::new("reuse") else { return };
    let first = group.create("inst", Limits { memory_bytes: Some(32 * MIB), cpu_millis: None });
    let mut leftover = spawn_joined(&first, "sleep", &["1000"]);

    let second = group.create("inst", Limits { memory_bytes: Some(64 * MIB), cpu_millis: None });
    assert_eq!(second.path(), first.path());
    let status = leftover.wait().expect("sleep can be reaped");
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    let limit_file = match group.cgroups.enforcement() {
        Enforcement::CgroupV2 => "memory.max",
        _ => "memory.limit_in_bytes",
    };
    let limit = fs::read_to_string(second.path().join(limit_file)).expect("limit is readable");
    assert_eq!(limit.trim(), (64 * MIB).to_string());
}

#[test]
fn cleanup_stale_keeps_only_the_listed_instances() {
    let Some(group) = TestGroup::new("stale") else { return };
    let keep = group.create("keep", Limits::default());
    let stale = group.create("stale", Limits::default());
    let mut child = spawn_joined(&stale, "sleep", &["1000"]);

    group.cgroups.cleanup_stale(&["keep"]);
    assert_eq!(child.wait().expect("sleep can be reaped").signal(), Some(libc::SIGKILL));
    assert!(!stale.path().exists());
    assert!(keep.path().is_dir());
    assert!(group.cgroups.open("keep").is_some_and(|adopted| adopted.path() == keep.path()));
    assert!(group.cgroups.open("stale").is_none());
    assert!(group.cgroups.create("../escape", &Limits::default()).is_err());
}

#[test]
fn rlimit_stops_a_process_from_growing() {
    let (mut feeder, mut hog) = spawn_memory_hog(|| apply_rlimit_in_child(64 * MIB));
    let status = hog.wait().expect("tail can be reaped");
    let _ = feeder.kill();
    let _ = feeder.wait();
    assert!(!status.success(), "tail read 200 MiB into 64 MiB of address space");
}

#[test]
fn rlimit_and_disabled_create_no_cgroup() {
    let disabled = Cgroups::disabled();
    assert_eq!(disabled.enforcement(), Enforcement::None);
    assert!(disabled.create("x", &Limits::default()).expect("nothing to fail").is_none());
    let rlimit = Cgroups { mode: Mode::Rlimit };
    assert!(rlimit.create("x", &Limits::default()).expect("nothing to fail").is_none());
    assert_eq!(rlimit.enforcement().describe(), "rlimit (cgroups not writable)");
}

#[test]
fn parses_hybrid_mountinfo() {
    let text = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 /docker/abc /sys/fs/cgroup/mem\\040ory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate";
    let mounts = parse_mountinfo(text);
    let summary: Vec<(&str, &Path, &str, Vec<&str>)> = mounts
        .iter()
        .map(|mount| {
            let options = mount.super_options.iter().map(String::as_str).collect();
            (mount.root.as_str(), mount.mount_point.as_path(), mount.fs_type.as_str(), options)
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("/", Path::new("/sys/fs/cgroup/cpu,cpuacct"), "cgroup", vec!["rw", "cpu", "cpuacct"]),
            ("/docker/abc", Path::new("/sys/fs/cgroup/mem ory"), "cgroup", vec!["rw", "memory"]),
            ("/", Path::new("/sys/fs/cgroup/unified"), "cgroup2", vec!["rw", "nsdelegate"]),
        ]
    );
}

#[test]
fn parses_proc_self_cgroup() {
    let memberships = parse_proc_cgroup("4:memory:/process_api/b7\n1:cpu,cpuacct:/\n0::/user.slice/a:b\n");
    assert_eq!(
        memberships,
        vec![
            Membership { controllers: vec!["memory".to_owned()], path: "/process_api/b7".to_owned() },
            Membership { controllers: vec!["cpu".to_owned(), "cpuacct".to_owned()], path: "/".to_owned() },
            Membership { controllers: vec![], path: "/user.slice/a:b".to_owned() },
        ]
    );
}

#[test]
fn own_dir_strips_the_mount_root() {
    let temp = tempfile::tempdir().expect("temp dir");
    fs::create_dir_all(temp.path().join("sub/own")).expect("temp dir is writable");
    let mount = |root: &str| Mount {
        root: root.to_owned(),
        mount_point: temp.path().to_owned(),
        fs_type: "cgroup2".to_owned(),
        super_options: vec![],
    };
    assert_eq!(own_dir(&mount("/"), "/sub/own"), Some(temp.path().join("sub/own")));
    assert_eq!(own_dir(&mount("/docker/abc"), "/docker/abc/sub"), Some(temp.path().join("sub")));
    assert_eq!(own_dir(&mount("/docker/abc"), "/docker/abc"), Some(temp.path().to_owned()));
    assert_eq!(own_dir(&mount("/docker/abc"), "/docker/abcd"), None);
    assert_eq!(own_dir(&mount("/docker"), "/other"), None);
    assert_eq!(own_dir(&mount("/"), "/missing"), None);
    assert_eq!(own_dir(&mount("/"), "/../etc"), None);
}

#[test]
fn parses_oom_kill_counters_and_cpu_quota() {
    assert_eq!(parse_oom_kills("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"), Some(3));
    assert_eq!(parse_oom_kills("low 0\nhigh 0\nmax 7\noom 2\noom_kill 2\noom_group_kill 0\n"), Some(2));
    assert_eq!(parse_oom_kills("oom_kill_disable 0\n"), None);
    assert_eq!(cpu_quota_us(500), 50_000);
    assert_eq!(cpu_quota_us(2000), 200_000);
    assert_eq!(cpu_quota_us(1), CPU_MIN_QUOTA_US);
}
