//! `skiff-testkit busybox OUT.tar NAME [--docker] [--file PATH=CONTENT]...`: writes a
//! busybox image archive for the end-to-end tests and benchmarks, which drive the real
//! `skiff` binary and cannot link this crate.

use std::path::PathBuf;
use std::process::ExitCode;

use testkit::{busybox_image, Archive, Layer};

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("skiff-testkit: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<String>) -> Result<(), String> {
    let usage = "usage: skiff-testkit busybox OUT.tar NAME [--docker] [--file PATH=CONTENT]...";
    let [kind, out, name, rest @ ..] = args.as_slice() else {
        return Err(usage.into());
    };
    if kind != "busybox" {
        return Err(usage.into());
    }
    let mut docker = false;
    let mut extra = Layer::new();
    let mut has_extra = false;
    let mut options = rest.iter();
    while let Some(option) = options.next() {
        match option.as_str() {
            "--docker" => docker = true,
            "--file" => {
                let spec = options.next().ok_or(usage)?;
                let (path, content) = spec.split_once('=').ok_or(usage)?;
                extra = extra.file(path, content.as_bytes().to_vec());
                has_extra = true;
            }
            _ => return Err(usage.into()),
        }
    }
    let mut image = busybox_image(name).map_err(|e| e.to_string())?;
    if has_extra {
        image = image.layer(extra);
    }
    let archive = if docker {
        Archive::docker()
    } else {
        Archive::oci()
    };
    archive
        .image(image)
        .write_file(&PathBuf::from(out))
        .map_err(|e| e.to_string())
}
