//! A stand-in [`SongModel`] for tests of the service and the plugin (cargo feature `testing`):
//! the LM "steps" report progress and can be cancelled, and every stem renders as a sine (mixed
//! 330 Hz, vocal 440 Hz, bgm 220 Hz), so the real service (queues, clients, transports,
//! streaming) runs without weights. `songgen-test-engine` serves it.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};

use crate::io::audio::{self, Audio};
use crate::progress::{report, Progress, ProgressFn};
use crate::prompt::JobPrompt;
use crate::protocol::{GenType, SamplingOptions, Stage, Stem};
use crate::render::PromptSet;
use crate::service::pipeline::{LmInput, SongModel, FRAME_RATE};

pub struct SineModel {
    /// Length of every stem in seconds.
    pub seconds: f64,
    /// LM steps per job and the time each takes.
    pub steps: u64,
    pub step_time: Duration,
    /// When set, a line per job is appended at its start: the first word of its lyrics after
    /// the section tags (tests tell jobs apart by their lyrics).
    pub log: Option<PathBuf>,
}

impl SineModel {
    fn frames(&self) -> usize {
        ((self.seconds * f64::from(FRAME_RATE)).ceil() as usize).max(1)
    }

    fn samples(&self) -> usize {
        (self.seconds * f64::from(audio::SAMPLE_RATE)).round() as usize
    }
}

fn first_word(lyrics: &str) -> String {
    lyrics
        .split(|c: char| c.is_whitespace() || "[];.,".contains(c))
        .filter(|w| !w.is_empty())
        .find(|w| !w.contains('-') && !["verse", "chorus", "bridge", "intro", "outro"].contains(w))
        .unwrap_or("")
        .to_owned()
}

impl SongModel for SineModel {
    fn name(&self) -> String {
        "test-engine".into()
    }
    fn device(&self) -> String {
        "cpu".into()
    }
    fn encode_prompt(
        &mut self,
        _audio: &Audio,
        _gen_type: GenType,
        _seed: u64,
        _progress: &mut ProgressFn<'_>,
    ) -> anyhow::Result<JobPrompt> {
        Ok(JobPrompt::tokens_only(Tensor::zeros(
            (1, 3, 250),
            DType::I64,
            &Device::Cpu,
        )?))
    }
    fn auto_prompt(&mut self, _g: &str, _s: &str, _seed: u64) -> anyhow::Result<JobPrompt> {
        Ok(JobPrompt::tokens_only(Tensor::zeros(
            (1, 3, 250),
            DType::I64,
            &Device::Cpu,
        )?))
    }
    fn tokens(
        &mut self,
        input: &LmInput,
        _sampling: &SamplingOptions,
        _seed: u64,
        progress: &mut ProgressFn<'_>,
    ) -> anyhow::Result<Tensor> {
        if let Some(log) = &self.log {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)?;
            writeln!(f, "{}", first_word(&input.lyrics))?;
        }
        for done in 1..=self.steps {
            std::thread::sleep(self.step_time);
            report(
                progress,
                Progress {
                    stage: Stage::Lm,
                    done,
                    total: self.steps,
                    rate: None,
                },
            )?;
        }
        Ok(Tensor::zeros(
            (1, 3, self.frames()),
            DType::I64,
            &Device::Cpu,
        )?)
    }
    fn render(
        &mut self,
        tokens: &Tensor,
        _prompts: &PromptSet,
        gen_type: GenType,
        _seed: u64,
        _progress: &mut ProgressFn<'_>,
    ) -> anyhow::Result<Vec<(Stem, Audio)>> {
        // Exactly `seconds` of audio (the tokens are only a stand-in).
        let _ = tokens;
        let n = self.samples();
        let rate = audio::SAMPLE_RATE as f32;
        Ok(Stem::for_gen_type(gen_type)
            .iter()
            .map(|&stem| {
                let freq = match stem {
                    Stem::Mixed => 330.0,
                    Stem::Vocal => 440.0,
                    Stem::Bgm => 220.0,
                };
                let left: Vec<f32> = (0..n)
                    .map(|k| 0.5 * (std::f32::consts::TAU * freq * k as f32 / rate).sin())
                    .collect();
                let right = left.iter().map(|v| -v).collect();
                let audio = Audio {
                    channels: vec![left, right],
                    sample_rate: audio::SAMPLE_RATE,
                };
                (stem, audio)
            })
            .collect())
    }
    fn max_frames(&self) -> Option<u64> {
        Some(self.samples() as u64)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_log_names_a_job_by_its_first_lyric_word() {
        assert_eq!(
            super::first_word("[verse] alpha beta ; [chorus] x"),
            "alpha"
        );
        assert_eq!(super::first_word("[intro-short] ; [verse] Bravo."), "Bravo");
    }
}
