//! The LeLM golden fixtures pass in full (tokenizer, conditioners, pattern, forward passes,
//! logit processing and greedy generation against the PyTorch reference).

use songgen_tests::fixture_dir;

#[test]
fn lelm_parity_fixtures_all_pass() {
    let dir = fixture_dir("lelm");
    let manifest = songgen_engine::parity::Manifest::read(&dir).unwrap();
    let mut out = Vec::new();
    let summary = songgen_engine::parity::run_dir(&dir, None, &mut out).unwrap();
    let log = String::from_utf8_lossy(&out);
    assert_eq!(summary.failed, 0, "{log}");
    assert_eq!(summary.passed, manifest.cases.len(), "{log}");
}
