//! Scenario files: the shipped ones load; invalid ones are refused naming file, line and field.

use meshtune_sim::scenario::{load_dir, Scenario, ScenarioError};

const GOOD: &str = r#"name = "x"
window_s = 1.0
windows = 10
slo_ms = 100.0

[hosts]
count = 2
concurrency = 4
service = { dist = "exponential", mean_ms = 10.0 }

[load]
profile = "constant"
rps = 100.0
"#;

fn err(text: &str) -> (String, ScenarioError) {
    let e = Scenario::from_toml_str(text, "bad.toml").unwrap_err();
    (e.to_string(), e)
}

fn line_of(e: &ScenarioError) -> usize {
    match e {
        ScenarioError::Invalid { line, .. } => *line,
        other => panic!("not an Invalid error: {other}"),
    }
}

#[test]
fn good_scenario_parses() {
    let s = Scenario::from_toml_str(GOOD, "good.toml").unwrap();
    assert_eq!(s.hosts.count.0, 2);
    assert_eq!(s.clients.0, 1);
    assert!((s.capacity_rps() - 800.0).abs() < 1e-9);
}

#[test]
fn wrong_type_names_file_line_and_field() {
    let (msg, e) = err(&GOOD.replace("concurrency = 4", "concurrency = \"four\""));
    assert!(msg.starts_with("bad.toml:8:"), "{msg}");
    assert!(msg.contains("hosts.concurrency"), "{msg}");
    assert_eq!(line_of(&e), 8);
}

#[test]
fn out_of_range_value_names_field() {
    let (msg, e) = err(&GOOD.replace("slo_ms = 100.0", "slo_ms = -5.0"));
    assert!(msg.contains("`slo_ms`") && msg.contains("> 0"), "{msg}");
    assert_eq!(line_of(&e), 4);
    let (msg, e) = err(&GOOD.replace("count = 2", "count = 0"));
    assert!(msg.contains("hosts.count"), "{msg}");
    assert_eq!(line_of(&e), 7);
}

#[test]
fn unknown_and_missing_fields_are_refused() {
    let (msg, e) = err(&GOOD.replace("count = 2", "count = 2\nconcurency = 3"));
    assert!(msg.contains("concurency"), "{msg}");
    assert!(line_of(&e) >= 6, "{msg}");
    let (msg, _) = err(&GOOD.replace("slo_ms = 100.0\n", ""));
    assert!(msg.contains("slo_ms"), "{msg}");
    let (msg, e) = err(&GOOD.replace("profile = \"constant\"", "profile = \"sawtooth\""));
    assert!(msg.contains("sawtooth") && msg.contains("load"), "{msg}");
    assert!(line_of(&e) >= 11, "{msg}");
    let (msg, _) = err(&GOOD.replace("profile = \"constant\"", "profile = \"step\""));
    assert!(msg.contains("to_rps") && msg.contains("`load`"), "{msg}");
    let (msg, _) = err(&GOOD.replace("\"exponential\"", "\"weibull\""));
    assert!(
        msg.contains("weibull") && msg.contains("hosts.service"),
        "{msg}"
    );
}

#[test]
fn failure_of_a_missing_host_is_refused() {
    let text = GOOD.replace(
        "[load]",
        "[[hosts.failures]]\nkind = \"slow\"\nhost = 5\nfactor = 2.0\n\n[load]",
    );
    let (msg, e) = err(&text);
    assert!(msg.contains("hosts.failures[0].host"), "{msg}");
    assert_eq!(line_of(&e), 13, "{msg}");
}

#[test]
fn syntax_error_has_a_line() {
    let (msg, e) = err(&GOOD.replace("windows = 10", "windows = = 10"));
    assert_eq!(line_of(&e), 3, "{msg}");
}

#[test]
fn file_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("broken.toml");
    std::fs::write(&p, GOOD.replace("rps = 100.0", "rps = \"lots\"")).unwrap();
    let msg = Scenario::from_file(&p).unwrap_err().to_string();
    assert!(msg.contains("broken.toml:13:"), "{msg}");
    assert!(msg.contains("`load.rps`"), "{msg}");
    let msg = load_dir(dir.path()).unwrap_err().to_string();
    assert!(msg.contains("broken.toml"), "{msg}");
    let missing = Scenario::from_file(&dir.path().join("nope.toml")).unwrap_err();
    assert!(missing.to_string().contains("nope.toml"));
}

#[test]
fn shipped_scenarios_load_and_heldout_is_disjoint() {
    let train = load_dir(&meshtune_sim::train_dir()).unwrap();
    let heldout = load_dir(&meshtune_sim::heldout_dir()).unwrap();
    assert!(train.len() >= 6, "{}", train.len());
    assert!(heldout.len() >= 4, "{}", heldout.len());
    for h in &heldout {
        assert!(train.iter().all(|t| t.name != h.name), "{}", h.name);
    }
    for s in train.iter().chain(&heldout) {
        assert!(s.episode_s() >= 30.0, "{}", s.name);
        assert!(!s.description.is_empty(), "{}", s.name);
    }
}
