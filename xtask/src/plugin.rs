//! `cargo xtask bundle` and `cargo xtask install`: the CLAP + VST3 bundles of the plugin
//! (through nice-plug-xtask) and a per-user install with the `songgen` engine beside the plugin
//! binary, where the plugin looks for it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

pub const PLUGIN_PACKAGE: &str = "songgen-plugin";
/// Bundle name from bundler.toml.
const BUNDLE_NAME: &str = "SongGen";

pub const USAGE: &str =
    "  bundle <PACKAGE> [--release] [cargo args]   build CLAP/VST3 bundles into target/bundled
  install [--debug] [--features F]             bundle the plugin, build the engine (with
                                               features F, e.g. cuda) and install both into
                                               ~/.clap and ~/.vst3; with features, a CPU
                                               engine `songgen-cpu` goes beside it (the
                                               plugin's fallback)";

/// `cargo xtask bundle ...` (also `bundle-universal`, `known-packages`): nice-plug-xtask.
pub fn bundle(args: &[String]) -> Result<()> {
    nice_plug_xtask::main_with_args("cargo xtask", args.iter().cloned())
        .map_err(|e| anyhow::anyhow!("{e:#}"))
}

pub fn install(args: &[String]) -> Result<()> {
    let mut release = true;
    let mut engine_features = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--debug" => release = false,
            "--features" => {
                engine_features.push(it.next().context("--features needs a value")?.clone())
            }
            other => bail!("install: unknown argument {other:?}"),
        }
    }
    let mut bundle_args = vec!["bundle".to_owned(), PLUGIN_PACKAGE.to_owned()];
    if release {
        bundle_args.push("--release".into());
    }
    bundle(&bundle_args)?;

    let target = target_dir()?;
    let exe = |name: &str| format!("{name}{}", std::env::consts::EXE_SUFFIX);
    let built = target
        .join(if release { "release" } else { "debug" })
        .join(exe("songgen"));
    // With features (e.g. cuda), a CPU engine goes beside the engine: the plugin starts it when
    // the CUDA engine cannot start (no driver) or finds no usable GPU. Both builds write the
    // same file, so the CPU one is built first and kept aside.
    let mut engines = Vec::new();
    if !engine_features.is_empty() {
        build_engine(release, &[])?;
        let cpu = target.join(exe("songgen-cpu"));
        std::fs::copy(&built, &cpu)
            .with_context(|| format!("copying {} to {}", built.display(), cpu.display()))?;
        engines.push(cpu);
    }
    build_engine(release, &engine_features)?;
    engines.push(built);
    let bundled = target.join("bundled");
    let home = PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?);
    let (clap_dir, vst3_dir) = if cfg!(target_os = "macos") {
        let base = home.join("Library/Audio/Plug-Ins");
        (base.join("CLAP"), base.join("VST3"))
    } else {
        (home.join(".clap"), home.join(".vst3"))
    };

    let clap = bundled.join(format!("{BUNDLE_NAME}.clap"));
    let vst3 = bundled.join(format!("{BUNDLE_NAME}.vst3"));
    let clap_dst = clap_dir.join(clap.file_name().unwrap());
    let vst3_dst = vst3_dir.join(vst3.file_name().unwrap());
    copy_tree(&clap, &clap_dst)?;
    copy_tree(&vst3, &vst3_dst)?;
    // The engine goes next to the loaded plugin binary.
    let clap_engine_dir = if clap_dst.is_dir() {
        clap_dst.join("Contents/MacOS")
    } else {
        clap_dir.clone()
    };
    let vst3_engine_dir = vst3_dst.join(if cfg!(target_os = "macos") {
        "Contents/MacOS".to_owned()
    } else {
        format!("Contents/{}-linux", std::env::consts::ARCH)
    });
    for dir in [clap_engine_dir, vst3_engine_dir] {
        for engine in &engines {
            let dst = dir.join(engine.file_name().unwrap());
            std::fs::copy(engine, &dst)
                .with_context(|| format!("copying {} to {}", engine.display(), dst.display()))?;
            println!("installed {}", dst.display());
        }
    }
    println!(
        "installed {}\ninstalled {}",
        clap_dst.display(),
        vst3_dst.display()
    );
    println!("models: run `songgen fetch` once to download the weights (see README)");
    Ok(())
}

/// `cargo build -p songgen-engine --bin songgen` with `features`.
fn build_engine(release: bool, features: &[String]) -> Result<()> {
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo.args(["build", "-p", "songgen-engine", "--bin", "songgen"]);
    if release {
        cargo.arg("--release");
    }
    for f in features {
        cargo.args(["--features", f]);
    }
    let status = cargo
        .status()
        .context("running cargo build for the engine")?;
    if !status.success() {
        bail!(
            "building the songgen engine{} failed",
            if features.is_empty() {
                String::new()
            } else {
                format!(" with features {}", features.join(","))
            }
        );
    }
    Ok(())
}

/// Cargo's target directory (honours CARGO_TARGET_DIR and config).
fn target_dir() -> Result<PathBuf> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let dir = v["target_directory"]
        .as_str()
        .context("cargo metadata has no target_directory")?;
    Ok(PathBuf::from(dir))
}

/// Copies a file or a folder tree, replacing what is at `dst`.
fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    if !src.exists() {
        bail!("{} was not built", src.display());
    }
    if dst.is_dir() {
        std::fs::remove_dir_all(dst)?;
    }
    if src.is_file() {
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(src, dst)
            .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
        return Ok(());
    }
    std::fs::create_dir_all(dst)?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        copy_tree(&entry.path(), &dst.join(entry.file_name()))?;
    }
    Ok(())
}
