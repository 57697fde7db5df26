//! The Kubernetes manifests in deploy/kubernetes/: every built-in resource passes the
//! Kubernetes API schema (`kubernetes-validate --strict`, schemas bundled, offline), the
//! ServiceMonitor passes the prometheus-operator CRD's schema (tests/tools/check_servicemonitor.py),
//! the ConfigMap's configuration passes tallyd's own `--check-config`, and the probes ask
//! routes tallyd answers. Each checker is also shown a broken copy, which it must refuse.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{InProcess, TempFile, repo_root, require, run_command, run_tallyd};
use serde_norway::Value;

const MANIFESTS: &str = "deploy/kubernetes";

fn venv_python() -> PathBuf {
    repo_root().join("target/venvs/kubernetes_validate/bin/python")
}

fn have_validators() -> bool {
    require(
        venv_python().is_file(),
        "kubernetes-validate in target/venvs/kubernetes_validate",
    )
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join(MANIFESTS))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    files
}

fn manifest(name: &str) -> String {
    std::fs::read_to_string(repo_root().join(MANIFESTS).join(name)).unwrap()
}

fn yaml(text: &str) -> Value {
    serde_norway::from_str(text).unwrap_or_else(|e| panic!("not YAML ({e}):\n{text}"))
}

/// Runs the venv's python on `args`: success and stdout + stderr.
fn python(args: &[&str]) -> (bool, String) {
    run_command(Command::new(venv_python()).args(args))
}

fn kubernetes_validate(files: &[&Path]) -> (bool, String) {
    let mut args = vec!["-m", "kubernetes_validate", "--strict"];
    args.extend(files.iter().map(|f| f.to_str().unwrap()));
    python(&args)
}

fn check_servicemonitor(file: &Path) -> (bool, String) {
    let script = repo_root().join("tests/tools/check_servicemonitor.py");
    python(&[script.to_str().unwrap(), file.to_str().unwrap()])
}

#[test]
fn every_builtin_resource_passes_the_kubernetes_schema_strictly() {
    if !have_validators() {
        return;
    }
    let files = manifests();
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let (ok, report) = kubernetes_validate(&paths);
    assert!(ok, "kubernetes-validate:\n{report}");
    // Every resource but the CRD's must have been checked against a schema: a WARN means the
    // tool had none, and only the ServiceMonitor (checked below) may be in that case.
    for line in report.lines() {
        let checked = line.starts_with("INFO ") && line.contains(" passed for resource ");
        let unknown_crd = line.starts_with("WARN ") && line.contains("kind ServiceMonitor ");
        assert!(checked || unknown_crd, "unexpected line: {line}\n{report}");
    }
    for kind in ["configmap/tallyd", "daemonset/tallyd", "service/tallyd"] {
        assert!(
            report.contains(&format!("passed for resource {kind} ")),
            "{kind} not validated:\n{report}"
        );
    }
}

#[test]
fn kubernetes_validate_refuses_a_daemonset_with_an_unknown_field() {
    if !have_validators() {
        return;
    }
    let broken = manifest("daemonset.yaml").replace("readinessProbe:", "readynessProbe:");
    let file = TempFile::new("daemonset-broken.yaml", &broken);
    let (ok, report) = kubernetes_validate(&[file.path()]);
    assert!(!ok && report.contains("readynessProbe"), "{report}");
}

#[test]
fn the_servicemonitor_passes_the_prometheus_operator_schema() {
    if !have_validators() {
        return;
    }
    let file = repo_root().join(MANIFESTS).join("servicemonitor.yaml");
    let (ok, report) = check_servicemonitor(&file);
    assert!(ok && report.contains("OK "), "{report}");
}

#[test]
fn the_servicemonitor_check_refuses_a_bad_duration_and_an_unknown_key() {
    if !have_validators() {
        return;
    }
    let text = manifest("servicemonitor.yaml");
    for (from, to, reason) in [
        ("interval: 15s", "interval: 15 seconds", "pattern"),
        ("scrapeTimeout:", "scrapeTimout:", "unknown keys"),
    ] {
        assert!(text.contains(from), "{from} not in the manifest");
        let file = TempFile::new("servicemonitor-broken.yaml", &text.replace(from, to));
        let (ok, report) = check_servicemonitor(file.path());
        assert!(!ok && report.contains(reason), "{to}: {report}");
    }
}

/// The ConfigMap's `tallyd.toml`.
fn configmap_config() -> String {
    let configmap = yaml(&manifest("configmap.yaml"));
    configmap["data"]["tallyd.toml"]
        .as_str()
        .expect("data.tallyd.toml in the ConfigMap")
        .to_owned()
}

#[test]
fn the_configmap_config_passes_tallyds_config_check() {
    let config = TempFile::new("configmap-tallyd.toml", &configmap_config());
    let output = run_tallyd(&[
        "--config",
        config.path().to_str().unwrap(),
        "--check-config",
    ]);
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The entry called `name` of a YAML list of named things (volumes, volume mounts).
fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_sequence()
        .unwrap()
        .iter()
        .find(|item| item["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {list:?}"))
}

#[test]
fn the_daemonset_mounts_the_configmap_where_its_args_read_the_config() {
    let daemonset = yaml(&manifest("daemonset.yaml"));
    let pod = &daemonset["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let config = args[args.iter().position(|a| *a == "--config").unwrap() + 1];
    let dir = named(&container["volumeMounts"], "config")["mountPath"]
        .as_str()
        .unwrap();
    assert_eq!(config, format!("{dir}/tallyd.toml"));
    assert_eq!(
        named(&pod["volumes"], "config")["configMap"]["name"],
        "tallyd"
    );
    // And the Unix socket the config listens on lies in the node's directory the pod mounts.
    let socket_dir = named(&container["volumeMounts"], "socket")["mountPath"]
        .as_str()
        .unwrap();
    assert!(named(&pod["volumes"], "socket")["hostPath"]["path"].is_string());
    assert!(
        configmap_config().contains(&format!("\"{socket_dir}/dogstatsd.sock\"")),
        "the ConfigMap's [unix] listen is not under {socket_dir}"
    );
}

#[test]
fn the_probes_ask_routes_tallyd_answers() {
    let daemonset = yaml(&manifest("daemonset.yaml"));
    let container = &daemonset["spec"]["template"]["spec"]["containers"][0];
    let tallyd = InProcess::start();
    for (probe, expected) in [
        ("readinessProbe", "/-/ready"),
        ("livenessProbe", "/-/healthy"),
    ] {
        let path = container[probe]["httpGet"]["path"].as_str().unwrap();
        assert_eq!(path, expected, "{probe}");
        let response = tallyd.get(path, &[]);
        assert_eq!(response.status, 200, "{probe} {path}: {}", response.text());
    }
}
