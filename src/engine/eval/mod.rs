//! Evaluation of detectors on the host (no CUDA): COCO box metrics that reproduce pycocotools'
//! `COCOeval` exactly ([`coco`]), COCO JSON annotation and results files ([`coco_json`]), class-wise
//! non-maximum suppression with torchvision's semantics ([`mod@nms`]), and GFL head post-processing into
//! COCO detections ([`gfl`]).
//!
//! ```
//! use detkd::engine::eval::{evaluate, Detection, GroundTruth};
//!
//! let gts = vec![GroundTruth { image_id: 1, category_id: 1, bbox: [10.0, 10.0, 50.0, 40.0], area: 2000.0, iscrowd: false }];
//! let dets = vec![Detection { image_id: 1, category_id: 1, bbox: [12.0, 10.0, 50.0, 40.0], score: 0.9 }];
//! let stats = evaluate(&gts, &dets, &[1], &[1])?;
//! // IoU 1920/2080 ≈ 0.92: a hit at thresholds 0.50..=0.90, a miss at 0.95. (pycocotools' ε in the
//! // precision denominator keeps a perfect score a hair under 1.)
//! assert!((stats.ap50 - 1.0).abs() < 1e-12);
//! assert!((stats.ap - 0.9).abs() < 1e-12);
//! assert_eq!(stats.ap_small, -1.0); // no small objects
//! # Ok::<(), detkd::Error>(())
//! ```

pub mod coco;
pub mod coco_json;
pub mod gfl;
pub mod nms;

pub use coco::{evaluate, evaluate_detailed, CocoEvaluation, CocoStats, Detection, GroundTruth};
pub use coco_json::{
    load_annotations, load_results, parse_annotations, parse_results, results_to_json,
    save_results, CocoCategory, CocoDataset, CocoImage,
};
pub use gfl::{decode_gfl, GflDecodeConfig, GflImage, GflLevel, PreNmsSelection};
pub use nms::{batched_nms, box_iou_xyxy, nms};
