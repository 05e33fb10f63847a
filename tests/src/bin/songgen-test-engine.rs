//! A stand-in for `songgen serve --stdio` used by the plugin tests: it speaks the same JSON-lines
//! protocol (`songgen_engine::protocol`) but "generates" short sine stems instantly, so the
//! plugin's engine client, take handling and crash recovery can be tested without model weights.
//!
//! Environment: `SONGGEN_TEST_ENGINE_PIDFILE` (a line with its pid is appended at start),
//! `SONGGEN_TEST_ENGINE_SECONDS` (stem length, default 1.0).

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;

use songgen_engine::protocol::{Event, GenType, Request, Stage, PROTOCOL_VERSION};

const SAMPLE_RATE: u32 = 48_000;

fn emit(ev: &Event) {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, ev).expect("stdout");
    out.write_all(b"\n").expect("stdout");
    out.flush().expect("stdout");
}

fn write_sine(path: &Path, freq: f32, frames: usize) -> hound::Result<()> {
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: SAMPLE_RATE,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let mut w = hound::WavWriter::create(path, spec)?;
    for k in 0..frames {
        let v = 0.5 * (std::f32::consts::TAU * freq * k as f32 / SAMPLE_RATE as f32).sin();
        w.write_sample(v)?;
        w.write_sample(-v)?;
    }
    w.finalize()
}

fn main() {
    if let Some(pidfile) = std::env::var_os("SONGGEN_TEST_ENGINE_PIDFILE") {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(pidfile)
            .expect("pid file");
        writeln!(f, "{}", std::process::id()).expect("pid file");
    }
    let seconds: f32 = std::env::var("SONGGEN_TEST_ENGINE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    emit(&Event::Ready {
        protocol: PROTOCOL_VERSION,
        model: "test-engine".into(),
        device: "cpu".into(),
    });
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let req: Request = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                emit(&Event::Error {
                    id: None,
                    message: format!("bad request: {e}"),
                });
                continue;
            }
        };
        match req {
            Request::Generate { id, job } => {
                emit(&Event::Queued {
                    id: id.clone(),
                    position: 0,
                });
                let seed = job.seed.unwrap_or(42);
                emit(&Event::Started {
                    id: id.clone(),
                    seed,
                    max_frames: None,
                });
                for done in 0..=4 {
                    emit(&Event::Progress {
                        id: id.clone(),
                        stage: Stage::Lm,
                        done,
                        total: 4,
                        rate: None,
                    });
                }
                let frames = (seconds * SAMPLE_RATE as f32) as usize;
                let names: &[(&str, f32)] = match job.gen_type {
                    GenType::Mixed => &[("mixed", 330.0)],
                    GenType::Vocal => &[("vocal", 440.0)],
                    GenType::Bgm => &[("bgm", 220.0)],
                    GenType::Separate => &[("mixed", 330.0), ("vocal", 440.0), ("bgm", 220.0)],
                };
                let mut stems = BTreeMap::new();
                let mut failed = None;
                for (name, freq) in names {
                    let path = job.out_dir.join(format!("{id}-{name}.wav"));
                    if let Err(e) = write_sine(&path, *freq, frames) {
                        failed = Some(format!("writing {}: {e}", path.display()));
                        break;
                    }
                    stems.insert(name.to_string(), path);
                }
                match failed {
                    Some(message) => emit(&Event::Error {
                        id: Some(id),
                        message,
                    }),
                    None => emit(&Event::Done {
                        id,
                        stems,
                        sample_rate: SAMPLE_RATE,
                        frames: frames as u64,
                        seed,
                    }),
                }
            }
            Request::Cancel { id } => emit(&Event::Cancelled { id }),
            Request::Status => emit(&Event::Status {
                running: None,
                queued: vec![],
            }),
            Request::Shutdown => break,
            Request::Auth { .. } => {}
        }
    }
}
