//! The Debian package (`cargo deb`, `[package.metadata.deb]` in Cargo.toml): built from the
//! release binary this test run built, its files, modes, conffile, dependencies and
//! maintainer scripts read back with `dpkg-deb`, then installed, removed and purged with real
//! dpkg into a scratch root (`dpkg --root` with chrootless maintainer scripts, which honour
//! `DPKG_ROOT`). The installed binary runs and accepts the installed config, the installed unit
//! verifies and rates below 2.0, and the real system's users, `/etc` and units are never
//! touched: the commands that act on a running systemd are stand-ins that only log.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::{on_path, repo_root, require, run_command};

/// The files the package must install, with their `dpkg-deb --contents` modes.
const FILES: &[(&str, &str)] = &[
    ("./usr/bin/tallyd", "-rwxr-xr-x"),
    ("./etc/tallyd/tallyd.toml", "-rw-r--r--"),
    ("./usr/lib/systemd/system/tallyd.service", "-rw-r--r--"),
    (
        "./usr/lib/systemd/system/tallyd.service.d/package.conf",
        "-rw-r--r--",
    ),
    ("./usr/lib/sysusers.d/tallyd.conf", "-rw-r--r--"),
    ("./usr/lib/tmpfiles.d/tallyd.conf", "-rw-r--r--"),
    (
        "./usr/share/doc/tallyd/examples/tallyd.socket",
        "-rw-r--r--",
    ),
];

fn have_tools() -> bool {
    require(on_path("cargo-deb"), "cargo-deb (cargo install cargo-deb)")
        && require(
            on_path("dpkg") && on_path("dpkg-deb"),
            "dpkg and dpkg-deb (Debian)",
        )
        && require(
            on_path("systemd-sysusers"),
            "systemd-sysusers (Debian package systemd)",
        )
}

/// The package, built once per test run from the release binary cargo test built
/// (`cargo deb --no-build`) into this test target's temp directory.
fn package() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("package");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let binary = Path::new(common::tallyd_bin());
        assert_eq!(
            binary,
            repo_root().join("target/release/tallyd"),
            "cargo deb --no-build packages target/release/tallyd: run the tests with --release"
        );
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let (ok, report) = run_command(
            Command::new(cargo)
                .current_dir(repo_root())
                .args(["deb", "--no-build", "--output"])
                .arg(&dir),
        );
        assert!(ok, "cargo deb:\n{report}");
        std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .unwrap_or_else(|| panic!("no .deb in {}:\n{report}", dir.display()))
    })
}

fn dpkg_deb(args: &[&str]) -> String {
    let (ok, report) = run_command(Command::new("dpkg-deb").args(args).arg(package()));
    assert!(ok, "dpkg-deb {args:?}:\n{report}");
    report
}

/// The package's control files (control, conffiles, postinst, ...), by name.
fn control_files() -> BTreeMap<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let (ok, report) = run_command(
        Command::new("dpkg-deb")
            .arg("--control")
            .arg(package())
            .arg(dir.path()),
    );
    assert!(ok, "{report}");
    std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&path).unwrap())
        })
        .collect()
}

#[test]
fn the_package_holds_the_binary_the_config_and_the_units_with_their_modes() {
    if !have_tools() {
        return;
    }
    let contents = dpkg_deb(&["--contents"]);
    // "-rwxr-xr-x 0/0   10630656 2026-12-06 00:00 ./usr/bin/tallyd"
    let listed: BTreeMap<&str, (&str, &str)> = contents
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            Some((*fields.last()?, (fields[0], fields[1])))
        })
        .collect();
    for (path, mode) in FILES {
        let (found, owner) = listed
            .get(path)
            .unwrap_or_else(|| panic!("{path} not in the package:\n{contents}"));
        assert_eq!((*found, *owner), (*mode, "0/0"), "{path}");
    }
    assert!(
        !contents.contains("tallyd-load"),
        "the load tool is not for hosts:\n{contents}"
    );
    assert!(
        !contents.contains("./usr/lib/systemd/system/tallyd.socket"),
        "the socket unit is only an example (enabled, it would need another config):\n{contents}"
    );
}

#[test]
fn the_control_file_declares_the_conffile_and_the_dependencies() {
    if !have_tools() {
        return;
    }
    let control = control_files();
    assert_eq!(
        control["conffiles"].lines().collect::<Vec<_>>(),
        ["/etc/tallyd/tallyd.toml"]
    );
    let fields = &control["control"];
    assert!(fields.contains("Package: tallyd\n"), "{fields}");
    let depends = fields
        .lines()
        .find_map(|l| l.strip_prefix("Depends: "))
        .unwrap_or_else(|| panic!("no Depends:\n{fields}"));
    // `$auto`: the shared libraries the binary links, found by dpkg-shlibdeps.
    assert!(depends.contains("libc6 (>= "), "{depends}");
    assert!(
        depends.contains("systemd | systemd-standalone-sysusers"),
        "{depends}"
    );
    assert!(fields.contains("Description: StatsD/DogStatsD"), "{fields}");
}

#[test]
fn the_maintainer_scripts_add_the_user_enable_the_unit_and_never_start_it() {
    if !have_tools() {
        return;
    }
    let control = control_files();
    for name in ["postinst", "prerm", "postrm"] {
        let script = &control[name];
        let (ok, report) = run_command(Command::new("sh").args(["-n", "-c", script]));
        assert!(ok, "{name}: {report}");
        assert!(
            !script.contains("#DEBHELPER#"),
            "{name} still has the marker"
        );
    }
    let postinst = &control["postinst"];
    assert!(
        postinst.contains("systemd-sysusers ${DPKG_ROOT:+--root=\"$DPKG_ROOT\"} tallyd.conf"),
        "{postinst}"
    );
    assert!(
        postinst.contains("deb-systemd-helper enable tallyd.service"),
        "{postinst}"
    );
    assert!(
        !postinst.contains(" start "),
        "starts something:\n{postinst}"
    );
    assert!(!postinst.contains("tallyd.socket"), "{postinst}");
    assert!(
        control["postrm"].contains("rm -rf \"${DPKG_ROOT:-}/var/lib/tallyd\""),
        "{}",
        control["postrm"]
    );
}

/// A scratch root for dpkg, with stand-ins for the commands that would act on the running
/// systemd (the maintainer scripts call them when /run/systemd/system exists): they log
/// their arguments and do nothing.
struct ScratchRoot {
    root: tempfile::TempDir,
    shims: tempfile::TempDir,
}

impl ScratchRoot {
    fn new() -> ScratchRoot {
        let root = tempfile::tempdir().unwrap();
        for dir in [
            "var/lib/dpkg/info",
            "var/lib/dpkg/updates",
            "var/log",
            "etc",
        ] {
            std::fs::create_dir_all(root.path().join(dir)).unwrap();
        }
        std::fs::write(root.path().join("var/lib/dpkg/status"), "").unwrap();
        let shims = tempfile::tempdir().unwrap();
        for name in ["systemctl", "deb-systemd-invoke", "systemd-tmpfiles"] {
            let shim = shims.path().join(name);
            std::fs::write(
                &shim,
                format!(
                    "#!/bin/sh\necho \"{name} $*\" >> '{}'\n",
                    shims.path().join("calls").display()
                ),
            )
            .unwrap();
            std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        ScratchRoot { root, shims }
    }

    fn path(&self, inside: &str) -> PathBuf {
        self.root.path().join(inside.trim_start_matches('/'))
    }

    /// `dpkg --root` with maintainer scripts run outside a chroot, `DPKG_ROOT` set.
    fn dpkg(&self, args: &[&str]) -> String {
        let path = format!(
            "{}:{}",
            self.shims.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let (ok, report) = run_command(
            Command::new("dpkg")
                .arg(format!("--root={}", self.root.path().display()))
                .arg(format!("--log={}", self.path("var/log/dpkg.log").display()))
                .args([
                    "--force-not-root",
                    "--force-script-chrootless",
                    "--force-depends",
                ])
                .args(args)
                .env("PATH", path),
        );
        assert!(ok, "dpkg {args:?}:\n{report}");
        report
    }

    /// What the stand-ins were asked to do.
    fn shim_calls(&self) -> String {
        std::fs::read_to_string(self.shims.path().join("calls")).unwrap_or_default()
    }

    fn exists(&self, inside: &str) -> bool {
        self.path(inside).symlink_metadata().is_ok()
    }

    /// The `tallyd` line of the scratch root's passwd or group file.
    fn entry(&self, file: &str) -> Option<Vec<String>> {
        let text = std::fs::read_to_string(self.path(file)).unwrap_or_default();
        text.lines()
            .find(|l| l.starts_with("tallyd:"))
            .map(|l| l.split(':').map(str::to_owned).collect())
    }
}

fn host_state() -> Vec<Option<Vec<u8>>> {
    [
        "/etc/passwd",
        "/etc/group",
        "/etc/systemd/system/multi-user.target.wants/tallyd.service",
    ]
    .iter()
    .map(|p| std::fs::read(p).ok())
    .collect()
}

#[test]
fn the_package_installs_runs_removes_and_purges_in_a_scratch_root() {
    if !have_tools() {
        return;
    }
    let host_before = host_state();
    let root = ScratchRoot::new();
    let deb = package().to_str().unwrap().to_owned();
    root.dpkg(&["--install", &deb]);

    // The files, where the unit and the config say they are.
    for (path, _) in FILES {
        assert!(root.exists(path), "{path} not installed");
    }
    // The system user and group, with no login and the state directory as home.
    let user = root.entry("etc/passwd").expect("a tallyd user");
    let uid: u32 = user[2].parse().unwrap();
    assert!(uid > 0 && uid < 1000, "not a system uid: {user:?}");
    assert_eq!(user[5], "/var/lib/tallyd");
    assert!(user[6].ends_with("nologin"), "{user:?}");
    let group = root.entry("etc/group").expect("a tallyd group");
    assert_eq!(group[2], user[3], "the user's primary group is tallyd");
    // Enabled: the symlink systemctl enable would make, pointing at the package's unit.
    let wants = root.path("etc/systemd/system/multi-user.target.wants/tallyd.service");
    assert_eq!(
        std::fs::read_link(&wants).expect("tallyd.service enabled"),
        Path::new("/usr/lib/systemd/system/tallyd.service")
    );
    // Not started: nothing asked a running systemd to start anything.
    assert!(
        !root.shim_calls().contains("start"),
        "{}",
        root.shim_calls()
    );

    // The installed binary runs, and the installed config passes its check.
    let binary = root.path("usr/bin/tallyd");
    let (ok, version) = run_command(Command::new(&binary).arg("--version"));
    assert!(ok, "{version}");
    assert_eq!(
        version.trim(),
        format!("tallyd {}", env!("CARGO_PKG_VERSION"))
    );
    let (ok, report) = run_command(
        Command::new(&binary)
            .arg("--config")
            .arg(root.path("etc/tallyd/tallyd.toml"))
            .arg("--check-config"),
    );
    assert!(ok, "{report}");

    // The tmpfiles entry (applied by postinst on a running systemd, and at boot) makes the
    // state directory private to the scratch root's tallyd user.
    let (ok, report) = run_command(
        Command::new("systemd-tmpfiles")
            .arg(format!("--root={}", root.root.path().display()))
            .arg("--create")
            .arg(root.path("usr/lib/tmpfiles.d/tallyd.conf")),
    );
    assert!(ok, "{report}");
    let state = std::fs::metadata(root.path("var/lib/tallyd")).unwrap();
    assert_eq!((state.uid(), state.mode() & 0o7777), (uid, 0o700));
    std::fs::write(root.path("var/lib/tallyd/tallyd.db"), b"state").unwrap();

    // Remove: the program goes and the unit is masked (so a dangling enablement cannot start
    // it); the config and the state stay.
    root.dpkg(&["--remove", "tallyd"]);
    assert!(!root.exists("usr/bin/tallyd"));
    assert_eq!(
        std::fs::read_link(root.path("etc/systemd/system/tallyd.service")).ok(),
        Some(PathBuf::from("/dev/null")),
        "tallyd.service masked"
    );
    assert!(root.exists("etc/tallyd/tallyd.toml"));
    assert!(root.exists("var/lib/tallyd/tallyd.db"));
    // Purge: the config and the state go too; the system user stays (Debian policy).
    root.dpkg(&["--purge", "tallyd"]);
    for gone in [
        "etc/tallyd",
        "var/lib/tallyd",
        "usr/lib/systemd/system/tallyd.service",
        "etc/systemd/system/tallyd.service",
        "etc/systemd/system/multi-user.target.wants/tallyd.service",
    ] {
        assert!(!root.exists(gone), "{gone} left after purge");
    }
    let status = std::fs::read_to_string(root.path("var/lib/dpkg/status")).unwrap();
    assert!(!status.contains("Package: tallyd"), "{status}");
    assert!(root.entry("etc/passwd").is_some());

    assert!(
        host_before == host_state(),
        "the host's users or units changed"
    );
}

/// systemd-analyze on the unit as the package installs it (the unit and its drop-in), in a
/// root that also holds the targets it orders against and the programs it runs.
#[test]
fn the_installed_unit_verifies_and_rates_below_2() {
    if !have_tools()
        || !require(
            on_path("systemd-analyze"),
            "systemd-analyze (Debian package systemd)",
        )
    {
        return;
    }
    let root = ScratchRoot::new();
    let deb = package().to_str().unwrap().to_owned();
    root.dpkg(&["--install", &deb]);
    let units = root.path("usr/lib/systemd/system");
    for target in [
        "sysinit",
        "basic",
        "shutdown",
        "network-online",
        "multi-user",
    ] {
        let name = format!("{target}.target");
        std::fs::copy(
            Path::new("/usr/lib/systemd/system").join(&name),
            units.join(&name),
        )
        .unwrap_or_else(|e| panic!("{name} from the host: {e}"));
    }
    // ExecReload runs /bin/kill.
    std::fs::create_dir_all(root.path("bin")).unwrap();
    std::fs::copy("/bin/kill", root.path("bin/kill")).unwrap();

    let root_arg = format!("--root={}", root.root.path().display());
    let (ok, report) = run_command(Command::new("systemd-analyze").args([
        "verify",
        &root_arg,
        units.join("tallyd.service").to_str().unwrap(),
    ]));
    let ours: Vec<&str> = report.lines().filter(|l| l.contains("tallyd")).collect();
    assert!(ok && ours.is_empty(), "systemd-analyze verify:\n{report}");

    let (_, report) = run_command(Command::new("systemd-analyze").args([
        "security",
        "--offline=yes",
        &root_arg,
        "tallyd.service",
    ]));
    // The drop-in applies: the package's static user, not a dynamic one.
    assert!(
        report.contains("Service runs under a static non-root user identity"),
        "{report}"
    );
    let level: f64 = report
        .lines()
        .find_map(|l| l.split("Overall exposure level for tallyd.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    assert!(level < 2.0, "exposure {level}:\n{report}");
}
