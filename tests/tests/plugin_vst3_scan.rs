//! VST3 smoke test: the plugin, bundled as `songgen_plugin.vst3`, is loaded, instantiated and
//! has its buses enumerated by Ardour's VST3 scanner (`ardour-vst3-scanner` from Debian's
//! `ardour` package; `.ci/run` unpacks it to /opt/ardour-scanner). Skips, saying why, when the
//! scanner is not installed.

mod plugin_host;

use std::path::PathBuf;
use std::process::Command;

use plugin_host::{plugin_library, temp_dir};

fn find_scanner() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ARDOUR_VST3_SCANNER") {
        return Some(PathBuf::from(p));
    }
    for root in [
        "/opt/ardour-scanner/usr/lib",
        "/usr/lib",
        "/usr/lib/x86_64-linux-gnu",
    ] {
        let Ok(entries) = std::fs::read_dir(root) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            if name.to_string_lossy().starts_with("ardour") {
                let scanner = e.path().join("ardour-vst3-scanner");
                if scanner.is_file() {
                    return Some(scanner);
                }
            }
        }
    }
    None
}

#[test]
fn ardour_scanner_loads_the_vst3_bundle_and_sees_all_buses() {
    let Some(scanner) = find_scanner() else {
        eprintln!(
            "SKIPPED: ardour-vst3-scanner not found (install Debian's `ardour` package, \
             unpack it to /opt/ardour-scanner, or set ARDOUR_VST3_SCANNER)"
        );
        return;
    };
    let dir = temp_dir("vst3-scan");
    // The Linux VST3 bundle layout that `cargo xtask bundle` produces.
    let module_dir = dir.join("songgen_plugin.vst3/Contents/x86_64-linux");
    std::fs::create_dir_all(&module_dir).unwrap();
    std::fs::copy(plugin_library(), module_dir.join("songgen_plugin.so")).unwrap();

    let out = Command::new(&scanner)
        .args(["-v", "-f"])
        .arg(dir.join("songgen_plugin.vst3"))
        .env("HOME", &dir)
        .env("LD_LIBRARY_PATH", scanner.parent().unwrap())
        .env("SONGGEN_ENGINE", dir.join("no-engine-here"))
        .output()
        .expect("running ardour-vst3-scanner");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if text.contains("error while loading shared libraries") {
        eprintln!("SKIPPED: the scanner's libraries are missing (libglibmm-2.4-1v5, libarchive13):\n{text}");
        return;
    }
    assert!(out.status.success(), "scanner failed:\n{text}");
    assert!(text.contains("Found Plugin: SongGen"), "{text}");
    assert!(text.contains("category=\"Instrument|Generator\""), "{text}");
    // Main stereo in/out, the stereo sidechain, and the two stereo stem outputs.
    for attr in [
        "n_inputs=\"2\"",
        "n_outputs=\"2\"",
        "n_aux_inputs=\"2\"",
        "n_aux_outputs=\"4\"",
    ] {
        assert!(text.contains(attr), "missing {attr}:\n{text}");
    }
    assert!(
        text.contains("dir: kOutput type: kAux n_busses: 3"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
