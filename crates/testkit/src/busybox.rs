//! A runnable busybox image built from the host's busybox-static.
//!
//! The layer holds `/bin/busybox` plus one symlink per applet in [`BUSYBOX_APPLETS`],
//! a minimal `/etc/passwd` and `/etc/group` (root and nobody/nogroup 65534), a sticky
//! world-writable `/tmp`, and the mount points a runtime expects (`/proc`, `/sys`,
//! `/dev`). The binary must be statically linked: test images carry no dynamic loader,
//! so the ELF program headers are checked for a `PT_INTERP` entry.

use std::path::{Path, PathBuf};

use crate::archive::ImageBuilder;
use crate::layer::Layer;
use crate::TestkitError;

/// Where Debian's busybox-static installs the binary.
pub const BUSYBOX_PATH: &str = "/bin/busybox";

/// The applets linked into `/bin` of [`busybox_layer`].
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "echo", "cat", "sleep", "ls", "ps", "id", "hostname", "env", "wget", "nc", "true",
    "false", "kill", "head", "dd", "grep", "mount", "touch", "mkdir", "rm", "ip", "ifconfig",
    "top", "yes", "seq", "date", "printf", "stat", "find", "wc", "sync", "ping", "route",
    "nslookup", "uname", "pwd", "du", "df", "free",
];

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                      nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";

/// A layer with the host's static busybox, its applet symlinks, `/etc/passwd`,
/// `/etc/group` and `/tmp` (1777).
pub fn busybox_layer() -> Result<Layer, TestkitError> {
    let path = Path::new(BUSYBOX_PATH);
    let binary = std::fs::read(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => TestkitError::BusyboxMissing {
            path: path.to_owned(),
        },
        _ => TestkitError::Read {
            path: path.to_owned(),
            source,
        },
    })?;
    if has_program_interpreter(&binary) {
        return Err(TestkitError::BusyboxNotStatic {
            path: PathBuf::from(BUSYBOX_PATH),
        });
    }
    let mut layer = Layer::new()
        .dir("bin")
        .file("bin/busybox", binary)
        .mode(0o755);
    for applet in BUSYBOX_APPLETS {
        layer = layer.symlink(&format!("bin/{applet}"), "busybox");
    }
    Ok(layer
        .dir("etc")
        .file("etc/passwd", PASSWD)
        .file("etc/group", GROUP)
        .dir("tmp")
        .mode(0o1777)
        .dir("root")
        .mode(0o700)
        .dir("proc")
        .dir("sys")
        .dir("dev"))
}

/// A ready busybox image named `name` (both in the OCI annotations and in docker's
/// `RepoTags`), running `sh` with a standard `PATH`.
pub fn busybox_image(name: &str) -> Result<ImageBuilder, TestkitError> {
    Ok(ImageBuilder::new()
        .layer(busybox_layer()?)
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .cmd(["sh"])
        .ref_name(name)
        .annotation(crate::ANNOTATION_CONTAINERD_NAME, name)
        .repo_tag(name))
}

/// Whether an ELF binary asks for a dynamic loader (has a `PT_INTERP` program header).
/// Anything that is not a well-formed ELF file is reported as not needing one.
fn has_program_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" {
        return false;
    }
    let is_64 = elf[4] == 2;
    let little = elf[5] == 1;
    let read = |offset: usize, len: usize| -> Option<u64> {
        let bytes = elf.get(offset..offset + len)?;
        let mut value = 0u64;
        for (i, byte) in bytes.iter().enumerate() {
            let shift = if little { i } else { len - 1 - i } * 8;
            value |= u64::from(*byte) << shift;
        }
        Some(value)
    };
    let (phoff, phentsize, phnum) = if is_64 {
        (read(0x20, 8), read(0x36, 2), read(0x38, 2))
    } else {
        (read(0x1c, 4), read(0x2a, 2), read(0x2c, 2))
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (phoff, phentsize, phnum) else {
        return false;
    };
    (0..phnum).any(|i| {
        let offset = phoff.saturating_add(i.saturating_mul(phentsize));
        usize::try_from(offset)
            .ok()
            .and_then(|offset| read(offset, 4))
            .is_some_and(|kind| kind == u64::from(PT_INTERP))
    })
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn busybox_layer_has_binary_applets_and_users() {
        let tar = busybox_layer().unwrap().tar().unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut seen = std::collections::HashMap::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mode = entry.header().mode().unwrap();
            let link = entry
                .link_name()
                .unwrap()
                .map(|l| l.to_string_lossy().into_owned());
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            seen.insert(path.trim_end_matches('/').to_owned(), (mode, link, data));
        }
        assert_eq!(seen["bin/busybox"].0, 0o755);
        for applet in BUSYBOX_APPLETS {
            assert_eq!(seen[&format!("bin/{applet}")].1.as_deref(), Some("busybox"));
        }
        assert_eq!(seen["tmp"].0, 0o1777);
        let passwd = String::from_utf8(seen["etc/passwd"].2.clone()).unwrap();
        assert!(passwd.contains("nobody:x:65534:65534:"));
    }

    #[test]
    fn host_busybox_is_static_and_dynamic_binaries_are_detected() {
        let busybox = std::fs::read(BUSYBOX_PATH).unwrap();
        assert!(!has_program_interpreter(&busybox));
        // Any dynamically linked binary of the host has PT_INTERP.
        let ls = std::fs::read("/bin/ls").unwrap();
        assert!(has_program_interpreter(&ls));
        assert!(!has_program_interpreter(b"#!/bin/sh\n"));
    }

    #[test]
    fn busybox_image_is_named() {
        let image = busybox_image("busybox:latest").unwrap();
        let config: serde_json::Value =
            serde_json::from_slice(&image.config_json().unwrap()).unwrap();
        assert_eq!(config["config"]["Cmd"], serde_json::json!(["sh"]));
    }
}
