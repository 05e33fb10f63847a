//! Renders a long random token sequence with the decoder fixtures' tiny random-weight models and
//! reports the output length, wall time and peak memory (VmHWM).
//!
//! `cargo run -p songgen-engine --example render_long -- [T] [--prompt] [--fixtures DIR]`

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use songgen_engine::parity::decoder::load_renderer;
use songgen_engine::parity::Manifest;
use songgen_engine::progress::{Progress, Stage};
use songgen_engine::protocol::GenType;
use songgen_engine::render::{PromptSet, RenderPrompt};

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() -> Result<()> {
    let mut frames = 6750usize;
    let mut prompt = false;
    let mut dir = PathBuf::from("tests/fixtures/parity/decoder");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--prompt" => prompt = true,
            "--fixtures" => dir = PathBuf::from(args.next().context("--fixtures needs a DIR")?),
            n => {
                frames = n
                    .parse()
                    .with_context(|| format!("bad frame count {n:?}"))?
            }
        }
    }
    let device = Device::Cpu;
    let manifest = Manifest::read(&dir)?;
    let renderer = load_renderer(&dir, &manifest, &device)?;
    let cfg = renderer.config();
    let size = cfg.flow.codebook_size as i64;
    // Deterministic pseudo-random codes over the whole codebook.
    let codes: Vec<i64> = (0..3 * frames as i64)
        .map(|i| (i * 2_654_435_761) % size)
        .collect();
    let tokens = Tensor::from_vec(codes, (1, 3, frames), &device)?;
    let prompts = if prompt {
        let w = &cfg.window;
        let pc = |salt: i64| -> Result<Tensor> {
            let v: Vec<i64> = (0..w.prompt_code_frames as i64)
                .map(|i| (i * 40_503 + salt) % size)
                .collect();
            Ok(Tensor::from_vec(v, (1, 1, w.prompt_code_frames), &device)?)
        };
        let p = RenderPrompt {
            latent: Tensor::randn(
                0f32,
                1.,
                (1, cfg.flow.latent_dim, w.prompt_latent_frames),
                &device,
            )?,
            codes_vocal: pc(1)?,
            codes_bgm: pc(2)?,
        };
        PromptSet {
            mixed: Some(p),
            ..PromptSet::none()
        }
    } else {
        PromptSet::none()
    };
    let started = Instant::now();
    let mut last = (0, 0);
    let stems = renderer.render(&tokens, &prompts, GenType::Mixed, 7, &mut |p: Progress| {
        match p.stage {
            Stage::Render => last.0 = p.done,
            _ => last.1 = p.done,
        }
        ControlFlow::Continue(())
    })?;
    let secs = started.elapsed().as_secs_f64();
    let expected = (frames as f64 / 100.0 * 4.0 * 48_000.0) as usize;
    let audio = stems.audio[0].1.dims().to_vec();
    if stems.num_samples != expected || audio != [2, expected] {
        bail!(
            "output {audio:?} / {} samples, expected [2, {expected}]",
            stems.num_samples
        );
    }
    println!(
        "frames={frames} prompt={prompt} samples={} ({:.1} s of audio) euler_steps={} vae_chunks={} wall={secs:.1}s peak_rss={:.0}MiB",
        stems.num_samples,
        stems.num_samples as f64 / 48_000.0,
        last.0,
        last.1,
        peak_rss_mib().unwrap_or(f64::NAN)
    );
    Ok(())
}
