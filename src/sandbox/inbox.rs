//! Files users sent, written into a channel's workspace under `inbox/` so commands can use
//! them. Writes go through a directory handle (cap-std), so a link a command left in the
//! workspace cannot send them anywhere else.

use std::io::{self, Write};
use std::path::Path;

use bytes::Bytes;
use cap_std::ambient_authority;
use cap_std::fs::Dir;

/// The name a file gets in `inbox/`: its own, made safe (no path separators, no leading dot).
pub fn safe_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| match c {
            '/' | '\\' | '\0' => '_',
            c if c.is_control() => '_',
            c => c,
        })
        .take(120)
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.').to_string();
    if cleaned.is_empty() {
        "file".into()
    } else {
        cleaned
    }
}

/// Write `files` into `workspace/inbox/` while they fit in `room` bytes; returns the sandbox
/// paths written.
pub(crate) fn write(
    workspace: &Path,
    files: Vec<(String, Bytes)>,
    mut room: u64,
) -> io::Result<Vec<String>> {
    let root = Dir::open_ambient_dir(workspace, ambient_authority())?;
    root.create_dir_all("inbox")?;
    let inbox = root.open_dir("inbox")?;
    let mut written = Vec::new();
    for (name, bytes) in files {
        let name = safe_name(&name);
        if bytes.len() as u64 > room {
            tracing::info!(file = %name, "not put into the workspace: over its size limit");
            continue;
        }
        let tmp = format!(".{name}.part");
        let mut file = inbox.create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        inbox.rename(&tmp, &inbox, &name)?;
        room -= bytes.len() as u64;
        written.push(format!("/workspace/inbox/{name}"));
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_inside() {
        assert_eq!(safe_name("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(safe_name(".bashrc"), "bashrc");
        assert_eq!(safe_name(""), "file");
        assert_eq!(safe_name("photo 1.png"), "photo 1.png");
    }

    #[test]
    fn files_land_in_inbox_and_links_do_not_lead_out() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir(&ws).unwrap();
        let written = write(
            &ws,
            vec![("a.txt".into(), Bytes::from_static(b"hello"))],
            1 << 20,
        )
        .unwrap();
        assert_eq!(written, vec!["/workspace/inbox/a.txt"]);
        assert_eq!(std::fs::read(ws.join("inbox/a.txt")).unwrap(), b"hello");
        // A command replaced inbox/ with a link out of the workspace.
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::remove_dir_all(ws.join("inbox")).unwrap();
        std::os::unix::fs::symlink(&outside, ws.join("inbox")).unwrap();
        assert!(
            write(
                &ws,
                vec![("b.txt".into(), Bytes::from_static(b"x"))],
                1 << 20
            )
            .is_err()
        );
        assert!(!outside.join("b.txt").exists());
        // Over the room left: skipped.
        std::fs::remove_file(ws.join("inbox")).unwrap();
        let written = write(&ws, vec![("big".into(), Bytes::from(vec![0u8; 10]))], 5).unwrap();
        assert!(written.is_empty());
    }
}
