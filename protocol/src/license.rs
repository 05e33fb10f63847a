//! The weights' licence notice and the per-user record of its acceptance.
//!
//! songgen's code is MIT/Apache-2.0, but the SongGeneration weights it runs are Tencent's and
//! come under their own research licence; they are never bundled. Every front-end shows
//! [`NOTICE`] once before the first download or use and records the acceptance in
//! `<songgen home>/license-accepted`.

use std::path::PathBuf;

use crate::paths::songgen_home;

/// Identifies the licence text the user accepted; a new notice asks again.
pub const LICENSE_ID: &str = "tencent-songgeneration-research-license";

pub const NOTICE: &str = "\
The SongGeneration / LeVo model weights are made by Tencent AI Lab and are licensed by Tencent
under its own licence for the SongGeneration model (research and non-commercial use; see the
LICENSE file that comes with the weights on the Hugging Face Hub, e.g. tencent/SongGeneration).
songgen does not include the weights: it downloads them from the Hub or reads the copies you
give it, and your use of them is governed by Tencent's licence, not by songgen's.";

/// The file that records the acceptance.
pub fn acceptance_file() -> PathBuf {
    songgen_home().join("license-accepted")
}

/// Whether the current notice was accepted before.
pub fn is_accepted() -> bool {
    std::fs::read_to_string(acceptance_file()).is_ok_and(|s| s.trim() == LICENSE_ID)
}

/// Remembers the acceptance for later runs.
pub fn record_acceptance() -> std::io::Result<()> {
    let file = acceptance_file();
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(file, format!("{LICENSE_ID}\n"))
}
