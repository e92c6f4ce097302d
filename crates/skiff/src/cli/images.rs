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
    /// Pull an image from its registry into the server's cache.
    Pull(ReferenceArgs),
    /// Remove an image name; the image goes when its last name does.
    Rm(ReferenceArgs),
    /// Remove every image, blob and layer no name or running task uses.
    Prune,
}

#[derive(Args)]
pub struct LoadArgs {
    /// The tarball.
    file: PathBuf,
}

#[derive(Args)]
pub struct ReferenceArgs {
    /// Image reference, e.g. 127.0.0.1:5000/team/app:1.4 or busybox.
    reference: String,
}

pub async fn run(command: ImageCommand, connection: &Connection) -> anyhow::Result<ExitCode> {
    match command {
        ImageCommand::Load(args) => load(args, connection).await,
        ImageCommand::Ls => ls(connection).await,
        ImageCommand::Pull(args) => pull(args, connection).await,
        ImageCommand::Rm(args) => rm(args, connection).await,
        ImageCommand::Prune => prune(connection).await,
    }
}

/// POSTs a JSON body to a native endpoint.
pub async fn post_json(
    client: &api::client::EcsClient,
    path: &str,
    body: &Value,
) -> anyhow::Result<reqwest::Response> {
    let bytes = serde_json::to_vec(body)?;
    let length = bytes.len() as u64;
    Ok(client
        .post_body(path, reqwest::Body::from(bytes), Some(length))
        .await?)
}

async fn pull(args: ReferenceArgs, connection: &Connection) -> anyhow::Result<ExitCode> {
    let client = connection.client()?;
    let response = post_json(
        &client,
        "/skiff/v1/images/pull",
        &serde_json::json!({"reference": args.reference}),
    )
    .await?;
    if !response.status().is_success() {
        read_json(response).await?;
        return Ok(ExitCode::FAILURE);
    }
    let bars = indicatif::MultiProgress::new();
    let style = indicatif::ProgressStyle::with_template(
        "{prefix:.bold} {bar:30} {bytes}/{total_bytes} {msg}",
    )?;
    let mut layers: std::collections::HashMap<String, indicatif::ProgressBar> = Default::default();
    let mut lines = super::tasks::json_lines(response);
    let mut last = Value::Null;
    while let Some(line) = futures::StreamExt::next(&mut lines).await {
        let line = line?;
        if let Some(p) = line.get("progress") {
            if connection.output == Output::Json {
                continue;
            }
            let digest = p["layer"].as_str().unwrap_or("").to_string();
            let bar = layers.entry(digest.clone()).or_insert_with(|| {
                let bar = bars.add(indicatif::ProgressBar::new(
                    p["total"].as_u64().unwrap_or(0),
                ));
                bar.set_style(style.clone());
                bar.set_prefix(digest.get(7..19).unwrap_or(&digest).to_string());
                bar
            });
            bar.set_position(p["done"].as_u64().unwrap_or(0));
            bar.set_message(p["state"].as_str().unwrap_or("").to_lowercase());
        } else {
            last = line;
        }
    }
    for bar in layers.values() {
        bar.finish();
    }
    if let Some(error) = last.get("error") {
        anyhow::bail!(
            "{}: {}",
            error["__type"].as_str().unwrap_or("Error"),
            error["message"].as_str().unwrap_or("the pull failed")
        );
    }
    let image = last
        .get("image")
        .context("the server ended the pull without a result")?;
    if connection.output == Output::Json {
        print_json(image)?;
    } else {
        println!("Pulled {}", image["digest"].as_str().unwrap_or(""));
    }
    Ok(ExitCode::SUCCESS)
}

async fn rm(args: ReferenceArgs, connection: &Connection) -> anyhow::Result<ExitCode> {
    let client = connection.client()?;
    let out = read_json(
        post_json(
            &client,
            "/skiff/v1/images/remove",
            &serde_json::json!({"reference": args.reference}),
        )
        .await?,
    )
    .await?;
    if connection.output == Output::Json {
        print_json(&out)?;
        return Ok(ExitCode::SUCCESS);
    }
    for name in out["untagged"].as_array().into_iter().flatten() {
        println!("Untagged {}", name.as_str().unwrap_or(""));
    }
    if let Some(deleted) = out["deleted"].as_str() {
        println!("Deleted {deleted}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn prune(connection: &Connection) -> anyhow::Result<ExitCode> {
    let client = connection.client()?;
    let out =
        read_json(post_json(&client, "/skiff/v1/images/prune", &serde_json::json!({})).await?)
            .await?;
    if connection.output == Output::Json {
        print_json(&out)?;
    } else {
        println!(
            "Removed {} image(s), {} blob(s), {} layer(s); freed {}",
            out["imagesRemoved"].as_array().map_or(0, Vec::len),
            out["blobsRemoved"].as_u64().unwrap_or(0),
            out["layersRemoved"].as_u64().unwrap_or(0),
            human_size(out["bytesFreed"].as_u64().unwrap_or(0))
        );
    }
    Ok(ExitCode::SUCCESS)
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
