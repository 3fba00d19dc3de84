//! Checkpoints shared with PyTorch. `tests/fixtures/interop/tiny_gfl.safetensors` is a checkpoint written by
//! the PyTorch TinyGFL of scripts/tiny_gfl.py (random, seeded weights of a tiny architecture); it loads
//! through detkd's strict `load_checkpoint` as it is, and `TinyGfl::forward` on the batch in
//! `tiny_gfl_io.safetensors` reproduces PyTorch's stages, FPN levels and head outputs. The other tests check
//! that detkd's own checkpoints round-trip and that strict loading reports every wrong name at once.

use detkd::autograd::Tape;
use detkd::engine::jobs::{checkpoint_metadata, load_checkpoint, CLASSES_KEY, MODEL_KEY};
use detkd::engine::model::TinyGflConfig;
use detkd::engine::train::Detector;
use detkd::tensor::io::{self, NamedTensors};
use detkd::testing::{assert_close, Rng};
use detkd::{DType, Tensor};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/interop")
        .join(name)
}

/// A fresh directory for one test's files.
fn scratch_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("detkd-interop-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The architecture scripts/tiny_gfl.py writes into the fixture (`FIXTURE_CONFIG`).
fn fixture_config() -> TinyGflConfig {
    TinyGflConfig {
        num_classes: 3,
        stem_channels: 4,
        stage_channels: [4, 6, 8, 8],
        stage_depths: [1, 0, 2, 1],
        fpn_channels: 8,
        head_convs: 2,
        head_channels: 10,
        reg_max: 4,
        channels_per_group: 3,
    }
}

/// Every output of a frozen forward, under the fixture's names without `expected.`.
fn forward_outputs(detector: &Detector, images: &Tensor) -> BTreeMap<String, Tensor> {
    let tape = Tape::new();
    let bound = detector.store.bind_frozen(&tape);
    let x = tape.constant(images.try_clone().unwrap());
    let out = detector.model.forward(&bound, x).unwrap();
    let mut named = BTreeMap::new();
    for (prefix, vars) in [
        ("stage", &out.stages),
        ("fpn", &out.fpn),
        ("cls", &out.cls),
        ("reg", &out.reg),
    ] {
        for (i, &v) in vars.iter().enumerate() {
            let value = tape.value(v).unwrap();
            named.insert(format!("{prefix}.{i}"), value.try_clone().unwrap());
        }
    }
    named
}

/// Compares every `expected.<name>` of `io` with `got[<name>]`: same set of names, shapes, dtype `dtype`.
fn compare_with_pytorch(got: &BTreeMap<String, Tensor>, io: &NamedTensors, dtype: DType, tol: f64) {
    let expected: BTreeMap<&str, &Tensor> = io
        .tensors
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("expected.").map(|name| (name, v)))
        .collect();
    // 4 stages, and 3 FPN levels each with its cls and reg logits.
    assert_eq!(expected.len(), 13, "{:?}", expected.keys());
    assert_eq!(
        got.keys().map(String::as_str).collect::<Vec<_>>(),
        expected.keys().copied().collect::<Vec<_>>()
    );
    for (name, want) in expected {
        let value = &got[name];
        assert_eq!(value.shape(), want.shape(), "{name}");
        assert_eq!(value.dtype(), dtype, "{name}");
        let want = want.to_vec::<f64>().unwrap();
        assert!(
            want.iter().any(|v| v.abs() > 1e-3),
            "{name}: PyTorch's output is (nearly) zero, the comparison would prove nothing"
        );
        assert_close(
            &format!("{name} ({dtype}) against PyTorch"),
            &value.to_vec::<f64>().unwrap(),
            &want,
            tol,
        );
    }
}

#[test]
fn pytorch_checkpoint_loads_strictly_and_reproduces_pytorch_outputs() {
    let path = fixture("tiny_gfl.safetensors");
    let mut detector = load_checkpoint(&path).unwrap();
    assert_eq!(detector.model.cfg, fixture_config());

    // The file is an ordinary checkpoint: exactly the detector's tensors, float32, and both metadata keys.
    let file = io::load(&path).unwrap();
    let names: Vec<&str> = detector
        .store
        .named_tensors()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(
        file.tensors.keys().map(String::as_str).collect::<Vec<_>>(),
        sorted
    );
    assert!(file.tensors.values().all(|t| t.dtype() == DType::F32));
    assert_eq!(
        file.meta(MODEL_KEY).unwrap(),
        serde_json::to_string(&fixture_config()).unwrap()
    );
    assert_eq!(
        file.meta(CLASSES_KEY).unwrap(),
        r#"["circle","square","triangle"]"#
    );

    let io = io::load(fixture("tiny_gfl_io.safetensors")).unwrap();
    let images = io.get("input.images").unwrap();
    assert_eq!(images.shape(), &[2, 3, 32, 64]);
    assert_eq!(images.dtype(), DType::F32);
    let got = forward_outputs(&detector, images);
    compare_with_pytorch(&got, &io, DType::F32, 1e-4);

    // In f64 the only difference left is PyTorch's rounding of its float64 results to float32 (≤ 2⁻²⁴
    // relative per element), so a far tighter bound holds.
    detector.store.to_dtype(DType::F64).unwrap();
    let got = forward_outputs(&detector, &images.to_dtype(DType::F64).unwrap());
    compare_with_pytorch(&got, &io, DType::F64, 1e-6);
}

#[test]
fn pytorch_fixture_with_its_io_tensors_in_the_same_file_is_rejected() {
    // Why the batch and the outputs live in a second file: strict loading refuses names it does not know.
    let mut file = io::load(fixture("tiny_gfl.safetensors")).unwrap();
    let io = io::load(fixture("tiny_gfl_io.safetensors")).unwrap();
    file.tensors.extend(io.tensors);
    let mut detector = Detector::new(&fixture_config(), 0).unwrap();
    let e = detector.store.load_strict(&file).unwrap_err().to_string();
    assert!(
        e.contains("unexpected: expected.cls.0") && e.contains("input.images"),
        "{e}"
    );
    assert!(!e.contains("missing"), "{e}");
}

#[test]
fn detkd_checkpoint_round_trips_exactly() {
    let cfg = TinyGflConfig::student(4);
    let mut detector = Detector::new(&cfg, 7).unwrap();
    // Random values everywhere (GroupNorm affines and scales start as constants, which a load that did
    // nothing would also "reproduce").
    let mut rng = Rng::new(11);
    let ids: Vec<_> = detector.store.ids().collect();
    for id in ids {
        let shape = detector.store.value(id).shape().to_vec();
        let n: usize = shape.iter().product();
        let v: Vec<f32> = rng.normal_vec(n).into_iter().map(|x| x as f32).collect();
        detector
            .store
            .set(id, Tensor::from_vec(v, &shape).unwrap())
            .unwrap();
    }
    let classes: Vec<String> = ["circle", "square", "triangle", "cross"]
        .map(String::from)
        .to_vec();
    let dir = scratch_dir("round-trip");
    let path = dir.join("ckpt.safetensors");
    detector
        .save(&path, &checkpoint_metadata(&cfg, &classes).unwrap())
        .unwrap();

    let loaded = load_checkpoint(&path).unwrap();
    assert_eq!(loaded.model.cfg, cfg);
    let file = io::load(&path).unwrap();
    let saved_classes: Vec<String> = serde_json::from_str(file.meta(CLASSES_KEY).unwrap()).unwrap();
    assert_eq!(saved_classes, classes);

    let before = detector.store.named_tensors();
    let after = loaded.store.named_tensors();
    assert_eq!(before.len(), after.len());
    for ((name_a, a), (name_b, b)) in before.into_iter().zip(after) {
        assert_eq!(name_a, name_b);
        assert_eq!(a.shape(), b.shape(), "{name_a}");
        assert_eq!(a.dtype(), b.dtype(), "{name_a}");
        let (a, b) = (a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{name_a} changed in the round trip"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn strict_loading_lists_every_wrong_name_in_one_error() {
    let cfg = fixture_config();
    let detector = Detector::new(&cfg, 3).unwrap();
    let dir = scratch_dir("strict");
    let good = dir.join("good.safetensors");
    detector
        .save(
            &good,
            &checkpoint_metadata(&cfg, &["a".to_string()]).unwrap(),
        )
        .unwrap();

    let mut file = io::load(&good).unwrap();
    file.tensors.remove("head.scales.1.scale").unwrap();
    file.tensors.insert(
        "head.scales.3.scale".into(),
        Tensor::from_vec(vec![1.0f32], &[1]).unwrap(),
    );
    // mmcv's `Scale` holds a 0-d parameter; detkd's is `[1]`.
    file.tensors.insert(
        "head.scales.0.scale".into(),
        Tensor::from_vec(vec![1.0f32], &[]).unwrap(),
    );
    let bad = dir.join("bad.safetensors");
    io::save(
        &bad,
        file.tensors.iter().map(|(k, v)| (k.as_str(), v)),
        &file.metadata,
    )
    .unwrap();

    let e = match load_checkpoint(&bad) {
        Ok(_) => panic!("a checkpoint with a missing and an unexpected tensor loaded"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("missing: head.scales.1.scale")
            && e.contains("unexpected: head.scales.3.scale")
            && e.contains("mis-shaped: head.scales.0.scale (expected [1], got [])"),
        "{e}"
    );
    assert!(
        e.contains("bad.safetensors"),
        "the error names the file: {e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
