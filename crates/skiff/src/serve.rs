//! `skiff server`: the control plane, a local agent and the API, wired together in one
//! process with SQLite state in the state directory.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use api::credentials::{self, Credentials};
use clap::Args;
use ipnet::Ipv4Net;
use model::arn::Scope;
use tokio::sync::mpsc;

#[derive(Args)]
pub struct ServerArgs {
    /// Address of the ECS API.
    #[arg(long, default_value = "127.0.0.1:8080", env = "SKIFF_LISTEN")]
    listen: SocketAddr,
    /// Address load balancer listeners bind [default: the IP of --listen].
    #[arg(long, value_name = "IP")]
    load_balancer_address: Option<IpAddr>,
    /// State directory [default: /var/lib/skiff as root, the XDG data dir otherwise].
    #[arg(long, env = "SKIFF_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Subnet task addresses come from; the first address is the bridge's.
    #[arg(long, default_value = "10.213.0.0/16")]
    subnet: Ipv4Net,
    /// Name of the host bridge tasks attach to.
    #[arg(long, default_value = "skiff0")]
    bridge: String,
    /// Host ports that bridge-mode port mappings with hostPort 0 are published on.
    #[arg(long, value_name = "LOW-HIGH", default_value_t = control::DEFAULT_HOST_PORT_RANGE)]
    host_port_range: control::HostPortRange,
    /// Region in ARNs and signatures.
    #[arg(long, default_value = "us-east-1", env = "AWS_REGION")]
    region: String,
    /// Account id in ARNs.
    #[arg(long, default_value = "000000000000")]
    account: String,
    /// The OCI runtime binary.
    #[arg(long, default_value = "/usr/sbin/runc")]
    runtime: PathBuf,
    /// How long stopped tasks stay describable, in seconds.
    #[arg(long, default_value_t = 3600)]
    stopped_task_retention: u64,
    /// A registry (HOST:PORT, as written in image references) reached over plain HTTP;
    /// repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    insecure_registries: Vec<String>,
    /// Extra CA certificates (PEM) trusted for registries, beside the system's.
    #[arg(long, value_name = "FILE")]
    registry_ca: Option<PathBuf>,
    /// Keep the image cache under this size (e.g. 20G, 500M) by evicting the least
    /// recently used images no task uses.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    image_cache_size: Option<u64>,
}

/// Parses `20G`, `500M`, `1024K` or a plain number of bytes.
fn parse_size(value: &str) -> Result<u64, String> {
    let value = value.trim();
    let (number, unit) = match value.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => value.split_at(i),
        None => (value, ""),
    };
    let multiplier: u64 = match unit.to_ascii_uppercase().trim_end_matches(['B', 'I']) {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => {
            return Err(format!(
                "'{value}' is not a size: use a number with K, M, G or T"
            ))
        }
    };
    number
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("'{value}' is not a size: use a number with K, M, G or T"))
}

/// The default state directory: /var/lib/skiff for root, the XDG data dir otherwise.
pub fn default_state_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/skiff");
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data.join("skiff")
}

pub async fn run(args: ServerArgs) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,netlink_packet_route=error,hickory_server=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let state_dir = args.state_dir.clone().unwrap_or_else(default_state_dir);
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("cannot create the state directory {}", state_dir.display()))?;
    let admin = admin_credentials(&state_dir)?;

    let store: Arc<dyn store::Store> =
        Arc::new(store::SqliteStore::open(&state_dir.join("state.db"))?);
    let scope = Scope {
        region: args.region.clone(),
        account: args.account.clone(),
    };
    let balancer = lb::Balancer::start(
        store.clone(),
        scope.clone(),
        args.load_balancer_address.unwrap_or(args.listen.ip()),
    )
    .await
    .context("cannot start the load balancer")?;
    let control = control::Control::new(
        store,
        control::ControlConfig {
            scope,
            subnet: args.subnet,
            stopped_task_retention: Duration::from_secs(args.stopped_task_retention),
            host_port_range: args.host_port_range,
        },
    )
    .await?;
    control.attach_balancer(balancer.clone());

    let (to_agent, from_control) = mpsc::unbounded_channel();
    let (to_control, from_agent) = mpsc::unbounded_channel();
    control.attach_agent(to_agent, from_agent);
    let mut driver = sandbox::DriverConfig::new(state_dir.join("sandboxes"))?;
    driver.runtime = args.runtime.clone();
    let agent = agent::Agent::start(
        agent::AgentConfig {
            agent_id: "local".into(),
            state_dir: state_dir.join("agent"),
            bridge: net::BridgeConfig {
                name: args.bridge.clone(),
                subnet: args.subnet,
                ..net::BridgeConfig::default()
            },
            driver,
            images: agent::ImageSettings {
                insecure_registries: args.insecure_registries.clone(),
                registry_ca: args.registry_ca.clone(),
                cache_max_bytes: args.image_cache_size,
            },
        },
        to_control,
    )
    .await
    .context("cannot start the local agent")?;
    tokio::spawn(agent.clone().serve(from_control));
    ensure_default_cluster(&control).await?;

    let keys = api::server::Keys::single(admin.clone());
    let app = api::server::router(api::server::ApiState {
        control,
        agent,
        balancer: balancer.clone(),
        keys,
        region: args.region.clone(),
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}: is another server using it? pick another with --listen",
                args.listen
            )
        })?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    println!("Skiff is listening on {endpoint}");
    println!("Use it with the AWS CLI:");
    println!(
        "  export AWS_SHARED_CREDENTIALS_FILE={} AWS_PROFILE=skiff AWS_REGION={region} AWS_DEFAULT_REGION={region}",
        state_dir.join(credentials::FALLBACK_FILE_NAME).display(),
        region = args.region
    );
    println!("  aws --endpoint-url {endpoint} ecs list-clusters");
    tracing::info!(endpoint = %endpoint, state_dir = %state_dir.display(), "skiff server started");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("the API server failed")?;
    balancer.shutdown().await;
    tracing::info!("skiff server stopped; running tasks keep running under their supervisors");
    Ok(ExitCode::SUCCESS)
}

/// Loads the admin key, creating it (and the credentials file) on first start.
fn admin_credentials(state_dir: &Path) -> anyhow::Result<Credentials> {
    let path = state_dir.join(credentials::FALLBACK_FILE_NAME);
    if let Some(existing) = credentials::read_profile(&path, credentials::FALLBACK_PROFILE)? {
        return Ok(existing);
    }
    let fresh = Credentials::generate();
    credentials::write_credentials_file(&path, credentials::FALLBACK_PROFILE, &fresh)?;
    println!(
        "Created the admin access key {} in {}",
        fresh.access_key_id,
        path.display()
    );
    Ok(fresh)
}

async fn ensure_default_cluster(control: &control::Control) -> anyhow::Result<()> {
    let request = model::ops::Request::CreateCluster(model::ops::CreateClusterRequest {
        cluster_name: Some("default".into()),
        ..Default::default()
    });
    control
        .handle(request)
        .await
        .map_err(|e| anyhow::anyhow!("cannot create the default cluster: {e}"))?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("20G").unwrap(), 20 << 30);
        assert_eq!(parse_size("500MiB").unwrap(), 500 << 20);
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5X").is_err());
    }
}
