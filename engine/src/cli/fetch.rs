//! `songgen fetch`: downloads a model folder or the shared runtime files from the Hugging Face
//! Hub into the per-user models folder (`<models>/<model>/`, `<models>/runtime/`).
//!
//! Files go through hf-hub's cache in `<models>/.hf-cache` (interrupted downloads resume from
//! their partial file on the next run) and are then hard-linked (or copied) into the layout
//! [`ModelPaths`](songgen_engine::paths::ModelPaths) expects.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Repo, RepoType};
use indicatif::{ProgressBar, ProgressStyle};
use songgen_engine::lyrics::closest;
use songgen_engine::paths;

use super::{license, CliResult, Failure};

/// A downloadable item: a Hub repository and the files the engine reads from it.
struct Source {
    name: &'static str,
    repo: &'static str,
    /// (path in the repository, required)
    files: &'static [(&'static str, bool)],
}

const MODEL_FILES: &[(&str, bool)] = &[("config.yaml", true), ("model.pt", true)];

const SOURCES: &[Source] = &[
    Source {
        name: "songgeneration_v2_large",
        repo: "lglg666/SongGeneration-v2-large",
        files: MODEL_FILES,
    },
    Source {
        name: "songgeneration_v2_medium",
        repo: "lglg666/SongGeneration-v2-medium",
        files: MODEL_FILES,
    },
    Source {
        name: "songgeneration_large",
        repo: "lglg666/SongGeneration-large",
        files: MODEL_FILES,
    },
    Source {
        name: "songgeneration_base_full",
        repo: "lglg666/SongGeneration-base-full",
        files: MODEL_FILES,
    },
    Source {
        name: "songgeneration_base_new",
        repo: "lglg666/SongGeneration-base-new",
        files: MODEL_FILES,
    },
    Source {
        name: "runtime",
        repo: "lglg666/SongGeneration-Runtime",
        files: &[
            ("ckpt/model_septoken/model_2.safetensors", true),
            ("ckpt/vae/stable_audio_1920_vae.json", true),
            ("ckpt/vae/autoencoder_music_1320k.ckpt", true),
            ("third_party/Qwen2-7B/vocab.json", true),
            ("third_party/Qwen2-7B/merges.txt", true),
            ("third_party/Qwen2-7B/tokenizer_config.json", true),
            ("third_party/Qwen2-7B/tokenizer.json", false),
            ("ckpt/model_1rvq/model_2_fixed.safetensors", false),
            ("third_party/demucs/ckpt/htdemucs.pth", false),
            ("third_party/demucs/ckpt/htdemucs.yaml", false),
            ("tools/new_auto_prompt.pt", false),
        ],
    },
];

#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to download: a model name (songgeneration_v2_large, songgeneration_v2_medium, ...)
    /// or `runtime` (the shared decoder, VAE, tokenizer and prompt-encoder files, needed once).
    pub model: String,
    /// Models folder [default: the per-user models folder, or $SONGGEN_HOME/models].
    #[arg(long, value_name = "DIR")]
    pub models_dir: Option<PathBuf>,
    /// Download from this Hub repository instead of the known one (a mirror or a fork).
    #[arg(long, value_name = "OWNER/NAME")]
    pub repo: Option<String>,
    /// Branch, tag or commit.
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// Print what would be downloaded and where, then stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Accept the model weights' licence without asking.
    #[arg(long)]
    pub accept_license: bool,
}

pub fn run(args: Args) -> CliResult {
    let Some(source) = SOURCES.iter().find(|s| s.name == args.model) else {
        let names: Vec<&str> = SOURCES.iter().map(|s| s.name).collect();
        return Err(Failure::input(anyhow!(
            "unknown model `{}` (did you mean `{}`? known: {})",
            args.model,
            closest(&args.model, &names),
            names.join(", ")
        )));
    };
    let repo = args.repo.as_deref().unwrap_or(source.repo);
    if repo.split('/').count() != 2 || repo.split('/').any(str::is_empty) {
        return Err(Failure::input(anyhow!(
            "--repo must look like OWNER/NAME, not `{repo}`"
        )));
    }
    let models_dir = args
        .models_dir
        .clone()
        .unwrap_or_else(paths::default_models_dir);
    let dest = models_dir.join(source.name);
    println!(
        "{} from {repo}@{} into {}",
        source.name,
        args.revision,
        dest.display()
    );
    for (file, required) in source.files {
        let tag = if *required { "" } else { " (optional)" };
        println!("  {file}{tag}");
    }
    if args.dry_run {
        return Ok(());
    }
    license::ensure_accepted(args.accept_license)?;
    std::fs::create_dir_all(&dest)
        .with_context(|| format!("cannot create {}", dest.display()))
        .map_err(Failure::input)?;
    let api = ApiBuilder::new()
        .with_cache_dir(models_dir.join(".hf-cache"))
        .with_progress(false)
        .build()
        .map_err(|e| Failure::run(anyhow!("cannot set up downloads: {e}")))?;
    let hub = api.repo(Repo::with_revision(
        repo.to_string(),
        RepoType::Model,
        args.revision.clone(),
    ));
    let mut missing_optional = Vec::new();
    for (file, required) in source.files {
        let target = dest.join(file);
        if target.is_file() {
            println!("have {file}");
            continue;
        }
        match hub.download_with_progress(file, Bar::default()) {
            Ok(cached) => place(&cached, &target).map_err(Failure::run)?,
            Err(e) if !*required => missing_optional.push(format!("{file} ({e})")),
            Err(e) => {
                return Err(Failure::run(anyhow!(
                    "downloading {file} from {repo}: {e} (run the same command again to resume)"
                )))
            }
        }
    }
    for m in missing_optional {
        eprintln!("note: optional file not downloaded: {m}");
    }
    println!("done: {}", dest.display());
    Ok(())
}

/// Hard-links the cached blob into the model folder (no second copy on disk), copying when
/// the two are on different file systems.
fn place(cached: &Path, target: &Path) -> anyhow::Result<()> {
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let blob = std::fs::canonicalize(cached)?;
    if std::fs::hard_link(&blob, target).is_err() {
        std::fs::copy(&blob, target)
            .with_context(|| format!("cannot copy {} to {}", blob.display(), target.display()))?;
    }
    Ok(())
}

/// hf-hub's download progress on an indicatif bar.
#[derive(Default)]
struct Bar(Option<ProgressBar>);

impl hf_hub::api::Progress for Bar {
    fn init(&mut self, size: usize, filename: &str) {
        let bar = ProgressBar::new(size as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>32} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(filename.to_string());
        self.0 = Some(bar);
    }
    fn update(&mut self, size: usize) {
        if let Some(b) = &self.0 {
            b.inc(size as u64);
        }
    }
    fn finish(&mut self) {
        if let Some(b) = &self.0 {
            b.finish();
        }
    }
}
