//! Prerequisites of tests that need something from outside the workspace (the Envoy binary):
//! skip with a note when it is missing, unless the run says missing prerequisites are failures
//! (`CI` set, as in CI, or `MESHTUNE_E2E_REQUIRED`, as in `cargo xtask test`). The Istio CRD
//! schemas are not a prerequisite: they are vendored in `third_party/istio-crds/` and a missing
//! file fails the tests that read them.

/// Looks a variable up in the process environment (the lookup the tests pass in production).
pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Is `name` set to something other than empty, `0`, `false` or `no` in this lookup?
pub fn flag(lookup: &dyn Fn(&str) -> Option<String>, name: &str) -> bool {
    lookup(name).is_some_and(|v| {
        let v = v.trim().to_ascii_lowercase();
        !(v.is_empty() || v == "0" || v == "false" || v == "no")
    })
}

/// Is `CI` set in the process environment?
pub fn ci() -> bool {
    flag(&env, "CI")
}

/// Are missing prerequisites failures in this lookup (`CI` or `MESHTUNE_E2E_REQUIRED`)?
pub fn required(lookup: &dyn Fn(&str) -> Option<String>) -> bool {
    flag(lookup, "CI") || flag(lookup, "MESHTUNE_E2E_REQUIRED")
}

/// A prerequisite is missing: panics with `msg` when `required`, else prints a SKIP note.
pub fn skip_or_fail(required: bool, msg: &str) {
    assert!(
        !required,
        "{msg}\nCI/MESHTUNE_E2E_REQUIRED is set, so this is a failure, not a skip"
    );
    eprintln!("SKIP: {msg}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_required() {
        let look = |k: &str| (k == "CI").then(|| "false".to_string());
        assert!(!flag(&look, "CI"));
        assert!(!required(&look));
        assert!(flag(&|_| Some("true".into()), "CI"));
        assert!(required(
            &|k| (k == "MESHTUNE_E2E_REQUIRED").then(|| "1".into())
        ));
        assert!(!required(&|_| None));
        assert!(std::panic::catch_unwind(|| skip_or_fail(true, "x")).is_err());
        skip_or_fail(false, "x");
    }
}
