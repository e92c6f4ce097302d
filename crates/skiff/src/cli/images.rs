//! `skiff image load|ls`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::Value;

use super::{print_json, table, Connection, Output};

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Import a `docker save` or OCI image-layout tarball (optionally gzipped).
    Load(LoadArgs),
    /// List the images the server has.
    Ls,
}

#[derive(Args)]
pub struct LoadArgs {
    /// The tarball.
    file: PathBuf,
}

pub async fn run(command: ImageCommand, connection: &Connection) -> anyhow::Result<ExitCode> {
    match command {
        ImageCommand::Load(args) => load(args, connection).await,
        ImageCommand::Ls => ls(connection).await,
    }
}

async fn load(args: LoadArgs, connection: &Connection) -> anyhow::Result<ExitCode> {
    let client = connection.client()?;
    let file = tokio::fs::File::open(&args.file)
        .await
        .with_context(|| format!("cannot open {}", args.file.display()))?;
    let length = file.metadata().await?.len();
    let body = reqwest::Body::wrap_stream(file_chunks(file));
    let response = client
        .post_body("/skiff/v1/images/load", body, Some(length))
        .await?;
    let images: Value = read_json(response).await?;
    if connection.output == Output::Json {
        print_json(&images)?;
        return Ok(ExitCode::SUCCESS);
    }
    for image in images["images"].as_array().into_iter().flatten() {
        println!("Loaded image {}", image["digest"].as_str().unwrap_or(""));
        for name in image["names"].as_array().into_iter().flatten() {
            println!("  {}", name.as_str().unwrap_or(""));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn ls(connection: &Connection) -> anyhow::Result<ExitCode> {
    let client = connection.client()?;
    let images: Value = read_json(client.get("/skiff/v1/images").await?).await?;
    if connection.output == Output::Json {
        print_json(&images)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = table(&["NAME", "DIGEST", "SIZE"]);
    for image in images["images"].as_array().into_iter().flatten() {
        let digest = image["digest"].as_str().unwrap_or("");
        let short = digest.get(..19).unwrap_or(digest);
        let size = image["size"].as_u64().unwrap_or(0);
        let names: Vec<&str> = image["names"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let names = if names.is_empty() {
            vec!["<none>"]
        } else {
            names
        };
        for name in names {
            t.add_row(vec![name.to_string(), short.to_string(), human_size(size)]);
        }
    }
    println!("{t}");
    Ok(ExitCode::SUCCESS)
}

/// Reads a native endpoint's JSON answer; an error answer becomes its message.
pub async fn read_json(response: reqwest::Response) -> anyhow::Result<Value> {
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .context("the server's answer is not JSON")?;
    if status.is_success() {
        Ok(body)
    } else {
        anyhow::bail!(
            "{}: {}",
            body["__type"].as_str().unwrap_or("Error"),
            body["message"]
                .as_str()
                .unwrap_or("the server refused the request")
        )
    }
}

fn file_chunks(file: tokio::fs::File) -> impl futures::Stream<Item = std::io::Result<Vec<u8>>> {
    use tokio::io::AsyncReadExt;
    futures::stream::unfold(file, |mut file| async move {
        let mut buf = vec![0u8; 1 << 20];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(buf), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    })
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KB", "MB", "GB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1}{}", UNITS[unit])
}
