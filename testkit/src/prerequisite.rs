//! The one rule for tests that need something outside the toolchain (a service, a binary, a
//! kernel feature): missing in CI (env `CI` set, as `.ci/run` does) is a failure; missing on a
//! laptop skips the test with a note saying how to get it.

/// Whether `available`; when not, panics in CI and prints a skip note elsewhere. Use as
/// `if !prerequisite(found, "bubblewrap (bwrap)", "apt-get install bubblewrap") { return; }`.
pub fn prerequisite(available: bool, what: &str, how_to_get_it: &str) -> bool {
    if available {
        return true;
    }
    if in_ci() {
        panic!("{what} is missing, and CI must have it: {how_to_get_it}");
    }
    eprintln!("skipping: {what} is missing ({how_to_get_it})");
    false
}

/// The value of an environment variable naming a service (a URL), under the same rule.
pub fn service(var: &str) -> Option<String> {
    let value = std::env::var(var).ok().filter(|v| !v.is_empty());
    prerequisite(
        value.is_some(),
        var,
        "source .ci/services.sh to start the service",
    )
    .then_some(value)
    .flatten()
}

/// Whether this run is CI (env `CI` set).
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// Whether `program` runs with `arg` (such as `--version`) and exits successfully.
pub fn runs(program: &str, arg: &str) -> bool {
    std::process::Command::new(program)
        .arg(arg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
