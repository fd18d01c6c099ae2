//! The sandbox for real: bubblewrap namespaces, through a real `ecdysis serve` process and the
//! web chat API (output, exit codes, attachments, limits, persistence on a local dir and on S3,
//! the model's `run_command`), and the isolation matrix against the backend directly.
//!
//! Needs `bwrap` (Debian `bubblewrap`): missing in CI is a failure, on a laptop a skip.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a broken setup fails loudly

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::sandbox::{Direct, out, public_tempdir, sandbox_ready, wait_sandboxes_gone};
use common::server::Server;
use ecdysis::config::SandboxSettings;
use ecdysis::sandbox::{Ended, Limits, Sandbox};
use serde_json::Value;

fn last_reply(messages: &[Value]) -> &Value {
    messages
        .iter()
        .rev()
        .find(|m| m["role"] == "assistant")
        .expect("an assistant message")
}

/// Send `/run …` and return the reply message (text and attachments).
async fn run(server: &Server, conversation: &str, command: &str) -> Value {
    let event_id = server.say(conversation, &format!("/run {command}")).await;
    server
        .wait_replies_to(conversation, &event_id, 1)
        .await
        .remove(0)
}

fn text(reply: &Value) -> &str {
    reply["text"].as_str().unwrap_or_default()
}

async fn artifact(server: &Server, attachment: &Value) -> Vec<u8> {
    let url = format!("{}{}", server.base, attachment["url"].as_str().unwrap());
    reqwest::get(url)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec()
}

async fn sandboxed_server(dir: &Path, extra: &[(&str, &str)]) -> Server {
    let mut env = vec![("ECDYSIS_SANDBOX", "namespace")];
    env.extend_from_slice(extra);
    Server::start(dir, &env).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_posts_output_exit_codes_long_output_and_files() {
    if !sandbox_ready() {
        return;
    }
    let dir = public_tempdir();
    let server = sandboxed_server(dir.path(), &[]).await;

    let reply = run(&server, "c1", "echo hello").await;
    assert_eq!(
        text(&reply),
        format!("```\nhello\n```\n{}", status_of(text(&reply)))
    );
    assert!(text(&reply).contains("exit 0 · "), "{reply}");

    let reply = run(&server, "c1", "exit 3").await;
    assert!(text(&reply).contains("(no output)"), "{reply}");
    assert!(text(&reply).contains("exit 3 · "), "{reply}");

    // stdout and stderr interleave in the order they were written.
    let reply = run(
        &server,
        "c1",
        "echo one; echo two >&2; echo three; ls /nonexistent",
    )
    .await;
    assert!(
        text(&reply).contains("one\ntwo\nthree\nls: cannot access '/nonexistent'"),
        "{reply}"
    );
    assert!(text(&reply).contains("exit 2 · "), "{reply}");

    // Longer than the platform's limit: a file, with the last lines inline.
    let reply = run(&server, "c1", "seq 1 100000").await;
    assert!(text(&reply).contains("output.txt"), "{reply}");
    assert!(text(&reply).contains("100000"), "{reply}");
    assert!(text(&reply).chars().count() <= 4_000, "{reply}");
    let attachments = reply["attachments"].as_array().unwrap();
    assert_eq!(attachments.len(), 1, "{reply}");
    assert_eq!(attachments[0]["name"], "output.txt");
    let expected: String = (1..=100_000).map(|i| format!("{i}\n")).collect();
    assert_eq!(
        artifact(&server, &attachments[0]).await,
        expected.as_bytes()
    );

    // Files written under /workspace/out/ come back as attachments (images as images).
    let reply = run(
        &server,
        "c1",
        r"mkdir -p out && printf '\x89PNG\r\n\x1a\nfake-plot' > out/plot.png && echo drawn",
    )
    .await;
    assert!(text(&reply).contains("drawn"), "{reply}");
    let attachments = reply["attachments"].as_array().unwrap();
    assert_eq!(attachments.len(), 1, "{reply}");
    assert_eq!(attachments[0]["name"], "plot.png");
    assert_eq!(attachments[0]["mime"], "image/png");
    assert_eq!(
        artifact(&server, &attachments[0]).await,
        b"\x89PNG\r\n\x1a\nfake-plot"
    );
    // An unchanged file is not posted again.
    let reply = run(&server, "c1", "ls out").await;
    assert!(text(&reply).contains("plot.png"), "{reply}");
    assert!(
        reply["attachments"].as_array().unwrap().is_empty(),
        "{reply}"
    );

    // No command: usage.
    let reply = run(&server, "c1", "").await;
    assert!(
        text(&reply).starts_with("Usage: `/run <command>`"),
        "{reply}"
    );
}

/// The status line at the end of a reply.
fn status_of(text: &str) -> &str {
    text.rsplit('\n').next().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_end_runaway_commands_while_other_channels_get_answers() {
    if !sandbox_ready() {
        return;
    }
    let dir = public_tempdir();
    let server = sandboxed_server(
        dir.path(),
        &[
            ("ECDYSIS_SANDBOX_TIMEOUT_SECONDS", "4"),
            ("ECDYSIS_SANDBOX_CPU_SECONDS", "2"),
            ("ECDYSIS_SANDBOX_MEMORY_MB", "256"),
            ("ECDYSIS_SANDBOX_MAX_PROCESSES", "48"),
            ("ECDYSIS_SANDBOX_MAX_OUTPUT_BYTES", "1048576"),
            ("ECDYSIS_SANDBOX_MAX_PARALLEL", "8"),
        ],
    )
    .await;
    let hogs = [
        ("fork-bomb", "bomb() { bomb | bomb & }; bomb; sleep 600"),
        ("busy-loop", "while :; do :; done"),
        ("sleeper", "sleep 600"),
        (
            "memory-hog",
            "python3 -c 'b = bytearray(2 * 1024 ** 3); print(len(b))'",
        ),
        ("output-flood", "head -c 100000000 /dev/zero | tr '\\0' x"),
    ];
    let started = Instant::now();
    for (conversation, command) in hogs {
        server.say(conversation, &format!("/run {command}")).await;
    }
    // The server keeps answering another channel while all of that runs.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = Instant::now();
    let calm = run(&server, "calm", "echo alive").await;
    let answered_in = asked.elapsed();
    assert!(text(&calm).contains("alive"), "{calm}");
    eprintln!("another channel answered in {answered_in:?} while five runaway commands ran");
    assert!(
        answered_in < Duration::from_secs(5),
        "another channel waited {answered_in:?}"
    );
    let status = server.ask("calm", "/status").await;
    assert!(status.contains("Sandbox /run: on"), "{status}");

    let mut replies = std::collections::HashMap::new();
    for (conversation, _) in hogs {
        let messages = server.wait_replies(conversation, 1).await;
        replies.insert(conversation, last_reply(&messages).clone());
    }
    let all_done = started.elapsed();
    assert!(
        all_done < Duration::from_secs(20),
        "the runaway commands took {all_done:?}"
    );
    let said = |c: &str| text(&replies[c]).to_string();
    // The bomb hits the process limit (forks fail) and the time limit ends it.
    let bomb = said("fork-bomb");
    assert!(
        bomb.contains("the 4 s time limit ran out") || bomb.contains("of output"),
        "{bomb}"
    );
    assert!(bomb.contains("Resource temporarily unavailable"), "{bomb}");
    let busy = said("busy-loop");
    assert!(
        busy.contains("CPU time limit") || busy.contains("4 s time limit"),
        "{busy}"
    );
    assert!(
        said("sleeper").contains("the 4 s time limit ran out"),
        "{}",
        said("sleeper")
    );
    let memory = said("memory-hog");
    assert!(memory.contains("MemoryError"), "{memory}");
    assert!(memory.contains("exit 1 · "), "{memory}");
    let flood = &replies["output-flood"];
    assert!(
        text(flood).contains("more than 1.0 MB of output"),
        "{flood}"
    );
    let attachments = flood["attachments"].as_array().unwrap();
    assert_eq!(attachments[0]["name"], "output.txt");
    assert_eq!(artifact(&server, &attachments[0]).await.len(), 1_048_576);

    // Nothing of this server's sandboxes is left running (its descendants and its sandbox
    // cgroups; other tests' sandboxes do not count), once the last ones are reaped.
    let leftover = wait_sandboxes_gone(server.pid(), Duration::from_secs(10)).await;
    assert!(leftover.is_empty(), "left running: {leftover:#?}");
}

/// Persistence through `/run`: write in channel A, lose the local copy, read it back; a second
/// "machine" (its own data dir and database, the same blob store) sees it too; channel B never.
async fn workspace_survives_machine_loss(blob_env: &[(&str, &str)]) -> (String, String) {
    let one = public_tempdir();
    let server = sandboxed_server(one.path(), blob_env).await;
    let reply = run(
        &server,
        "team-a",
        "echo 'kept for next week' > note.txt && mkdir -p src && echo deep > src/x && echo written",
    )
    .await;
    assert!(text(&reply).contains("written"), "{reply}");
    assert!(!text(&reply).contains("could not be saved"), "{reply}");

    let other = run(&server, "team-b", "ls -A; cat note.txt").await;
    assert!(!text(&other).contains("kept for next week"), "{other}");
    assert!(text(&other).contains("No such file"), "{other}");

    // Wipe this machine's workspace cache.
    std::fs::remove_dir_all(one.path().join("data/workspaces")).unwrap();
    let back = run(&server, "team-a", "cat note.txt src/x").await;
    assert!(text(&back).contains("kept for next week\ndeep"), "{back}");
    assert!(text(&back).contains("restored from its snapshot"), "{back}");
    drop(server);

    // Another machine: its own data directory and database, the same blob store.
    let two = public_tempdir();
    let server = sandboxed_server(two.path(), blob_env).await;
    let back = run(&server, "team-a", "cat note.txt && echo more >> note.txt").await;
    assert!(text(&back).contains("kept for next week"), "{back}");
    let other = run(&server, "team-b", "cat note.txt").await;
    assert!(text(&other).contains("No such file"), "{other}");
    (text(&back).to_string(), text(&other).to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspace_survives_machine_loss_local_blobs() {
    if !sandbox_ready() {
        return;
    }
    let blobs = public_tempdir();
    let url = format!("file://{}", blobs.path().display());
    workspace_survives_machine_loss(&[("ECDYSIS_BLOB_URL", &url)]).await;
    let stored: Vec<String> = std::fs::read_dir(blobs.path().join("workspaces"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        stored
            .iter()
            .any(|n| n.starts_with("web-local-team-a-") && n.ends_with(".tar.zst")),
        "{stored:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspace_survives_machine_loss_s3() {
    if !sandbox_ready() {
        return;
    }
    let Some(endpoint) = common::s3_endpoint() else {
        return;
    };
    let client = s3_client(&endpoint);
    let bucket = format!("ecdysis-sandbox-{}", uuid::Uuid::new_v4().simple());
    client.create_bucket().bucket(&bucket).send().await.unwrap();
    let url = format!("s3://{bucket}/machines");
    workspace_survives_machine_loss(&[
        ("ECDYSIS_BLOB_URL", &url),
        ("AWS_ENDPOINT_URL", &endpoint),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
    ])
    .await;
    let listed = client
        .list_objects_v2()
        .bucket(&bucket)
        .prefix("machines/workspaces/")
        .send()
        .await
        .unwrap();
    let keys: Vec<String> = listed
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect();
    assert!(
        keys.iter()
            .any(|k| k.starts_with("machines/workspaces/web-local-team-a-")
                && k.ends_with(".tar.zst")),
        "{keys:?}"
    );
}

fn s3_client(endpoint: &str) -> aws_sdk_s3::Client {
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_lists_and_the_off_switch() {
    if !sandbox_ready() {
        return;
    }
    let dir = public_tempdir();
    let server = sandboxed_server(
        dir.path(),
        &[
            ("ECDYSIS_SANDBOX_ALLOW_USERS", "slack:someone, web:tester"),
            ("ECDYSIS_SANDBOX_ALLOW_CHANNELS", "web:ops"),
        ],
    )
    .await;
    let reply = run(&server, "ops", "echo allowed").await;
    assert!(text(&reply).contains("allowed\n```"), "{reply}");
    let reply = run(&server, "random", "echo allowed").await;
    assert!(text(&reply).contains("sandbox.allow_channels"), "{reply}");
    assert!(!text(&reply).contains("allowed\n```"), "{reply}");
    drop(server);

    let dir = public_tempdir();
    let server = sandboxed_server(
        dir.path(),
        &[("ECDYSIS_SANDBOX_ALLOW_USERS", "someone-else")],
    )
    .await;
    let reply = run(&server, "ops", "echo allowed").await;
    assert!(text(&reply).contains("sandbox.allow_users"), "{reply}");
    drop(server);

    let dir = public_tempdir();
    let server = Server::start(dir.path(), &[("ECDYSIS_SANDBOX", "off")]).await;
    let reply = run(&server, "ops", "echo allowed").await;
    assert!(
        text(&reply).contains("ECDYSIS_SANDBOX=namespace"),
        "{reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_calls_run_command_and_answers() {
    if !sandbox_ready() {
        return;
    }
    let llm = ecdysis_testkit::llm::FakeLlm::start().await.unwrap();
    llm.push(ecdysis_testkit::llm::Reply::tool(
        "run_command",
        serde_json::json!({ "command": "echo tool-ran-$((6 * 7)); echo oops >&2; exit 4" }),
    ));
    llm.push(ecdysis_testkit::llm::Reply::text(
        "The command printed tool-ran-42 and exited with 4.",
    ));
    let dir = public_tempdir();
    let base = llm.anthropic_base_url();
    let server = sandboxed_server(
        dir.path(),
        &[
            ("ANTHROPIC_API_KEY", "test-key"),
            ("ANTHROPIC_BASE_URL", &base),
            ("ECDYSIS_MODEL", "anthropic/claude-test"),
        ],
    )
    .await;
    let answer = server.ask("modelled", "what does the command print?").await;
    assert_eq!(answer, "The command printed tool-ran-42 and exited with 4.");
    let requests = llm.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    let offered = requests[0].raw.contains("\"run_command\"");
    assert!(offered, "run_command was not offered: {}", requests[0].raw);
    let result = &requests[1].raw;
    assert!(result.contains("tool-ran-42"), "{result}");
    assert!(result.contains("oops"), "{result}");
    assert!(result.contains("exit 4"), "{result}");
}

// --- The isolation matrix, against the backend directly. ---

#[tokio::test]
async fn isolation_secrets_in_home_and_root_stay_closed() {
    if !sandbox_ready() {
        return;
    }
    let direct = Direct::new(SandboxSettings::default()).await;
    let token = format!("TOPSECRET-{}", uuid::Uuid::new_v4().simple());
    let mut planted = Vec::new();
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    for dir in [home.as_str(), "/root", "/tmp", "/var/tmp"] {
        let path =
            Path::new(dir).join(format!(".ecdysis-secret-{}", uuid::Uuid::new_v4().simple()));
        if std::fs::write(&path, &token).is_ok() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            planted.push(path);
        }
    }
    // And one beside the workspaces, in the data directory.
    let beside = direct.dir.path().join("ecdysis.db");
    std::fs::write(&beside, &token).unwrap();
    planted.push(beside.clone());
    assert!(!planted.is_empty());
    let paths: Vec<String> = planted.iter().map(|p| p.display().to_string()).collect();
    let command = format!(
        "for f in {0}; do cat \"$f\"; cat \"/proc/1/root$f\"; done; cat ../ecdysis.db; cat /workspace/../ecdysis.db; \
         grep -rs TOPSECRET /etc /tmp /workspace /root /home /var 2>/dev/null | head -3; cat /etc/shadow; echo END",
        paths.join(" ")
    );
    let output = direct.run("secrets", &command, Limits::default()).await;
    let text = out(&output);
    for path in &planted {
        let _ = std::fs::remove_file(path);
    }
    assert!(text.contains("END"), "{text}");
    assert!(
        !text.contains(&token),
        "a secret leaked into the sandbox:\n{text}"
    );
    assert!(!text.contains("root:"), "/etc/shadow was readable:\n{text}");
}

#[tokio::test]
async fn isolation_writes_only_to_workspace_and_tmp() {
    if !sandbox_ready() {
        return;
    }
    let direct = Direct::new(SandboxSettings::default()).await;
    let marker = format!("ecdysis-escape-{}", uuid::Uuid::new_v4().simple());
    let targets = [
        "/usr",
        "/etc",
        "/",
        "/dev",
        "/bin",
        "/lib",
        "/proc",
        "/home",
        "/root",
        "/var",
        "/workspace/..",
    ];
    let attempts: Vec<String> = targets
        .iter()
        .map(|t| format!("touch {t}/{marker} 2>/dev/null && echo \"WROTE {t}\""))
        .collect();
    let command = format!(
        "{}; touch /workspace/ok && echo WORKSPACE_OK; touch /tmp/ok && echo TMP_OK; touch /dev/shm/ok && echo SHM_OK; \
         mkdir -p ~/deeper && echo HOME_IS_WORKSPACE; id -un",
        attempts.join("; ")
    );
    let output = direct.run("writes", &command, Limits::default()).await;
    let text = out(&output);
    assert!(!text.contains("WROTE"), "{text}");
    for ok in [
        "WORKSPACE_OK",
        "TMP_OK",
        "SHM_OK",
        "HOME_IS_WORKSPACE",
        "sandbox",
    ] {
        assert!(text.contains(ok), "{ok} missing:\n{text}");
    }
    for target in ["/usr", "/etc", "/", "/var/tmp", "/tmp"] {
        assert!(
            !Path::new(target).join(&marker).exists(),
            "{target}/{marker} appeared on the host"
        );
    }
    assert!(
        direct.dir.path().join("workspaces/writes/ok").exists(),
        "the workspace write did not reach the host directory"
    );
}

#[tokio::test]
async fn isolation_no_network_but_loopback_inside() {
    if !sandbox_ready() {
        return;
    }
    let direct = Direct::new(SandboxSettings::default()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let server = tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    let python = [
        "import socket",
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()",
        "c = socket.create_connection(s.getsockname(), timeout=2); print('LOOPBACK_INSIDE_OK')",
        "for host in ('10.0.0.1', '1.1.1.1'):",
        "    try:",
        "        socket.create_connection((host, 80), timeout=2); print('REACHED', host)",
        "    except OSError as e:",
        "        print('unreachable', host, e.errno)",
    ]
    .join("\n");
    let command = format!(
        "bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}' 2>&1 && echo CONNECTED_TO_HOST; python3 - <<'PY'\n{python}\nPY"
    );
    let output = direct.run("network", &command, Limits::default()).await;
    let text = out(&output);
    server.abort();
    assert!(!text.contains("CONNECTED_TO_HOST"), "{text}");
    assert!(!text.contains("REACHED"), "{text}");
    assert!(text.contains("LOOPBACK_INSIDE_OK"), "{text}");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "the host's server was reached"
    );
}

#[tokio::test]
async fn isolation_sees_only_its_own_processes() {
    if !sandbox_ready() {
        return;
    }
    let direct = Direct::new(SandboxSettings::default()).await;
    let host_pid = std::process::id();
    let command = format!(
        "ls /proc | grep -cE '^[0-9]+$'; test -e /proc/{host_pid}/cmdline && grep -a ecdysis /proc/{host_pid}/cmdline && echo SAW_HOST; kill -0 1 && echo PID1_OK"
    );
    let output = direct.run("pids", &command, Limits::default()).await;
    let text = out(&output);
    let count: usize = text
        .lines()
        .next()
        .unwrap_or("99")
        .trim()
        .parse()
        .unwrap_or(99);
    assert!(count <= 6, "the sandbox sees {count} processes:\n{text}");
    assert!(!text.contains("SAW_HOST"), "{text}");
}

#[tokio::test]
async fn limits_are_enforced_by_the_backend() {
    if !sandbox_ready() {
        return;
    }
    let direct = Direct::new(SandboxSettings::default()).await;
    let limits = Limits {
        timeout: Duration::from_secs(3),
        cpu_seconds: 1,
        memory_bytes: 128 * 1024 * 1024,
        max_processes: 20,
        max_output_bytes: 64 * 1024,
        max_file_bytes: 1024 * 1024,
        tmp_bytes: 8 * 1024 * 1024,
        workspace_bytes: 64 * 1024 * 1024,
    };
    // Processes: forking stops (EAGAIN) before max_processes.
    let fork = [
        "import os, time",
        "n = 0",
        "try:",
        "    while True:",
        "        if os.fork() == 0:",
        "            time.sleep(3); os._exit(0)",
        "        n += 1",
        "except OSError as e:",
        "    print('forked', n, 'errno', e.errno)",
    ]
    .join("\n");
    let output = direct
        .run("nproc", &format!("python3 - <<'PY'\n{fork}\nPY"), limits)
        .await;
    let text = out(&output);
    let forked: usize = text
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX);
    assert!(text.contains("errno 11"), "{text}");
    assert!((10..20).contains(&forked), "{text}");
    // CPU time: SIGXCPU (exit 152) after about a second.
    // (A generous wall clock: other tests load the machine, and CPU seconds are what count.)
    let cpu_limits = Limits {
        timeout: Duration::from_secs(30),
        ..limits
    };
    let output = direct.run("cpu", "while :; do :; done", cpu_limits).await;
    assert_eq!(output.ended, Ended::Exited, "{output:?}");
    assert_eq!(output.exit_code, Some(152), "{output:?}");
    // Wall time: killed at the deadline, everything in the namespace with it.
    let started = Instant::now();
    let output = direct.run("wall", "sleep 100 & sleep 100", limits).await;
    assert_eq!(output.ended, Ended::TimedOut);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // Output: stopped at the cap.
    let output = direct.run("flood", "yes", limits).await;
    assert_eq!(output.ended, Ended::OutputLimit);
    assert_eq!(output.output.len(), 64 * 1024);
    // File size: a file cannot grow past max_file_bytes; /tmp is capped too.
    let output = direct
        .run(
            "fsize",
            "head -c 2000000 /dev/zero > big; echo \"big: $?\"; ls -l big | awk '{print $5}'; head -c 9000000 /dev/zero > /tmp/t; echo \"tmp: $?\"",
            limits,
        )
        .await;
    let text = out(&output);
    assert!(text.contains("1048576"), "{text}");
    assert!(!text.contains("big: 0"), "{text}");
    assert!(!text.contains("tmp: 0"), "{text}");
    // Memory: an allocation past the address-space limit fails.
    let output = direct
        .run(
            "memory",
            "python3 -c 'b = bytearray(512 * 1024 * 1024)' 2>&1 | tail -1",
            limits,
        )
        .await;
    assert!(out(&output).contains("MemoryError"), "{}", out(&output));
}

/// A configured root file system replaces the host's system: a minimal one with just `sh`.
#[tokio::test]
async fn a_configured_rootfs_is_the_whole_system() {
    if !sandbox_ready() {
        return;
    }
    let rootfs = public_tempdir();
    let root = rootfs.path();
    // /bin/sh and the libraries it loads, copied to the same paths.
    let sh = std::fs::canonicalize("/bin/sh").unwrap();
    let ldd = std::process::Command::new("ldd").arg(&sh).output().unwrap();
    let mut files = vec![sh.clone()];
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(std::path::PathBuf::from);
        files.extend(path);
    }
    for file in &files {
        let target = root.join(file.strip_prefix("/").unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(file, &target).unwrap();
    }
    std::fs::create_dir_all(root.join("bin")).unwrap();
    if !root.join("bin/sh").exists() {
        std::fs::copy(&sh, root.join("bin/sh")).unwrap();
    }
    std::fs::set_permissions(root.join("bin/sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/os-release"), "NAME=ecdysis-test-rootfs\n").unwrap();
    std::fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();

    let settings = SandboxSettings {
        rootfs: Some(root.to_path_buf()),
        ..SandboxSettings::default()
    };
    let direct = Direct::new(settings).await;
    assert!(
        direct
            .backend
            .describe()
            .contains(&root.display().to_string()),
        "{}",
        direct.backend.describe()
    );
    let output = direct
        .run(
            "rootfs",
            "while read -r line; do echo \"$line\"; done < /etc/os-release; \
             test -e /usr/bin/python3 || echo NO_HOST_PYTHON; \
             while IFS=: read -r name rest; do echo \"user $name\"; done < /etc/passwd; \
             echo hi > /workspace/from-rootfs && echo WROTE",
            Limits::default(),
        )
        .await;
    let text = out(&output);
    assert_eq!(output.exit_code, Some(0), "{text}");
    for expected in [
        "NAME=ecdysis-test-rootfs",
        "NO_HOST_PYTHON",
        "user sandbox",
        "WROTE",
    ] {
        assert!(text.contains(expected), "{expected} missing:\n{text}");
    }
}

/// A private data directory (mode 0700, as `mktemp -d` and systemd's `StateDirectory=` make
/// it) stays private, and `/run` still works: run as root, the workspaces then live in a
/// root-owned directory of their own that the per-channel sandbox users can pass through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_works_with_a_private_data_dir() {
    use std::os::unix::fs::PermissionsExt;
    if !sandbox_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let outside = ecdysis::sandbox::private_data_workspaces(&data);
    let server = sandboxed_server(dir.path(), &[]).await;

    let reply = run(&server, "c1", "echo kept > note.txt; cat note.txt; id -u").await;
    assert!(text(&reply).contains("kept"), "{reply}\n{}", server.log());
    assert!(text(&reply).contains("exit 0 · "), "{reply}");
    let reply = run(&server, "c1", "cat note.txt").await;
    assert!(
        text(&reply).contains("kept"),
        "the workspace persists: {reply}"
    );

    // The data directory was not opened up.
    assert_eq!(
        std::fs::metadata(&data).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(
        std::fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777,
        0o700
    );
    if root {
        // The workspaces root lets the sandbox users through but not list it.
        let mode = std::fs::metadata(&outside).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o711, "{}", outside.display());
        assert!(!data.join("workspaces").exists());
        drop(server);
        std::fs::remove_dir_all(&outside).unwrap();
    }
}
