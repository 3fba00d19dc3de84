//! ATSS assignment against mmdet's algorithm written in PyTorch (scripts/make_fixtures_atss.py).

use detkd::engine::assign::{anchors, atss_assign, AnchorLevel, AtssConfig};
use serde_json::Value;

macro_rules! fixtures {
    ($($name:literal),* $(,)?) => {
        [$(($name, include_str!(concat!("fixtures/atss/", $name, ".json")))),*]
    };
}

#[test]
fn atss_matches_mmdet() {
    for (name, text) in fixtures!["tiny_gfl_128", "crowded_96", "single_small_box", "no_boxes"] {
        let case: Value = serde_json::from_str(text).unwrap();
        let levels: Vec<AnchorLevel> = case["levels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| AnchorLevel {
                height: l["height"].as_u64().unwrap() as usize,
                width: l["width"].as_u64().unwrap() as usize,
                stride: l["stride"].as_f64().unwrap(),
            })
            .collect();
        let gts: Vec<[f64; 4]> = case["gt_boxes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                let v: Vec<f64> = b
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect();
                [v[0], v[1], v[2], v[3]]
            })
            .collect();
        let (boxes, counts) = anchors(&levels, case["anchor_scale"].as_f64().unwrap());
        let cfg = AtssConfig {
            topk: case["topk"].as_u64().unwrap() as usize,
        };
        let got = atss_assign(&boxes, &counts, &gts, &cfg).unwrap();
        let want: Vec<i64> = case["assigned"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let got: Vec<i64> = got
            .gt_index
            .iter()
            .map(|g| g.map_or(-1, |g| g as i64))
            .collect();
        assert_eq!(got, want, "{name}");
    }
}
