//! `songgen serve`: the engine service over stdin/stdout or TCP (protocol: docs/protocol.md).

use std::io::BufReader;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use songgen_engine::paths::ModelPaths;
use songgen_engine::service::models;
use songgen_engine::service::server::{Engine, EventSink};

use super::device::{self, DTypeChoice, DeviceChoice};
use super::{license, CliResult, Failure, ModelArgs};

#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false, id = "transport")]
pub struct Transport {
    /// Read requests from stdin and write events to stdout.
    #[arg(long)]
    pub stdio: bool,
    /// Listen on a TCP address (e.g. 127.0.0.1:7878); each connection speaks the same protocol.
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
}

pub fn run(args: Args) -> CliResult {
    license::ensure_accepted(args.accept_license)?;
    let paths = ModelPaths::resolve(args.model.model_dir(), args.model.runtime.as_deref())
        .map_err(Failure::input)?;
    let (dev, dtype) = device::select(args.device, args.dtype)?;
    let listener = match &args.transport.listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .map_err(|e| Failure::input(anyhow!("cannot listen on {addr}: {e}")))?,
        ),
        None => None,
    };
    let model = models::load_with(&paths, &dev, &args.lm.options(dtype)).map_err(Failure::run)?;
    let engine = Arc::new(Engine::start(model));
    match listener {
        None => {
            let stdin = std::io::stdin();
            engine.serve_connection(stdin.lock(), EventSink::new(std::io::stdout()));
        }
        Some(listener) => serve_tcp(&engine, listener)?,
    }
    // Input ended or shutdown: queued jobs finish (or were cancelled by the shutdown).
    engine.join();
    Ok(())
}

/// Accepts connections until a `shutdown` request; each gets its own reader thread.
fn serve_tcp(engine: &Arc<Engine>, listener: TcpListener) -> CliResult {
    let addr = listener.local_addr().map_err(Failure::run)?;
    eprintln!("songgen: listening on {addr}");
    listener.set_nonblocking(true).map_err(Failure::run)?;
    let mut connections = Vec::new();
    while !engine.is_shutting_down() {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                let Ok(write) = stream.try_clone() else {
                    continue;
                };
                let engine = engine.clone();
                connections.push(std::thread::spawn(move || {
                    engine.serve_connection(BufReader::new(stream), EventSink::new(write));
                }));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(Failure::run(anyhow!("accept on {addr}: {e}"))),
        }
        connections.retain(|c| !c.is_finished());
    }
    // Open connections end when their clients hang up; the engine is not waited on for them.
    for c in connections {
        if c.is_finished() {
            let _ = c.join();
        }
    }
    Ok(())
}
