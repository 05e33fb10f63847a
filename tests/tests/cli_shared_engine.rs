//! The shared local engine from the command line: `songgen serve --socket` (0600 socket in a
//! 0700 folder, a second engine on the same socket steps aside) and `songgen generate --engine`,
//! which runs its jobs in that engine instead of loading the model itself.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use songgen_tests::{songgen, temp_dir, tiny_model};

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn generate_runs_in_the_shared_engine_and_a_second_engine_steps_aside() {
    let dir = temp_dir("cli-shared");
    let tiny = tiny_model::write_with(&dir.join("tiny"), 9, 4).unwrap();
    let socket = dir.join("run/engine.sock");
    let mut server = songgen(&dir)
        .args([
            "serve",
            "--accept-license",
            "--device",
            "cpu",
            "--grace",
            "30",
            "--socket",
        ])
        .arg(&socket)
        .arg("--model")
        .arg(&tiny.model_dir)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&socket);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&socket), 0o600);
        assert_eq!(mode(socket.parent().unwrap()), 0o700);
    }

    // A second engine on the same socket exits at once, without loading a model.
    let second = songgen(&dir)
        .args(["serve", "--accept-license", "--socket"])
        .arg(&socket)
        .arg("--model")
        .arg(&tiny.model_dir)
        .output()
        .unwrap();
    assert!(second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("already serves"));

    let out = dir.join("out");
    for id in ["one", "two"] {
        let o = songgen(&dir)
            .args([
                "generate", "--quiet", "--seed", "4", "--type", "vocal", "--id", id,
            ])
            .args([
                "--lyrics",
                "[verse] hello there ; [chorus] la la",
                "--engine",
            ])
            .arg(&socket)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        assert!(err.contains("using the shared engine"), "{err}");
        assert!(out.join(format!("{id}_vocal.wav")).is_file());
        assert!(out.join(format!("{id}.json")).is_file());
    }
    // Same seed, same inputs, same engine: the same song.
    assert_eq!(
        std::fs::read(out.join("one_vocal.wav")).unwrap(),
        std::fs::read(out.join("two_vocal.wav")).unwrap()
    );
    let _ = server.kill();
    let _ = server.wait();

    // Without an engine, --engine says what to do.
    let o = songgen(&dir)
        .args([
            "generate",
            "--quiet",
            "--lyrics",
            "[verse] hi ; [chorus] la",
            "--engine",
        ])
        .arg(dir.join("nothing.sock"))
        .arg("--out")
        .arg(dir.join("out2"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("songgen serve --socket"));
    let _ = std::fs::remove_dir_all(&dir);
}
