//! `songgen serve`: the engine service over stdin/stdout, the shared per-user socket, or TCP
//! (protocol: docs/protocol.md; transports: `service::listen`).

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use songgen_engine::paths::{self, ModelPaths};
use songgen_engine::service::listen::{self, Served};
use songgen_engine::service::models;
use songgen_engine::service::server::{Engine, EngineOptions};

use super::device::{self, DTypeChoice, DeviceChoice};
use super::{license, CliResult, Failure, ModelArgs};

#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false, id = "transport")]
pub struct Transport {
    /// Read requests from stdin and write events to stdout.
    #[arg(long)]
    pub stdio: bool,
    /// Be the shared local engine on a per-user Unix socket [default:
    /// $XDG_RUNTIME_DIR/songgen/engine.sock]. A second engine on the same socket exits at once.
    #[arg(long, value_name = "PATH", num_args = 0..=1, default_missing_value = "")]
    pub socket: Option<PathBuf>,
    /// Listen on a TCP address (e.g. 0.0.0.0:7878) for remote clients, which authenticate with
    /// the token of --token-file and name no paths on this machine.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub transport: Transport,
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceChoice,
    #[arg(long, value_enum, default_value = "auto")]
    pub dtype: DTypeChoice,
    #[command(flatten)]
    pub lm: device::LmArgs,
    /// Accept the model weights' licence without asking.
    #[arg(long)]
    pub accept_license: bool,
    /// --socket: seconds the engine stays up with no client and no job [default:
    /// $SONGGEN_ENGINE_GRACE, else 60].
    #[arg(long, value_name = "SECONDS")]
    pub grace: Option<f64>,
    /// --listen: the token clients must send first; created (random, mode 0600) and printed
    /// once when missing [default: <config dir>/engine.token].
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// --listen on a loopback address only: accept connections without a token.
    #[arg(long)]
    pub no_auth: bool,
    /// --listen: the folder remote jobs write to, one folder per job [default: <data dir>/served].
    #[arg(long, value_name = "DIR")]
    pub out_root: Option<PathBuf>,
}

pub fn run(args: Args) -> CliResult {
    license::ensure_accepted(args.accept_license)?;
    let paths = ModelPaths::resolve(args.model.model_dir(), args.model.runtime.as_deref())
        .map_err(Failure::input)?;
    let (dev, dtype) = device::select(args.device, args.dtype)?;
    let load = |options: EngineOptions| -> anyhow::Result<Engine> {
        let model = models::load_with(&paths, &dev, &args.lm.options(dtype))?;
        Ok(Engine::start_with(model, options))
    };
    if let Some(socket) = &args.transport.socket {
        let socket = if socket.as_os_str().is_empty() {
            paths::engine_socket()
        } else {
            socket.clone()
        };
        let grace = args.grace.unwrap_or_else(|| {
            std::env::var("SONGGEN_ENGINE_GRACE")
                .ok()
                .and_then(|g| g.parse().ok())
                .unwrap_or(60.0)
        });
        return serve_socket(&socket, grace, || load(EngineOptions::default()));
    }
    let Some(addr) = &args.transport.listen else {
        let engine = load(EngineOptions::default()).map_err(Failure::run)?;
        listen::serve_stdio(&engine);
        return Ok(());
    };
    let listener = TcpListener::bind(addr)
        .map_err(|e| Failure::input(anyhow!("cannot listen on {addr}: {e}")))?;
    let local = listener.local_addr().map_err(Failure::run)?;
    let token = if args.no_auth {
        if !listen::is_loopback(&local) {
            return Err(Failure::input(anyhow!(
                "--no-auth is refused on {local}: without a token anyone on the network could use this engine (it is allowed on 127.0.0.1 / ::1 only)"
            )));
        }
        None
    } else {
        let file = args
            .token_file
            .clone()
            .unwrap_or_else(paths::default_token_file);
        let (token, created) = listen::load_or_create_token(&file).map_err(Failure::input)?;
        if created {
            eprintln!(
                "songgen: created the token file {} (mode 0600). Clients authenticate with:\n  {token}",
                file.display()
            );
        } else {
            eprintln!(
                "songgen: clients authenticate with the token in {}",
                file.display()
            );
        }
        Some(token)
    };
    let out_root = args
        .out_root
        .clone()
        .unwrap_or_else(|| paths::songgen_home().join("served"));
    let engine = Arc::new(
        load(EngineOptions {
            out_root: Some(out_root),
            ..EngineOptions::default()
        })
        .map_err(Failure::run)?,
    );
    listen::serve_tcp(&engine, listener, token).map_err(Failure::run)?;
    engine.join();
    Ok(())
}

#[cfg(unix)]
fn serve_socket(
    socket: &std::path::Path,
    grace: f64,
    load: impl FnOnce() -> anyhow::Result<Engine>,
) -> CliResult {
    let grace = Duration::from_secs_f64(grace.max(0.0));
    match listen::serve_socket(socket, grace, load).map_err(Failure::run)? {
        Served::Done => Ok(()),
        Served::AlreadyRunning => {
            eprintln!("songgen: an engine already serves {}", socket.display());
            Ok(())
        }
    }
}

#[cfg(not(unix))]
fn serve_socket(
    _socket: &std::path::Path,
    _grace: f64,
    _load: impl FnOnce() -> anyhow::Result<Engine>,
) -> CliResult {
    Err(Failure::input(anyhow!(
        "--socket needs Unix sockets; use --stdio or --listen 127.0.0.1:PORT"
    )))
}
