//! CPU cost of encoding one 10 s style prompt at the released model widths (random weights):
//! HTDemucs calls, MusicFM passes (front end + per-layer), the VQ and the VAE encoder, timed
//! once each, and the total an encode adds up to. Times are CPU time / threads ("alone"), i.e. the
//! wall time on an otherwise idle machine.
//!
//! `cargo run -p songgen-engine --example prompt_cost` (dev profile: dependencies at
//! opt-level 2, this crate at 0, as the tests run).

use std::time::Instant;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use songgen_engine::prompt::demucs::apply::ApplyOptions;
use songgen_engine::prompt::demucs::{HtDemucs, HtDemucsConfig};
use songgen_engine::prompt::musicfm::{MusicFm, MusicFmConfig};
use songgen_engine::prompt::vae_encoder::OobleckEncoder;
use songgen_engine::prompt::vq::VqEncoder;
use songgen_engine::render::vae::VaeConfig;

/// Every tensor is `N(0, 0.02²)` of the requested shape; BatchNorm variances are 1 so the
/// arithmetic stays finite.
struct RandomWeights;

impl SimpleBackend for RandomWeights {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _init: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if name.ends_with("running_var") || name.ends_with("weight_g") {
            return Tensor::ones(shape, dtype, dev);
        }
        Tensor::randn(0f32, 0.02, shape, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("{name}: shape unknown")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        // Let the rotary table be computed rather than read.
        !name.ends_with("inv_freq")
    }
}

fn vb() -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(RandomWeights), DType::F32, Device::Cpu)
}

/// User + system CPU seconds of this process so far (Linux `/proc/self/stat`), 0 elsewhere.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Runs `f` once; prints wall time and CPU time. Returns the CPU time divided by the thread
/// count: the wall time the stage takes when it has the cores to itself (the dev machine is
/// shared, so plain wall time overstates it).
fn timed<T>(what: &str, f: impl FnOnce() -> T) -> (T, f64) {
    let (t, c) = (Instant::now(), cpu_seconds());
    let out = f();
    let wall = t.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - c;
    let alone = cpu / candle_core::utils::get_num_threads() as f64;
    println!("{what:<36} wall {wall:>7.2} s  cpu {cpu:>7.2} s  alone {alone:>7.2} s");
    (out, alone)
}

fn main() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    println!("threads: {}", candle_core::utils::get_num_threads());

    // HTDemucs: a 10 s clip at 44.1 kHz takes ceil((441000 + 22050 − shift) / 257985) = 2 calls.
    let dcfg = HtDemucsConfig::real();
    let demucs = HtDemucs::load(&dcfg, vb())?;
    let seg = demucs.training_length();
    let mix = Tensor::randn(0f32, 0.3, (1, 2, seg), &dev)?;
    let (_, demucs_s) = timed("HTDemucs, one 7.8 s segment", || demucs.forward(&mix));
    let calls = demucs.chunks(
        441_000,
        ApplyOptions {
            shift_offset: 11025,
            overlap: 0.25,
        },
    );

    // MusicFM on one 40 s segment (the tiled 10 s clip), per stage.
    let mcfg = MusicFmConfig::real();
    let musicfm = MusicFm::load(&mcfg, 7, vb().pp("bestrq.model"))?;
    let wave = Tensor::randn(0f32, 0.3, (1, 960_000), &dev)?;
    let (mel, mel_s) = timed("MusicFM mel front end, 40 s", || {
        musicfm.mel().forward(&wave)
    });
    let mel = mel?;
    let (x, conv_s) = timed("MusicFM conv subsampling", || {
        musicfm.subsampling().forward(&mel)
    });
    let mut x = x?;
    let (cos, sin) = musicfm.rotary().tables(x.dim(1)?)?;
    let mut layer_s = 0.0;
    for i in 0..7 {
        let layer = musicfm.layer(i).expect("loaded");
        let (y, s) = timed(&format!("MusicFM conformer layer {i}"), || {
            layer.forward(&x, &cos, &sin)
        });
        x = y?;
        layer_s += s;
    }
    let per_layer = layer_s / 7.0;

    let vq = VqEncoder::load(1024, 16384, 32, vb())?;
    let (_, vq_s) = timed("VQ encode, 1000 frames", || vq.encode(&x.transpose(1, 2)?));

    // VAE encoder on the 10 s prompt.
    let vae = OobleckEncoder::load(vb().pp("encoder"), &VaeConfig::default())?;
    let audio = Tensor::randn(0f32, 0.3, (1, 2, 480_000), &dev)?;
    let (_, vae_s) = timed("VAE encoder, 10 s", || vae.encode(&audio));

    // One encode: Demucs calls, three MusicFM passes (layers 6, 7, 3), three VQs, one VAE.
    let front = mel_s + conv_s;
    let musicfm_total = 3.0 * front + (6.0 + 7.0 + 3.0) * per_layer;
    let total = calls as f64 * demucs_s + musicfm_total + 3.0 * vq_s + vae_s;
    println!("---");
    println!(
        "HTDemucs: {calls} calls × {demucs_s:.1} s = {:.1} s",
        calls as f64 * demucs_s
    );
    println!(
        "MusicFM: 3 × {front:.1} s front end + 16 layers × {per_layer:.1} s = {musicfm_total:.1} s"
    );
    println!("VQ: 3 × {vq_s:.2} s; VAE encoder: {vae_s:.1} s");
    println!("one 10 s prompt: {total:.0} s");
    Ok(())
}
