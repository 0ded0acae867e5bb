//! `tollgate`: one binary for every role. This file only parses the command line and wires the
//! crates together; the logic lives in `tollgate-controller` (load, compile, report) and
//! `tollgate-proxy` (serve).

mod controller;
mod echo;
mod proxy_cmd;
mod serve;
mod standalone;
mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// mimalloc: the proxy allocates and frees many small buffers per request; glibc's allocator
/// showed up at several percent of CPU in profiles.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tollgate: an API gateway for Kubernetes.
#[derive(Parser, Debug)]
#[command(name = "tollgate", version, about, long_about = None)]
struct Cli {
    /// Log format for the program's own logs on stderr (`text` or `json`). Access logs always go
    /// to stdout as JSON lines.
    #[arg(long, global = true, default_value = "text", env = "TOLLGATE_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the APIs declared in a folder of manifests, hot-reloaded on change.
    Standalone(StandaloneArgs),
    /// Compile a folder of manifests offline and print every problem (exit 1 if any object is
    /// rejected).
    Validate {
        /// Folder of `*.yaml` / `*.yml` manifests (searched recursively).
        dir: PathBuf,
        /// Print the result as JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Also fail (exit 1) when any diagnostic is an error, not only when an object is
        /// rejected: an unresolved reference (a missing Service or Secret, a ServiceExport that
        /// does not allow the API) leaves a Route unserved. For folders that hold every object
        /// the manifests refer to.
        #[arg(long)]
        strict: bool,
    },
    /// Run the operator: watch the Kubernetes API (or a folder), compile, write status (leader
    /// only), and stream snapshots to the proxies that subscribe.
    Controller(ControllerArgs),
    /// Serve traffic with the configuration streamed by a controller.
    Proxy(ProxyArgs),
    /// Print the CustomResourceDefinitions as YAML.
    Crds,
    /// Run a small echo backend (answers every request with JSON describing it), for trying
    /// Tollgate and for end-to-end tests.
    Echo {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9090")]
        listen: SocketAddr,
        /// Name reported in every answer (`server` field), to tell backends apart.
        #[arg(long, default_value = "echo")]
        name: String,
        /// Answer this percentage of requests (spread evenly) with 500, to play a failing release.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
        fail_percent: u8,
    },
}

#[derive(Args, Debug, Clone)]
struct StandaloneArgs {
    /// Folder of `*.yaml` / `*.yml` manifests (multi-document, searched recursively).
    #[arg(long)]
    manifests: PathBuf,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Args, Debug, Clone)]
struct ControllerArgs {
    /// Where proxies subscribe (HTTP/2 over TLS).
    #[arg(long, default_value = "0.0.0.0:9443")]
    serve: SocketAddr,
    /// Admin listener: /healthz, /readyz, /metrics, /config.
    #[arg(long, default_value = "127.0.0.1:9902")]
    admin: SocketAddr,
    /// Read objects from this folder instead of the Kubernetes API (no status writes, no leader
    /// election; proxies authenticate with --proxy-token-file).
    #[arg(long)]
    manifests: Option<PathBuf>,
    /// Namespaces to watch, comma-separated. Default: all.
    #[arg(long, value_delimiter = ',', env = "TOLLGATE_NAMESPACES")]
    namespaces: Vec<String>,
    /// PEM certificate chain of the subscription server.
    #[arg(long, env = "TOLLGATE_TLS_CERT")]
    tls_cert: PathBuf,
    /// PEM private key of the subscription server.
    #[arg(long, env = "TOLLGATE_TLS_KEY")]
    tls_key: PathBuf,
    /// File holding a shared bearer token proxies may present (at least 16 characters).
    #[arg(long, env = "TOLLGATE_PROXY_TOKEN_FILE")]
    proxy_token_file: Option<PathBuf>,
    /// ServiceAccounts (NAMESPACE/NAME, comma-separated) whose projected tokens are accepted,
    /// checked with a TokenReview.
    #[arg(long, value_delimiter = ',', env = "TOLLGATE_PROXY_SERVICE_ACCOUNTS")]
    proxy_service_accounts: Vec<String>,
    /// Audience the proxies' projected tokens must be bound to.
    #[arg(long, default_value = "tollgate-controller")]
    proxy_token_audience: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "tollgate-controller")]
    lease_name: String,
    /// Namespace of the Lease. Default: the client's namespace (in a pod: its own).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// This replica's name in the Lease and in Events. Default: the host name.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Quiet period before a rebuild.
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    debounce: Duration,
    /// Longest wait before a rebuild while changes keep coming.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    max_delay: Duration,
    /// How often the --manifests folder is checked for changes.
    #[arg(long, default_value = "250ms", value_parser = parse_duration)]
    reload_interval: Duration,
    /// Keepalive interval on idle subscriptions.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    keepalive: Duration,
}

#[derive(Args, Debug, Clone)]
struct ProxyArgs {
    /// The controller's subscription URL (`https://HOST:PORT`).
    #[arg(long, env = "TOLLGATE_CONTROLLER")]
    controller: String,
    /// The fleet whose APIs this proxy serves (GatewayAPI `spec.fleet`).
    #[arg(long, default_value = "default", env = "TOLLGATE_FLEET")]
    fleet: String,
    /// PEM CA bundle the controller's certificate must chain to. Default: public web roots.
    #[arg(long, env = "TOLLGATE_CONTROLLER_CA")]
    controller_ca: Option<PathBuf>,
    /// File with the bearer token presented to the controller (a projected ServiceAccount token
    /// or the shared token); re-read on every connection.
    #[arg(long, env = "TOLLGATE_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// This proxy's name in the controller's logs and metrics. Default: the host name.
    #[arg(long, env = "POD_NAME")]
    name: Option<String>,
    /// Reconnect when nothing arrived from the controller for this long (it sends keepalives).
    #[arg(long, default_value = "45s", value_parser = parse_duration)]
    controller_idle_timeout: Duration,
    #[command(flatten)]
    serve: ServeArgs,
}

/// Settings shared by every process that serves traffic.
#[derive(Args, Debug, Clone)]
struct ServeArgs {
    /// Plain HTTP listener (HTTP/1.1 and h2c).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// TLS listener (HTTP/1.1 and HTTP/2 by ALPN); certificates come from the GatewayAPIs'
    /// `tls.certificateRefs`, chosen by SNI.
    #[arg(long)]
    listen_tls: Option<SocketAddr>,
    /// Admin listener: /healthz, /readyz (ready once a configuration is loaded), /metrics,
    /// /config, /usage.
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin: SocketAddr,
    /// Where access-log lines go: `stdout` or `off`.
    #[arg(long, default_value = "stdout")]
    access_log: AccessLogTarget,
    /// Extra PEM CA bundle trusted for HTTPS upstreams (besides the public web roots).
    #[arg(long)]
    upstream_ca: Option<PathBuf>,
    /// Largest request head accepted (bytes); larger gets 431.
    #[arg(long, default_value_t = 64 * 1024)]
    max_header_bytes: usize,
    /// Time a client has to send a request head.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    header_read_timeout: Duration,
    /// Time in-flight requests get to finish after SIGTERM/SIGINT.
    #[arg(long, default_value = "25s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// How often the manifest folder is checked for changes.
    #[arg(long, default_value = "250ms", value_parser = parse_duration)]
    reload_interval: Duration,
    /// Worker threads (default: one per CPU).
    #[arg(long)]
    workers: Option<usize>,
    /// Redis for fleet-wide counters (`redis://host:6379/0`): `scope: global` throttles and
    /// usage-plan quotas. Without it, throttles count per process and quotas live in
    /// `--state-dir` (or in memory).
    #[arg(long, env = "TOLLGATE_REDIS")]
    redis: Option<String>,
    /// Directory for durable local state (usage-plan quota counts) when no `--redis` is given.
    #[arg(long, env = "TOLLGATE_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Listener of the WebSocket @connections management API (`POST/GET/DELETE
    /// /@connections/{id}`, SigV4-signed). Keep it reachable from inside the cluster only.
    #[arg(long)]
    connections_listen: Option<SocketAddr>,
    /// The address other replicas reach this one's @connections listener at (connection ids
    /// carry it, so a call reaching another replica is forwarded here). Default: the listen
    /// address (loopback when it listens on every interface; set this, e.g. to the pod IP).
    #[arg(long, env = "TOLLGATE_CONNECTIONS_ADVERTISE")]
    connections_advertise: Option<SocketAddr>,
}

impl ServeArgs {
    /// Connection-level settings of the traffic listeners.
    fn server_settings(&self) -> tollgate_proxy::ServerSettings {
        tollgate_proxy::ServerSettings {
            max_header_bytes: self.max_header_bytes,
            header_read_timeout: self.header_read_timeout,
            drain_timeout: self.drain_timeout,
            ..tollgate_proxy::ServerSettings::default()
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
enum AccessLogTarget {
    Stdout,
    Off,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    tollgate_crds::Duration::from(text.to_string()).parse().map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    if rustls::crypto::ring::default_provider().install_default().is_err() {
        tracing::debug!("a rustls crypto provider was already installed");
    }
    match cli.command {
        Command::Crds => {
            if print_stdout(&tollgate_crds::crds_yaml()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Validate { dir, json, strict } => validate::run(&dir, json, strict),
        Command::Echo { listen, name, fail_percent } => {
            match build_tokio(None).map(|rt| rt.block_on(echo::run(listen, name, fail_percent))) {
                Ok(Ok(())) => ExitCode::SUCCESS,
                Ok(Err(error)) => {
                    eprintln!("tollgate: {error:#}");
                    ExitCode::FAILURE
                }
                Err(error) => {
                    eprintln!("tollgate: cannot start the async runtime: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Controller(args) => run_async(None, controller::run(args)),
        Command::Proxy(args) => {
            let workers = args.serve.workers;
            run_async(workers, proxy_cmd::run(args))
        }
        Command::Standalone(args) => {
            let runtime = match build_tokio(args.serve.workers) {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("tollgate: cannot start the async runtime: {error}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(standalone::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("tollgate: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn run_async(
    workers: Option<usize>,
    task: impl std::future::Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    let runtime = match build_tokio(workers) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tollgate: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tollgate: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes `text` to standard output; false when that failed (reported on standard error). A reader
/// that stops early (`tollgate crds | head`) is not a failure.
pub(crate) fn print_stdout(text: &str) -> bool {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => true,
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => true,
        Err(error) => {
            eprintln!("tollgate: cannot write to standard output: {error}");
            false
        }
    }
}

fn build_tokio(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    if workers == Some(1) {
        return tokio::runtime::Builder::new_current_thread().enable_all().build();
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(workers) = workers {
        builder.worker_threads(workers.max(1));
    }
    builder.build()
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

#[cfg(test)]
mod cli_tests {
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        // Catches duplicate flags between flattened argument groups, bad defaults, and so on.
        super::Cli::command().debug_assert();
    }
}
