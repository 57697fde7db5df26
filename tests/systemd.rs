//! The shipped unit files, checked by systemd's own tools: `systemd-analyze verify` finds nothing
//! wrong with the service, nor with the socket unit beside it, and `systemd-analyze security`
//! rates the service's hardening below 2.0 ("OK").

mod common;

use std::process::Command;

use common::{TempFile, on_path, repo_root, require, tallyd_bin};

const UNIT: &str = "systemd/tallyd.service";
const SOCKET_UNIT: &str = "systemd/tallyd.socket";

fn systemd_analyze(args: &[&str]) -> (bool, String) {
    let output = Command::new("systemd-analyze")
        .args(args)
        .output()
        .expect("run systemd-analyze");
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// The service as shipped, but starting the binary this test suite built (verify checks that
/// `ExecStart` is executable).
fn service_with_built_binary() -> String {
    let unit = std::fs::read_to_string(repo_root().join(UNIT)).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/tallyd "), "{unit}");
    unit.replace(
        "ExecStart=/usr/local/bin/tallyd ",
        &format!("ExecStart={} ", tallyd_bin()),
    )
}

fn unit_with_built_binary() -> TempFile {
    TempFile::new("tallyd.service", &service_with_built_binary())
}

/// A directory holding units under their own names (a socket unit finds its service by name).
struct UnitDir(std::path::PathBuf);

impl UnitDir {
    fn new(units: &[(&str, &str)]) -> UnitDir {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("units-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in units {
            std::fs::write(dir.join(name), text).unwrap();
        }
        UnitDir(dir)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for UnitDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    if !require(
        on_path("systemd-analyze"),
        "systemd-analyze (Debian package systemd)",
    ) {
        return;
    }
    let unit = unit_with_built_binary();
    let (ok, report) = systemd_analyze(&["verify", unit.path().to_str().unwrap()]);
    // Lines about the unit itself; systemd may also grumble about the host's other units.
    let ours: Vec<&str> = report
        .lines()
        .filter(|line| line.contains("tallyd.service"))
        .collect();
    assert!(ok && ours.is_empty(), "systemd-analyze verify:\n{report}");
}

#[test]
fn systemd_analyze_verify_accepts_the_socket_unit_beside_the_service() {
    if !require(
        on_path("systemd-analyze"),
        "systemd-analyze (Debian package systemd)",
    ) {
        return;
    }
    let socket = std::fs::read_to_string(repo_root().join(SOCKET_UNIT)).unwrap();
    let dir = UnitDir::new(&[
        ("tallyd.service", &service_with_built_binary()),
        ("tallyd.socket", &socket),
    ]);
    let (ok, report) = systemd_analyze(&[
        "verify",
        &dir.path("tallyd.socket"),
        &dir.path("tallyd.service"),
    ]);
    let ours: Vec<&str> = report
        .lines()
        .filter(|line| line.contains("tallyd."))
        .collect();
    assert!(ok && ours.is_empty(), "systemd-analyze verify:\n{report}");
}

#[test]
fn systemd_analyze_security_rates_the_unit_below_2() {
    if !require(
        on_path("systemd-analyze"),
        "systemd-analyze (Debian package systemd)",
    ) {
        return;
    }
    let path = repo_root().join(UNIT);
    let (_, report) = systemd_analyze(&["security", "--offline=yes", path.to_str().unwrap()]);
    let level: f64 = report
        .lines()
        .find_map(|line| {
            let rest = line
                .split("Overall exposure level for tallyd.service:")
                .nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no overall exposure level in:\n{report}"));
    assert!(level < 2.0, "exposure {level}, want < 2.0:\n{report}");
}
