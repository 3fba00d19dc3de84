//! Peer fixtures for the evaluation layer (`detkd::engine::eval`), made by
//! `scripts/make_fixtures_coco_eval.py`: pycocotools' `COCOeval` statistics on several scenarios,
//! torchvision's `batched_nms`, and a PyTorch transcription of mmdetection's GFL post-processing.

use std::path::PathBuf;

use detkd::engine::eval::{
    batched_nms, decode_gfl, load_annotations, load_results, CocoStats, GflDecodeConfig, GflImage,
    GflLevel, PreNmsSelection,
};
use serde_json::Value;

const SCENARIOS: [&str; 5] = ["mixed", "ties_and_bounds", "crowds", "dense", "sparse"];

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/coco_eval")
        .join(name)
}

fn read_json(name: &str) -> Value {
    let path = fixture(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn f64s(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

fn u64s(value: &Value) -> Vec<u64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

#[test]
fn coco_stats_match_pycocotools_bit_for_bit() {
    for name in SCENARIOS {
        let dataset = load_annotations(fixture(&format!("{name}.gt.json"))).unwrap();
        let detections = load_results(fixture(&format!("{name}.dt.json")), &dataset).unwrap();
        let expected = read_json(&format!("{name}.expected.json"));
        let evaluation = dataset.evaluate_detailed(&detections).unwrap();

        let got = evaluation.stats.as_array();
        let want = f64s(&expected["stats"]);
        let want_bits = u64s(&expected["stats_bits"]);
        for (i, stat) in CocoStats::NAMES.iter().enumerate() {
            // The required tolerance is 1e-4; the implementation reproduces numpy's arithmetic, so the
            // bit patterns agree too.
            assert!(
                (got[i] - want[i]).abs() <= 1e-4,
                "{name} {stat}: got {}, pycocotools {}",
                got[i],
                want[i]
            );
            assert_eq!(
                got[i].to_bits(),
                want_bits[i],
                "{name} {stat}: got {:e}, pycocotools {:e}",
                got[i],
                f64::from_bits(want_bits[i])
            );
        }
        // The scenarios are built so that no statistic is trivially −1 or 0 everywhere.
        assert!(got.iter().any(|&v| v > 0.0 && v < 1.0), "{name}: {got:?}");

        let categories = u64s(&expected["category_ids"]);
        let per_category = evaluation.per_category_ap();
        assert_eq!(
            per_category.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            categories,
            "{name}"
        );
        for ((id, ap), bits) in per_category.iter().zip(u64s(&expected["category_ap_bits"])) {
            let want = f64::from_bits(bits);
            match ap {
                Some(ap) => assert_eq!(
                    ap.to_bits(),
                    bits,
                    "{name} category {id}: got {ap}, pycocotools {want}"
                ),
                None => assert_eq!(
                    want, -1.0,
                    "{name} category {id}: no ground truth here, pycocotools {want}"
                ),
            }
        }
    }
}

#[test]
fn scenarios_cover_the_documented_edge_cases() {
    // Guards the fixtures themselves: if a regeneration lost an edge case the comparison above would
    // silently test less.
    let mut crowd = false;
    let mut absent_category = false;
    let mut cell_over_100 = false;
    let mut image_without_gt = false;
    for name in SCENARIOS {
        let dataset = load_annotations(fixture(&format!("{name}.gt.json"))).unwrap();
        let detections = load_results(fixture(&format!("{name}.dt.json")), &dataset).unwrap();
        crowd |= dataset.annotations.iter().any(|a| a.iscrowd);
        let evaluation = dataset.evaluate_detailed(&detections).unwrap();
        absent_category |= evaluation
            .per_category_ap()
            .iter()
            .any(|(_, ap)| ap.is_none());
        let mut cells = std::collections::HashMap::new();
        for d in &detections {
            *cells.entry((d.image_id, d.category_id)).or_insert(0usize) += 1;
        }
        cell_over_100 |= cells.values().any(|&n| n > 100);
        image_without_gt |= dataset
            .images
            .iter()
            .any(|img| !dataset.annotations.iter().any(|a| a.image_id == img.id));
    }
    assert!(crowd && absent_category && cell_over_100 && image_without_gt);
}

#[test]
fn batched_nms_matches_torchvision() {
    let cases = read_json("nms.json");
    let cases = cases.as_array().unwrap();
    assert!(cases.len() >= 5);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let boxes: Vec<[f64; 4]> = case["boxes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                let v = f64s(b);
                [v[0], v[1], v[2], v[3]]
            })
            .collect();
        let scores = f64s(&case["scores"]);
        let classes: Vec<usize> = u64s(&case["classes"])
            .into_iter()
            .map(|c| c as usize)
            .collect();
        let threshold = case["iou_threshold"].as_f64().unwrap();
        let want: Vec<usize> = u64s(&case["keep"])
            .into_iter()
            .map(|i| i as usize)
            .collect();
        let got = match case["dtype"].as_str().unwrap() {
            "f32" => {
                // torchvision built its float32 tensors from the same doubles, rounding to nearest.
                let boxes: Vec<[f32; 4]> = boxes.iter().map(|b| b.map(|v| v as f32)).collect();
                let scores: Vec<f32> = scores.iter().map(|&s| s as f32).collect();
                batched_nms(&boxes, &scores, &classes, threshold).unwrap()
            }
            "f64" => batched_nms(&boxes, &scores, &classes, threshold).unwrap(),
            other => panic!("{name}: unknown dtype {other}"),
        };
        assert_eq!(got, want, "{name}");
        if !name.starts_with("degenerate") {
            assert!(
                want.len() < boxes.len(),
                "{name}: the case should suppress something"
            );
        }
    }
}

#[test]
fn gfl_decode_matches_the_pytorch_peer() {
    let fixture = read_json("gfl.json");
    let num_classes = fixture["num_classes"].as_u64().unwrap() as usize;
    let reg_max = fixture["reg_max"].as_u64().unwrap() as usize;
    let to_f32 = |v: &Value| f64s(v).into_iter().map(|x| x as f32).collect::<Vec<f32>>();
    struct LevelData {
        cls: Vec<f32>,
        boxes: Vec<f32>,
        height: usize,
        width: usize,
        stride: f32,
    }
    let level_data: Vec<LevelData> = fixture["levels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| LevelData {
            cls: to_f32(&l["cls_logits"]),
            boxes: to_f32(&l["box_logits"]),
            height: l["height"].as_u64().unwrap() as usize,
            width: l["width"].as_u64().unwrap() as usize,
            stride: l["stride"].as_f64().unwrap() as f32,
        })
        .collect();
    let levels: Vec<GflLevel<'_>> = level_data
        .iter()
        .map(|l| GflLevel {
            cls_logits: &l.cls,
            box_logits: &l.boxes,
            height: l.height,
            width: l.width,
            stride: l.stride,
        })
        .collect();
    // Category ids unlike the class indices, to check the mapping.
    let class_to_category: Vec<u64> = (0..num_classes as u64).map(|c| 100 + 7 * c).collect();

    let cases = fixture["cases"].as_object().unwrap();
    assert_eq!(cases.len(), 4);
    for (name, case) in cases {
        let cfg = &case["config"];
        let config = GflDecodeConfig {
            reg_max,
            nms_pre: cfg["nms_pre"].as_u64().map(|n| n as usize),
            score_thr: cfg["score_thr"].as_f64().unwrap() as f32,
            iou_threshold: cfg["iou_threshold"].as_f64().unwrap(),
            max_per_img: cfg["max_per_img"].as_u64().map(|n| n as usize),
            selection: match cfg["selection"].as_str().unwrap() {
                "locations" => PreNmsSelection::TopLocationsByMaxScore,
                "pairs" => PreNmsSelection::TopScoredPairs,
                other => panic!("{name}: unknown selection {other}"),
            },
        };
        let scale_factor = cfg.get("scale_factor").map(|v| {
            let f = to_f32(v);
            [f[0], f[1]]
        });
        let image = GflImage {
            image_id: 5,
            height: fixture["img_height"].as_f64().unwrap() as f32,
            width: fixture["img_width"].as_f64().unwrap() as f32,
            scale_factor,
        };
        let got = decode_gfl(&levels, &image, &class_to_category, &config).unwrap();
        let want = case["detections"].as_array().unwrap();
        assert!(!want.is_empty(), "{name}");
        assert_eq!(got.len(), want.len(), "{name}: detection count");
        for (n, (g, w)) in got.iter().zip(want).enumerate() {
            let class = w["class"].as_u64().unwrap();
            assert_eq!(
                g.category_id, class_to_category[class as usize],
                "{name} detection {n}: category"
            );
            assert_eq!(g.image_id, 5);
            let score = w["score"].as_f64().unwrap();
            assert!(
                (g.score - score).abs() <= 1e-6,
                "{name} detection {n}: score {} vs {score}",
                g.score
            );
            for (gv, wv) in g.bbox.iter().zip(f64s(&w["bbox"])) {
                // f32 softmax/exp differ from PyTorch's in the last bits; boxes are tens of pixels.
                assert!(
                    (gv - wv).abs() <= 1e-3,
                    "{name} detection {n}: bbox {:?} vs {:?}",
                    g.bbox,
                    w["bbox"]
                );
            }
        }
    }
}
