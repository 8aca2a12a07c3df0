//! README "Install in a cluster": every command its shell block shows exists. `meshtune ...`
//! lines parse with the real binary (subcommand and flags; run with `--help` appended, so
//! nothing talks to a cluster: their Kubernetes calls are tested against the mocked API server
//! in `crd/tests/cli.rs` and `controller/tests/lifecycle.rs`); `kubectl ... -k DIR` / `-f FILE`
//! name directories and files of the repository; `meshtune crd` prints the committed CRD.

use std::process::Command;

use meshtune_test_support::workspace_root;

const BIN: &str = env!("CARGO_BIN_EXE_meshtune");

/// The command lines of the first ```sh block under "## Install in a cluster".
fn install_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let section = readme
        .split("\n## Install in a cluster\n")
        .nth(1)
        .expect("README has a section \"## Install in a cluster\"");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("the section has a ```sh block");
    block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// Splits a shell line into words (single quotes only, as the README uses).
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '\'' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[test]
fn every_install_command_exists() {
    let cmds = install_commands();
    assert!(cmds.len() >= 10, "{cmds:?}");
    let mut meshtune = 0;
    for line in &cmds {
        let w = words(line);
        match w[0].as_str() {
            "meshtune" => {
                meshtune += 1;
                let out = Command::new(BIN)
                    .args(&w[1..])
                    .arg("--help")
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "`{line}` does not parse:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            "kubectl" => {
                for flag in ["-k", "-f"] {
                    if let Some(i) = w.iter().position(|a| a == flag) {
                        let path = workspace_root().join(&w[i + 1]);
                        assert!(path.exists(), "`{line}`: {} does not exist", path.display());
                        if flag == "-k" {
                            assert!(path.join("kustomization.yaml").is_file(), "`{line}`");
                        }
                    }
                }
                // The verb: the first word after `kubectl` that is neither a flag nor `-n`'s value.
                let mut rest = w.iter().skip(1);
                let mut verb = None;
                while let Some(a) = rest.next() {
                    if a == "-n" {
                        rest.next();
                    } else if !a.starts_with('-') {
                        verb = Some(a);
                        break;
                    }
                }
                assert!(
                    matches!(
                        verb.map(String::as_str),
                        Some("apply" | "delete" | "label" | "get" | "patch" | "scale")
                    ),
                    "`{line}`: unexpected kubectl verb {verb:?}"
                );
            }
            other => panic!("`{line}`: unexpected command {other}"),
        }
    }
    assert!(meshtune >= 4, "{cmds:?}");
}

#[test]
fn meshtune_crd_prints_the_committed_crd() {
    let out = Command::new(BIN).arg("crd").output().unwrap();
    assert!(out.status.success());
    let committed =
        std::fs::read_to_string(workspace_root().join(meshtune_crd::CRD_MANIFEST_PATH)).unwrap();
    assert!(
        String::from_utf8(out.stdout).unwrap() == committed,
        "{} is not what `meshtune crd` prints; regenerate it with\n  cargo run -p meshtune -- crd > {}",
        meshtune_crd::CRD_MANIFEST_PATH,
        meshtune_crd::CRD_MANIFEST_PATH
    );
}
