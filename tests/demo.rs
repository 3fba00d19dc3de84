//! The demo pipeline end to end: synthetic data, teacher, the plain student and every method, evaluation,
//! report.json, report.png and checkpoints. The default test runs a reduced schedule (seconds); the
//! `--quick` configuration itself (≈ 2 minutes in a release build) is `#[ignore]`d:
//! `cargo test --release --test demo -- --ignored`.

use detkd::engine::demo::{run_demo, DemoConfig};
use detkd::Device;
use std::path::Path;

fn check_outputs(dir: &Path, runs: usize) {
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    let listed = report["runs"].as_array().unwrap();
    assert_eq!(listed.len(), runs);
    for run in listed {
        let ap = run["stats"]["AP"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&ap), "{run}");
        assert!(run["wall_seconds"].as_f64().unwrap() > 0.0);
    }
    let png = image::open(dir.join("report.png")).unwrap();
    assert!(png.width() > 0);
    assert!(dir.join("teacher.safetensors").exists());
    detkd::engine::jobs::load_checkpoint(&dir.join("teacher.safetensors")).unwrap();
    assert!(dir.join("student.safetensors").exists());
    assert!(dir.join("student_ld_gkd.safetensors").exists());
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    assert!(metrics
        .lines()
        .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
}

#[test]
fn every_method_runs_through_the_pipeline() {
    let dir = std::env::temp_dir().join(format!("detkd-demo-{}", std::process::id()));
    let mut cfg = DemoConfig::quick(dir.clone(), 3);
    cfg.train_size = 32;
    cfg.val_size = 8;
    cfg.teacher.epochs = 1;
    cfg.student.epochs = 1;
    let results = run_demo(&cfg, &Device::Cpu).unwrap();
    // The teacher, the plain student, five methods and one combination.
    assert_eq!(results.len(), 8);
    assert_eq!(results[1].name, "student");
    check_outputs(&dir, 8);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
#[ignore = "the full --quick schedule: about 2 minutes in a release build"]
fn quick_demo() {
    let dir = std::env::temp_dir().join(format!("detkd-demo-quick-{}", std::process::id()));
    let results = run_demo(&DemoConfig::quick(dir.clone(), 0), &Device::Cpu).unwrap();
    check_outputs(&dir, results.len());
    // Even the short schedule trains a teacher that finds something.
    assert!(
        results[0].stats.ap50 > 0.0,
        "teacher AP50 {}",
        results[0].stats.ap50
    );
    std::fs::remove_dir_all(&dir).ok();
}
