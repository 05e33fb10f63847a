//! A stand-in for `songgen serve` used by the plugin tests: the real service
//! (`songgen_engine::service`: queues, clients, the shared socket, TCP with a token) around a
//! model that "generates" sine stems at once (`service::sine::SineModel`), so the plugin's
//! engine client, take handling and crash recovery are tested without weights.
//!
//! `songgen-test-engine serve --stdio | --socket PATH | --listen ADDR [--token-file F]`; other
//! arguments (those the plugin passes on, e.g. `--model`) are ignored.
//!
//! Environment: `SONGGEN_TEST_ENGINE_PIDFILE` (a line with its pid is appended once it serves:
//! for `--socket`, once it holds the socket's lock), `SONGGEN_TEST_ENGINE_SECONDS` (stem length,
//! default 1.0), `SONGGEN_TEST_ENGINE_STEP_MS` (time per LM step, 4 steps, default 0),
//! `SONGGEN_TEST_ENGINE_LOG` (a line per job start: the first word of its lyrics),
//! `SONGGEN_ENGINE_GRACE` (seconds a socket engine stays up idle, default 60).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use songgen_engine::service::listen;
use songgen_engine::service::server::{Engine, EngineOptions};
use songgen_engine::service::sine::SineModel;

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn start(options: EngineOptions) -> Engine {
    if let Some(pidfile) = std::env::var_os("SONGGEN_TEST_ENGINE_PIDFILE") {
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&pidfile)
            .and_then(|mut f| writeln!(f, "{}", std::process::id()));
        if let Err(e) = written {
            eprintln!(
                "songgen-test-engine: pid file {}: {e}",
                pidfile.to_string_lossy()
            );
        }
    }
    let model = SineModel {
        seconds: env_f64("SONGGEN_TEST_ENGINE_SECONDS", 1.0),
        steps: 4,
        step_time: Duration::from_secs_f64(env_f64("SONGGEN_TEST_ENGINE_STEP_MS", 0.0) / 1000.0),
        log: std::env::var_os("SONGGEN_TEST_ENGINE_LOG").map(PathBuf::from),
    };
    Engine::start_with(Box::new(model), options)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if args.first().map(String::as_str) != Some("serve") {
        eprintln!("usage: songgen-test-engine serve --stdio | --socket PATH | --listen ADDR");
        std::process::exit(2);
    }
    if args.iter().any(|a| a == "--socket") {
        let socket = value("--socket")
            .filter(|p| !p.starts_with("--"))
            .map(PathBuf::from)
            .unwrap_or_else(songgen_engine::paths::engine_socket);
        let grace = Duration::from_secs_f64(env_f64("SONGGEN_ENGINE_GRACE", 60.0));
        match listen::serve_socket(&socket, grace, || Ok(start(EngineOptions::default()))) {
            Ok(listen::Served::Done) => {}
            Ok(listen::Served::AlreadyRunning) => {
                eprintln!("songgen: an engine already serves {}", socket.display())
            }
            Err(e) => {
                eprintln!("songgen: {e:#}");
                std::process::exit(1);
            }
        }
    } else if let Some(addr) = value("--listen") {
        let listener = std::net::TcpListener::bind(&addr).expect("bind");
        let token = value("--token-file").map(|f| {
            listen::load_or_create_token(std::path::Path::new(&f))
                .expect("token file")
                .0
        });
        let out_root = value("--out-root").map(PathBuf::from);
        let engine = Arc::new(start(EngineOptions {
            out_root,
            ..EngineOptions::default()
        }));
        if let Err(e) = listen::serve_tcp(&engine, listener, token) {
            eprintln!("songgen: {e:#}");
            std::process::exit(1);
        }
        engine.join();
    } else {
        let engine = start(EngineOptions::default());
        listen::serve_stdio(&engine);
    }
}
