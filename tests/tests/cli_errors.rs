//! `songgen` fails clearly, with a non-zero exit code and without touching earlier outputs, on
//! bad input; and its model-management commands handle their arguments.

use std::path::Path;
use std::process::Output;

use songgen_tests::{songgen, temp_dir, tiny_model};

const LYRICS: &str =
    "[intro-short] ; [verse] hello there. how are you ; [chorus] la la la ; [outro-short]";

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `songgen generate` writing into `<home>/out` unless the test passes its own `--out`.
fn generate(home: &Path) -> std::process::Command {
    let mut cmd = songgen(home);
    cmd.arg("generate");
    cmd
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn malformed_lyrics_are_reported_by_line_with_a_fix() {
    let home = temp_dir("err-lyrics");
    let out = home.join("out");
    let o = generate(&home)
        .args(["--accept-license", "--lyrics"])
        .arg("some words first\n[Verse]\nhello\n[pre-chorus]\nla\n[verse]\n")
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("line 1: lyrics before the first section tag"),
        "{err}"
    );
    assert!(
        err.contains("line 4: unknown section tag [pre-chorus]"),
        "{err}"
    );
    assert!(err.contains("did you mean"), "{err}");
    assert!(err.contains("line 6: [verse] has no lyrics"), "{err}");
    assert!(files_in(&out).is_empty());
}

#[test]
fn unknown_style_tags_get_a_suggestion() {
    let home = temp_dir("err-tags");
    let o = generate(&home)
        .arg("--out")
        .arg(home.join("out"))
        .args(["--accept-license", "--lyrics", LYRICS])
        .args(["--tags", "femal, jazz, the bpm is 120"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("unknown style tag `femal` (did you mean `female`?)"),
        "{err}"
    );
    assert!(err.contains("--free-tags"), "{err}");
    let o = generate(&home)
        .arg("--out")
        .arg(home.join("out"))
        .args(["--lyrics", LYRICS, "--auto-prompt", "Jaz"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("did you mean `Jazz`"), "{}", stderr(&o));
}

#[test]
fn a_missing_model_folder_is_named() {
    let home = temp_dir("err-model");
    let o = generate(&home)
        .args(["--accept-license", "--lyrics", LYRICS])
        .arg("--model")
        .arg(home.join("nowhere"))
        .arg("--out")
        .arg(home.join("out"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("nowhere") && err.contains("songgen fetch"),
        "{err}"
    );
    // The default model folder lives under SONGGEN_HOME.
    let o = songgen(&home).args(["doctor"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains(
            &home
                .join("models/songgeneration_v2_large")
                .display()
                .to_string()
        ),
        "{}",
        stderr(&o)
    );
}

#[test]
fn an_unreadable_prompt_clip_is_rejected_before_loading() {
    let home = temp_dir("err-prompt");
    let clip = home.join("clip.wav");
    std::fs::write(&clip, b"RIFF but not really a wave file").unwrap();
    let o = generate(&home)
        .arg("--out")
        .arg(home.join("out"))
        .args(["--accept-license", "--lyrics", LYRICS])
        .arg("--prompt-audio")
        .arg(&clip)
        .arg("--model")
        .arg(home.join("nowhere"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("clip.wav") && err.contains("WAV"), "{err}");
    let o = generate(&home)
        .arg("--out")
        .arg(home.join("out"))
        .args(["--lyrics", LYRICS, "--prompt-audio"])
        .arg(home.join("missing.wav"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("missing.wav: not found"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn an_unwritable_output_folder_and_existing_outputs_are_refused() {
    let home = temp_dir("err-out");
    let blocker = home.join("a-file");
    std::fs::write(&blocker, b"keep me").unwrap();
    let o = generate(&home)
        .args(["--accept-license", "--lyrics", LYRICS])
        .arg("--out")
        .arg(blocker.join("sub"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("output folder"), "{}", stderr(&o));

    let out = home.join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("take.wav"), b"an earlier take").unwrap();
    let o = generate(&home)
        .args(["--accept-license", "--lyrics", LYRICS, "--id", "take"])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--overwrite"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(out.join("take.wav")).unwrap(),
        b"an earlier take"
    );
    assert_eq!(files_in(&out), ["take.wav"]);
}

#[test]
fn jsonl_problems_name_the_line() {
    let home = temp_dir("err-jsonl");
    let jsonl = home.join("in.jsonl");
    std::fs::write(
        &jsonl,
        format!(
            "{{\"idx\": \"a\", \"gt_lyric\": \"{LYRICS}\"}}\n{{\"idx\": \"b\", \"gt_lyric\": \"[verse]\"}}\n"
        ),
    )
    .unwrap();
    let o = generate(&home)
        .arg("--out")
        .arg(home.join("out"))
        .args(["--accept-license", "--jsonl"])
        .arg(&jsonl)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("in.jsonl line 2"), "{}", stderr(&o));
    std::fs::write(&jsonl, "{\"idx\": \"a\", \"gt_lyric\": \"x\"}\nnot json\n").unwrap();
    let o = generate(&home)
        .arg("--out")
        .arg(home.join("out"))
        .args(["--jsonl"])
        .arg(&jsonl)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("line 2: not a JSON object"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn the_licence_is_shown_and_remembered() {
    let home = temp_dir("licence");
    let o = generate(&home)
        .arg("--out")
        .arg(home.join("out"))
        .args(["--lyrics", LYRICS])
        .arg("--model")
        .arg(home.join("nowhere"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("Tencent") && stderr(&o).contains("--accept-license"));
    assert!(!home.join("license-accepted").exists());
    let o = songgen(&home)
        .args(["fetch", "runtime", "--dry-run"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(&home.join("models/runtime").display().to_string()));
    assert!(stdout(&o).contains("lglg666/SongGeneration-Runtime"));
    // Accepting once is remembered for later runs.
    let o = generate(&home)
        .arg("--out")
        .arg(home.join("out"))
        .args(["--accept-license", "--lyrics", LYRICS])
        .arg("--model")
        .arg(home.join("nowhere"))
        .output()
        .unwrap();
    assert!(stderr(&o).contains("nowhere"));
    assert!(home.join("license-accepted").is_file());
    let o = generate(&home)
        .arg("--out")
        .arg(home.join("out"))
        .args(["--lyrics", LYRICS])
        .arg("--model")
        .arg(home.join("nowhere"))
        .output()
        .unwrap();
    assert!(!stderr(&o).contains("Tencent"), "{}", stderr(&o));
}

#[test]
fn fetch_checks_its_arguments() {
    let home = temp_dir("fetch");
    let o = songgen(&home)
        .args(["fetch", "songgeneration_v2_larg"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("did you mean `songgeneration_v2_large`"),
        "{}",
        stderr(&o)
    );
    let o = songgen(&home)
        .args([
            "fetch",
            "songgeneration_v2_large",
            "--repo",
            "no-slash",
            "--dry-run",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let o = songgen(&home)
        .args([
            "fetch",
            "songgeneration_v2_medium",
            "--dry-run",
            "--models-dir",
        ])
        .arg(home.join("m"))
        .output()
        .unwrap();
    assert!(o.status.success());
    let text = stdout(&o);
    assert!(
        text.contains(
            &home
                .join("m/songgeneration_v2_medium")
                .display()
                .to_string()
        ),
        "{text}"
    );
    assert!(
        text.contains("model.pt") && text.contains("config.yaml"),
        "{text}"
    );
    // A dry run downloads nothing and asks for no licence.
    assert!(!home.join("m").exists());
}

#[test]
fn doctor_checks_every_file_of_the_tiny_model() {
    let home = temp_dir("doctor");
    let tiny = tiny_model::write(&home.join("models"), 7).unwrap();
    let o = songgen(&home)
        .arg("doctor")
        .arg("--model")
        .arg(&tiny.model_dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("ok       language model"), "{text}");
    assert!(
        text.contains("ok       flow decoder: 1 transformer block;"),
        "{text}"
    );
    assert!(text.contains("ok       VAE"), "{text}");
    std::fs::remove_file(
        tiny.runtime_dir
            .join("ckpt/vae/autoencoder_music_1320k.ckpt"),
    )
    .unwrap();
    let o = songgen(&home)
        .arg("doctor")
        .arg("--model")
        .arg(&tiny.model_dir)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("PROBLEM  VAE: missing"),
        "{}",
        stdout(&o)
    );
}
