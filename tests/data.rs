//! The detection data layer: synthetic shapes (determinism, coverage, the visibility rule, box tightness),
//! the COCO exporter and loader (round trip and every error rule), transforms, collation and the loader.

use std::path::Path;

use detkd::engine::data::{
    collate, export_coco, fit_size, flip_horizontal, pad_to_multiple, resize, resize_to_fit,
    CocoDataset, DataLoader, Dataset, Image, ImageMeta, LoaderConfig, Normalization, ObjectSpec,
    Sample, Scene, ShapeClass, SyntheticConfig, SyntheticShapes, Target, Transform, NO_OWNER,
};
use detkd::{DType, Error};

fn bits(sample: &Sample) -> Vec<u32> {
    sample.image.data().iter().map(|v| v.to_bits()).collect()
}

fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
        .install(f)
}

// ---------------------------------------------------------------------------------------------------------
// Synthetic shapes

#[test]
fn synthetic_is_deterministic_across_runs_and_thread_counts() {
    let split = SyntheticShapes::new(SyntheticConfig::default(), 7, 24).unwrap();
    let one = in_pool(1, || split.generate_all().unwrap());
    let two = in_pool(2, || split.generate_all().unwrap());
    let four = in_pool(4, || split.generate_all().unwrap());
    assert_eq!(one.len(), 24);
    for ((a, b), c) in one.iter().zip(&two).zip(&four) {
        assert_eq!(bits(a), bits(b));
        assert_eq!(bits(a), bits(c));
        assert_eq!((&a.boxes, &a.labels), (&b.boxes, &b.labels));
        assert_eq!((&a.boxes, &a.labels), (&c.boxes, &c.labels));
    }
    // A fresh generator with the same seed, sample by sample in reverse order, agrees byte for byte.
    let again = SyntheticShapes::new(SyntheticConfig::default(), 7, 24).unwrap();
    for i in (0..24).rev() {
        let sample = again.get(i).unwrap();
        assert_eq!(bits(&sample), bits(&one[i]));
        assert_eq!(sample, one[i]);
        assert_eq!(again.render(i).unwrap().rgb, split.render(i).unwrap().rgb);
    }
    // Another seed gives other images.
    let other = SyntheticShapes::new(SyntheticConfig::default(), 8, 24).unwrap();
    for (i, sample) in one.iter().enumerate() {
        assert_ne!(bits(&other.get(i).unwrap()), bits(sample), "image {i}");
    }
    // Images within a split differ from each other too.
    assert_ne!(bits(&one[0]), bits(&one[1]));
}

#[test]
fn splits_come_from_independent_seeds() {
    let (train, val) = SyntheticShapes::splits(SyntheticConfig::default(), 3, 10, 5).unwrap();
    assert_eq!((train.len(), val.len()), (10, 5));
    assert_ne!(train.seed(), val.seed());
    let (train2, val2) = SyntheticShapes::splits(SyntheticConfig::default(), 3, 10, 5).unwrap();
    assert_eq!((train.seed(), val.seed()), (train2.seed(), val2.seed()));
    let train_images: Vec<Vec<u8>> = (0..10).map(|i| train.render(i).unwrap().rgb).collect();
    for i in 0..5 {
        let v = val.render(i).unwrap().rgb;
        assert!(
            train_images.iter().all(|t| *t != v),
            "val {i} repeats a train image"
        );
    }
    assert!(train.get(10).is_err());
    assert!(val.scene(5).is_err());
}

#[test]
fn synthetic_covers_every_class_and_the_size_range() {
    let config = SyntheticConfig::default();
    let split = SyntheticShapes::new(config.clone(), 11, 300).unwrap();
    let mut kept_per_class = [0usize; 8];
    let mut sizes = Vec::new();
    for i in 0..300 {
        let scene = split.scene(i).unwrap();
        assert!((1..=8).contains(&scene.objects.len()));
        let rendered = split.render(i).unwrap();
        assert!(
            rendered.objects.iter().any(|o| o.kept),
            "the last-drawn object of image {i} is always visible"
        );
        for (spec, record) in scene.objects.iter().zip(&rendered.objects) {
            // The whole shape lies inside the image.
            let (cx, cy) = spec.center;
            let (w, h) = spec.size;
            assert!(cx - w / 2.0 >= 0.0 && cx + w / 2.0 <= 128.0);
            assert!(cy - h / 2.0 >= 0.0 && cy + h / 2.0 <= 128.0);
            let longer = w.max(h);
            assert!((6.0..=64.0).contains(&longer), "size {longer}");
            sizes.push(longer);
            let full = record
                .full_box
                .expect("every generated shape covers pixel centres");
            // The full pixels' box spans the shape's box to within a pixel.
            assert!((full[2] - full[0]) <= w + 1.0 && (full[2] - full[0]) >= w.min(4.0) - 1.0);
            if record.kept {
                kept_per_class[record.label] += 1;
            }
        }
    }
    for (label, &n) in kept_per_class.iter().enumerate() {
        assert!(
            n >= 50,
            "class {:?} has only {n} boxes",
            ShapeClass::ALL[label]
        );
    }
    sizes.sort_by(f32::total_cmp);
    assert!(
        sizes[0] < 7.0 && *sizes.last().unwrap() > 55.0,
        "{:?}",
        (sizes[0], sizes.last())
    );
    // Log-uniform: about half the objects are below the geometric mean of 6 and 64 (≈ 19.6 px).
    let small = sizes.iter().filter(|&&s| s < 19.6).count() as f64 / sizes.len() as f64;
    assert!(
        (0.4..0.6).contains(&small),
        "fraction below 19.6 px: {small}"
    );
}

#[test]
fn boxes_are_tight_valid_and_follow_the_owner_map() {
    let config = SyntheticConfig::default();
    let split = SyntheticShapes::new(config.clone(), 5, 60).unwrap();
    let mut dropped = 0;
    for i in 0..60 {
        let rendered = split.render(i).unwrap();
        let sample = split.get(i).unwrap();
        let (h, w) = (rendered.height, rendered.width);
        assert_eq!((sample.image.height(), sample.image.width()), (h, w));
        let kept: Vec<usize> = (0..rendered.objects.len())
            .filter(|&k| rendered.objects[k].kept)
            .collect();
        assert_eq!(sample.boxes.len(), kept.len());
        assert_eq!(sample.crowd, vec![false; kept.len()]);
        for (k, record) in rendered.objects.iter().enumerate() {
            // Recount from the owner map.
            let mut visible = 0;
            let mut extent = [usize::MAX, usize::MAX, 0, 0];
            for (p, &o) in rendered.owner.iter().enumerate() {
                if o as usize == k {
                    visible += 1;
                    let (x, y) = (p % w, p / w);
                    extent = [
                        extent[0].min(x),
                        extent[1].min(y),
                        extent[2].max(x + 1),
                        extent[3].max(y + 1),
                    ];
                }
            }
            assert_eq!(visible, record.visible_pixels);
            assert!(record.visible_pixels <= record.full_pixels);
            let rule = record.full_pixels > 0
                && record.visible_pixels as f64 >= 0.5 * record.full_pixels as f64;
            assert_eq!(record.kept, rule, "image {i} object {k}");
            dropped += usize::from(!record.kept);
            if visible > 0 {
                let want = extent.map(|v| v as f32);
                assert_eq!(record.visible_box, Some(want), "image {i} object {k}");
            } else {
                assert_eq!(record.visible_box, None);
            }
        }
        for (j, &k) in kept.iter().enumerate() {
            let b = sample.boxes[j];
            assert_eq!(Some(b), rendered.objects[k].visible_box);
            assert_eq!(sample.labels[j], rendered.objects[k].label);
            assert!(b[0] >= 0.0 && b[1] >= 0.0 && b[2] <= w as f32 && b[3] <= h as f32);
            assert!(b[0] < b[2] && b[1] < b[3]);
            assert!(
                b.iter().all(|v| v.fract() == 0.0),
                "pixel-edge boxes are integral"
            );
            assert!(sample.labels[j] < 8);
        }
    }
    assert!(
        dropped > 0,
        "some objects should be occluded below the visibility threshold"
    );
}

fn clean_config() -> SyntheticConfig {
    SyntheticConfig {
        noise_std: 0.0,
        clutter_per_image: (0, 0),
        ..SyntheticConfig::default()
    }
}

fn square(center: (f32, f32), side: f32, color: [f32; 3]) -> ObjectSpec {
    ObjectSpec {
        class: ShapeClass::Square,
        center,
        size: (side, side),
        color: Some(color),
    }
}

#[test]
fn visibility_rule_by_hand() {
    let config = clean_config();
    // A 20×20 square centred at (30, 30) owns pixel columns and rows 20..40: 400 pixels.
    let target = square((30.0, 30.0), 20.0, [1.0, 0.0, 0.0]);
    let cases = [
        // (occluder centre x, visible columns, kept)
        (46.0, 16, true), // covers columns 36..56: 80% visible
        (40.0, 10, true), // covers 30..50: exactly 50%, kept (≥)
        (38.0, 8, false), // covers 28..48: 40%
        (30.0, 0, false), // covers it completely
    ];
    for (occluder_x, columns, kept) in cases {
        let scene = Scene {
            seed: 1,
            objects: vec![
                target.clone(),
                square((occluder_x, 30.0), 20.0, [0.0, 0.0, 1.0]),
            ],
        };
        let rendered = config.render(&scene).unwrap();
        let record = &rendered.objects[0];
        assert_eq!(record.full_pixels, 400);
        assert_eq!(record.full_box, Some([20.0, 20.0, 40.0, 40.0]));
        assert_eq!(
            record.visible_pixels,
            20 * columns,
            "occluder at {occluder_x}"
        );
        assert_eq!(record.kept, kept, "occluder at {occluder_x}");
        let sample = rendered.to_sample(0, &config.normalization).unwrap();
        let occluder_box = rendered.objects[1].visible_box.unwrap();
        if kept {
            let want = [20.0, 20.0, 20.0 + columns as f32, 40.0];
            assert_eq!(record.visible_box, Some(want));
            assert_eq!(sample.boxes, vec![want, occluder_box]);
        } else {
            assert_eq!(
                sample.boxes,
                vec![occluder_box],
                "an occluded object gets no box"
            );
        }
        assert_eq!(sample.labels.len(), sample.boxes.len());
    }

    // A small shape fully inside a larger later one: no visible pixel, no box, no label.
    let scene = Scene {
        seed: 2,
        objects: vec![
            ObjectSpec {
                class: ShapeClass::Star,
                center: (64.0, 64.0),
                size: (12.0, 11.4),
                color: None,
            },
            square((64.0, 64.0), 30.0, [0.2, 0.9, 0.2]),
        ],
    };
    let rendered = config.render(&scene).unwrap();
    assert!(rendered.objects[0].full_pixels > 20);
    assert_eq!(rendered.objects[0].visible_pixels, 0);
    assert!(!rendered.objects[0].kept);
    assert!(!rendered.owner.contains(&0));
    let sample = rendered.to_sample(0, &config.normalization).unwrap();
    assert_eq!(sample.labels, vec![1], "only the square (label 1) remains");

    // The rendered colour: owned pixels are the object's colour exactly (no noise, no clutter).
    let p = 64 * 128 + 64;
    assert_eq!(&rendered.rgb[3 * p..3 * p + 3], &[51, 230, 51]);
    assert_eq!(rendered.owner[p], 1);
    assert_eq!(rendered.owner[0], NO_OWNER);

    // A stricter rule drops the 80%-visible square too.
    let strict = SyntheticConfig {
        min_visible_fraction: 0.9,
        ..clean_config()
    };
    let scene = Scene {
        seed: 1,
        objects: vec![target, square((46.0, 30.0), 20.0, [0.0, 0.0, 1.0])],
    };
    assert!(!strict.render(&scene).unwrap().objects[0].kept);
}

#[test]
fn edges_are_anti_aliased() {
    let config = clean_config();
    // A square whose left edge sits on a pixel centre: that column is half covered.
    let scene = Scene {
        seed: 3,
        objects: vec![square((30.5, 30.0), 20.0, [1.0, 1.0, 1.0])],
    };
    let rendered = config.render(&scene).unwrap();
    let inside = 30 * 128 + 30;
    let edge = 30 * 128 + 20; // centre 20.5 = left edge
    let outside = 30 * 128 + 18;
    let lum = |p: usize| rendered.rgb[3 * p] as i32;
    assert_eq!(lum(inside), 255);
    assert!(
        lum(edge) < 255 && lum(edge) > lum(outside),
        "{} {}",
        lum(edge),
        lum(outside)
    );
    assert_eq!(rendered.owner[edge], 0, "coverage ½ belongs to the shape");
}

#[test]
fn synthetic_config_and_scenes_are_validated() {
    let bad = [
        (
            "height",
            SyntheticConfig {
                height: 4,
                ..Default::default()
            },
        ),
        (
            "classes",
            SyntheticConfig {
                classes: vec![],
                ..Default::default()
            },
        ),
        (
            "classes",
            SyntheticConfig {
                classes: vec![ShapeClass::Ring, ShapeClass::Ring],
                ..Default::default()
            },
        ),
        (
            "min_object_size",
            SyntheticConfig {
                min_object_size: 80.0,
                ..Default::default()
            },
        ),
        (
            "min_object_size",
            SyntheticConfig {
                min_object_size: f32::NAN,
                ..Default::default()
            },
        ),
        (
            "max_object_fraction",
            SyntheticConfig {
                max_object_fraction: 1.5,
                ..Default::default()
            },
        ),
        (
            "objects_per_image",
            SyntheticConfig {
                objects_per_image: (0, 3),
                ..Default::default()
            },
        ),
        (
            "objects_per_image",
            SyntheticConfig {
                objects_per_image: (5, 3),
                ..Default::default()
            },
        ),
        (
            "clutter_per_image",
            SyntheticConfig {
                clutter_per_image: (0, 5000),
                ..Default::default()
            },
        ),
        (
            "noise_std",
            SyntheticConfig {
                noise_std: -0.1,
                ..Default::default()
            },
        ),
        (
            "min_contrast",
            SyntheticConfig {
                min_contrast: 2.0,
                ..Default::default()
            },
        ),
        (
            "min_visible_fraction",
            SyntheticConfig {
                min_visible_fraction: 0.0,
                ..Default::default()
            },
        ),
        (
            "normalization.std",
            SyntheticConfig {
                normalization: Normalization {
                    std: [0.0; 3],
                    ..Normalization::IMAGENET
                },
                ..Default::default()
            },
        ),
    ];
    for (arg, config) in bad {
        let err = SyntheticShapes::new(config, 0, 1).unwrap_err();
        assert!(err.to_string().contains(arg), "{arg}: {err}");
    }
    let config = SyntheticConfig {
        classes: vec![ShapeClass::Circle],
        ..clean_config()
    };
    let render = |object: ObjectSpec| {
        config.render(&Scene {
            seed: 0,
            objects: vec![object],
        })
    };
    let err = render(square((5.0, 5.0), 4.0, [0.0; 3])).unwrap_err();
    assert!(
        err.to_string().contains("scene.objects[0]") && err.to_string().contains("Square"),
        "{err}"
    );
    let mut circle = square((5.0, 5.0), 4.0, [0.0; 3]);
    circle.class = ShapeClass::Circle;
    circle.size = (0.0, 4.0);
    assert!(render(circle.clone()).is_err());
    circle.size = (4.0, 4.0);
    circle.center = (f32::INFINITY, 1.0);
    assert!(render(circle.clone()).is_err());
    circle.center = (5.0, 5.0);
    circle.color = Some([0.0, 1.5, 0.0]);
    assert!(render(circle.clone()).is_err());
    circle.color = None;
    assert!(render(circle).is_ok());
}

// ---------------------------------------------------------------------------------------------------------
// COCO export and loading

#[test]
fn export_then_load_round_trips_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let split = SyntheticShapes::new(SyntheticConfig::default(), 21, 12).unwrap();
    let export = export_coco(&split, dir.path()).unwrap();
    assert_eq!(export.images, 12);
    let loaded = CocoDataset::load_with(
        &export.annotation_file,
        &export.image_dir,
        split.config().normalization,
    )
    .unwrap();
    assert_eq!(loaded.len(), 12);
    assert_eq!(loaded.class_names(), split.class_names());
    assert_eq!(loaded.report().annotations, export.annotations);
    assert_eq!(loaded.report().degenerate_dropped, 0);
    assert_eq!(loaded.category_id(0), Some(1));
    assert_eq!(loaded.label_of_category(8), Some(7));
    assert_eq!(loaded.label_of_category(9), None);
    let mut boxes = 0;
    for i in 0..12 {
        let want = split.get(i).unwrap();
        let got = loaded.get(i).unwrap();
        assert_eq!(bits(&got), bits(&want), "image {i}");
        assert_eq!(got, want, "image {i}");
        assert_eq!(
            loaded.decode_rgb8(i).unwrap().0,
            split.render(i).unwrap().rgb
        );
        boxes += got.boxes.len();
    }
    assert_eq!(boxes, export.annotations);
    // Exporting again writes the same files.
    let again = tempfile::tempdir().unwrap();
    let export2 = export_coco(&split, again.path()).unwrap();
    assert_eq!(
        std::fs::read(&export.annotation_file).unwrap(),
        std::fs::read(&export2.annotation_file).unwrap()
    );
    assert_eq!(
        std::fs::read(export.image_dir.join("000003.png")).unwrap(),
        std::fs::read(export2.image_dir.join("000003.png")).unwrap()
    );
}

/// A temp folder with `images/a.png` (4×3) and `images/b.jpg` (5×2) and an annotation file with `json`.
struct CocoFixture {
    dir: tempfile::TempDir,
}

impl CocoFixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images");
        std::fs::create_dir(&images).unwrap();
        let png =
            image::RgbImage::from_fn(4, 3, |x, y| image::Rgb([x as u8 * 60, y as u8 * 80, 7]));
        png.save(images.join("a.png")).unwrap();
        let jpg = image::RgbImage::from_fn(5, 2, |_, _| image::Rgb([200, 100, 50]));
        jpg.save(images.join("b.jpg")).unwrap();
        CocoFixture { dir }
    }

    fn write(&self, json: &str) -> std::path::PathBuf {
        let path = self.dir.path().join("ann.json");
        std::fs::write(&path, json).unwrap();
        path
    }

    fn images(&self) -> std::path::PathBuf {
        self.dir.path().join("images")
    }

    fn load(&self, json: &str) -> Result<CocoDataset, Error> {
        let path = self.write(json);
        CocoDataset::load(path, self.images())
    }
}

const IMAGES: &str = r#""images": [
    {"id": 10, "file_name": "a.png", "width": 4, "height": 3},
    {"id": 20, "file_name": "b.jpg", "width": 5, "height": 2}
]"#;
const CATEGORIES: &str = r#""categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}]"#;

fn coco_json(annotations: &str) -> String {
    format!("{{{IMAGES}, {CATEGORIES}, \"annotations\": [{annotations}]}}")
}

#[test]
fn coco_loader_reads_images_boxes_and_categories() {
    let fixture = CocoFixture::new();
    let data = fixture
        .load(&coco_json(
            r#"{"id": 1, "image_id": 10, "category_id": 7, "bbox": [0.5, 1, 2, 1.5]},
               {"id": 2, "image_id": 10, "category_id": 3, "bbox": [1, 0, 10, 10], "iscrowd": 1},
               {"id": 3, "image_id": 20, "category_id": 3, "bbox": [0, 0, 5, 2], "iscrowd": false},
               {"id": 4, "image_id": 20, "category_id": 7, "bbox": [2, 1, 0, 1]},
               {"id": 5, "image_id": 20, "category_id": 7, "bbox": [6, 0, 3, 1]}"#,
        ))
        .unwrap();
    assert_eq!(data.len(), 2);
    // Categories sorted by id: dog (3) → 0, cat (7) → 1.
    assert_eq!(data.class_names(), ["dog".to_string(), "cat".to_string()]);
    assert_eq!(data.category_id(1), Some(7));
    let report = data.report();
    assert_eq!((report.images, report.annotations, report.crowd), (2, 3, 1));
    assert_eq!(
        report.degenerate_dropped, 2,
        "zero width and outside the image"
    );
    assert!(report.degenerate_examples[0].contains("annotations[3] (id 4)"));
    assert!(report.degenerate_examples[1].contains("annotations[4] (id 5)"));

    let a = data.get(0).unwrap();
    assert_eq!(a.image_id, 10);
    assert_eq!(
        a.boxes,
        vec![[0.5, 1.0, 2.5, 2.5], [1.0, 0.0, 4.0, 3.0]],
        "xywh → xyxy, clipped"
    );
    assert_eq!(a.labels, vec![1, 0]);
    assert_eq!(a.crowd, vec![false, true]);
    let norm = Normalization::IMAGENET;
    let pixel = |x: usize, y: usize, c: usize| a.image.channel(c)[y * 4 + x];
    assert_eq!(pixel(3, 2, 0), (180.0 / 255.0 - norm.mean[0]) / norm.std[0]);
    assert_eq!(pixel(3, 2, 1), (160.0 / 255.0 - norm.mean[1]) / norm.std[1]);
    assert_eq!(pixel(0, 0, 2), (7.0 / 255.0 - norm.mean[2]) / norm.std[2]);

    let b = data.get(1).unwrap();
    assert_eq!((b.image.height(), b.image.width()), (2, 5));
    assert_eq!(b.boxes, vec![[0.0, 0.0, 5.0, 2.0]]);
    // JPEG is lossy; a flat colour decodes close to itself.
    let red = b.image.channel(0)[0] * norm.std[0] + norm.mean[0];
    assert!((red * 255.0 - 200.0).abs() < 4.0, "{red}");

    let target = Target::from_sample(&a).unwrap();
    assert_eq!(target.boxes, vec![[0.5, 1.0, 2.5, 2.5]]);
    assert_eq!(target.crowd_boxes, vec![[1.0, 0.0, 4.0, 3.0]]);
    assert_eq!((target.labels, target.crowd_labels), (vec![1], vec![0]));
    assert!(data.get(2).is_err());

    // Files without annotations (test sets) load with no boxes.
    let data = fixture
        .load(&format!("{{{IMAGES}, {CATEGORIES}}}"))
        .unwrap();
    assert!(data.get(1).unwrap().boxes.is_empty());
}

/// Loading `json` fails, naming the annotation file and every fragment of `expected`.
#[track_caller]
fn assert_load_error(fixture: &CocoFixture, json: &str, expected: &[&str]) {
    let err = fixture
        .load(json)
        .expect_err("the file should be rejected")
        .to_string();
    assert!(err.contains("ann.json"), "{err}");
    for fragment in expected {
        assert!(err.contains(fragment), "`{fragment}` missing from: {err}");
    }
}

#[test]
fn coco_loader_rejects_every_bad_input() {
    let fixture = CocoFixture::new();
    let ok = r#"{"id": 1, "image_id": 10, "category_id": 7, "bbox": [0, 0, 1, 1]}"#;
    assert!(fixture.load(&coco_json(ok)).is_ok());

    // Malformed JSON: truncated, and a NaN literal (as Python's json.dump writes it).
    assert_load_error(&fixture, &coco_json(ok)[..60], &["malformed JSON", "line"]);
    assert_load_error(
        &fixture,
        &coco_json(r#"{"id": 1, "image_id": 10, "category_id": 7, "bbox": [NaN, 0, 1, 1]}"#),
        &["malformed JSON"],
    );
    assert_load_error(&fixture, "[1, 2]", &["the top level", "expected an object"]);
    // Missing or mistyped top-level lists.
    assert_load_error(
        &fixture,
        &format!("{{{CATEGORIES}}}"),
        &["images", "missing"],
    );
    assert_load_error(
        &fixture,
        &format!("{{{IMAGES}}}"),
        &["categories", "missing"],
    );
    assert_load_error(
        &fixture,
        &format!("{{{IMAGES}, {CATEGORIES}, \"annotations\": 3}}"),
        &["annotations", "expected an array"],
    );
    // Image entries.
    let with_images = |images: &str| format!("{{\"images\": [{images}], {CATEGORIES}}}");
    assert_load_error(
        &fixture,
        &with_images(r#"{"id": 10, "file_name": "missing.png", "width": 4, "height": 3}"#),
        &["images[0] (id 10)", "missing.png", "does not exist"],
    );
    assert_load_error(
        &fixture,
        &with_images(r#"{"id": 10, "width": 4, "height": 3}"#),
        &["images[0] (id 10)", "`file_name`"],
    );
    assert_load_error(
        &fixture,
        &with_images(r#"{"id": -1, "file_name": "a.png", "width": 4, "height": 3}"#),
        &["images[0]", "`id`", "non-negative integer"],
    );
    assert_load_error(
        &fixture,
        &with_images(r#"{"id": 10, "file_name": "a.png", "width": 0, "height": 3}"#),
        &["images[0] (id 10)", "`width`"],
    );
    assert_load_error(
        &fixture,
        &with_images(r#"{"id": 10, "file_name": "a.png", "width": 4, "height": -3}"#),
        &["images[0] (id 10)", "`height`"],
    );
    assert_load_error(
        &fixture,
        &with_images(
            r#"{"id": 10, "file_name": "a.png", "width": 4, "height": 3},
               {"id": 10, "file_name": "b.jpg", "width": 5, "height": 2}"#,
        ),
        &["images[1] (id 10)", "duplicate image id 10"],
    );
    assert_load_error(
        &fixture,
        &with_images("7"),
        &["images[0]", "expected an object"],
    );
    // Categories.
    assert_load_error(
        &fixture,
        &format!("{{{IMAGES}, \"categories\": [{{\"id\": 1, \"name\": \"a\"}}, {{\"id\": 1, \"name\": \"b\"}}]}}"),
        &["categories[1] (id 1)", "duplicate category id 1"],
    );
    assert_load_error(
        &fixture,
        &format!("{{{IMAGES}, \"categories\": [{{\"id\": 1}}]}}"),
        &["categories[0] (id 1)", "`name`"],
    );
    // Annotations.
    let cases: [(&str, &[&str]); 9] = [
        (
            r#"{"id": 4, "image_id": 99, "category_id": 7, "bbox": [0, 0, 1, 1]}"#,
            &["annotations[0] (id 4)", "image_id 99"],
        ),
        (
            r#"{"id": 4, "image_id": 10, "category_id": 5, "bbox": [0, 0, 1, 1]}"#,
            &["annotations[0] (id 4)", "category_id 5"],
        ),
        (
            r#"{"id": 4, "image_id": 10, "category_id": 7, "bbox": [0, 0, -1, 1]}"#,
            &[
                "annotations[0] (id 4)",
                "non-negative width and height",
                "width -1",
            ],
        ),
        (
            r#"{"id": 4, "image_id": 10, "category_id": 7, "bbox": [0, 0, 1, -0.5]}"#,
            &["annotations[0] (id 4)", "height -0.5"],
        ),
        (
            r#"{"id": 4, "image_id": 10, "category_id": 7, "bbox": ["NaN", 0, 1, 1]}"#,
            &["annotations[0] (id 4)", "`bbox`", "finite numbers"],
        ),
        (
            r#"{"id": 4, "image_id": 10, "category_id": 7, "bbox": [0, 0, 1]}"#,
            &["annotations[0] (id 4)", "`bbox`"],
        ),
        (
            r#"{"id": 4, "image_id": 10, "category_id": 7}"#,
            &["annotations[0] (id 4)", "`bbox`", "missing"],
        ),
        (
            r#"{"id": 4, "image_id": 10, "category_id": 7, "bbox": [0, 0, 1, 1], "iscrowd": 2}"#,
            &["annotations[0] (id 4)", "`iscrowd`"],
        ),
        (
            r#"{"id": 4, "category_id": 7, "bbox": [0, 0, 1, 1]}"#,
            &["annotations[0] (id 4)", "`image_id`"],
        ),
    ];
    for (annotation, expected) in cases {
        // After a valid entry, so the bad one is annotations[1].
        let expected: Vec<&str> = expected
            .iter()
            .map(|e| {
                if *e == "annotations[0] (id 4)" {
                    "annotations[1] (id 4)"
                } else {
                    e
                }
            })
            .collect();
        assert_load_error(
            &fixture,
            &coco_json(&format!("{ok}, {annotation}")),
            &expected,
        );
    }
    // An overflowing number is not finite.
    assert!(fixture
        .load(&coco_json(
            r#"{"id": 4, "image_id": 10, "category_id": 7, "bbox": [1e999, 0, 1, 1]}"#
        ))
        .is_err());

    // A missing annotation file is an I/O error naming it.
    let err =
        CocoDataset::load(fixture.dir.path().join("nope.json"), fixture.images()).unwrap_err();
    assert!(
        matches!(err, Error::Io { .. }) && err.to_string().contains("nope.json"),
        "{err}"
    );
}

#[test]
fn coco_loader_reports_bad_image_files_on_get() {
    let fixture = CocoFixture::new();
    std::fs::write(fixture.images().join("broken.png"), b"not a png at all").unwrap();
    let json = r#"{"images": [
        {"id": 1, "file_name": "broken.png", "width": 4, "height": 3},
        {"id": 2, "file_name": "a.png", "width": 5, "height": 3}
    ], "categories": []}"#;
    let data = fixture.load(json).unwrap();
    let err = data.get(0).unwrap_err().to_string();
    assert!(
        err.contains("ann.json: images[0] (id 1)")
            && err.contains("broken.png")
            && err.contains("cannot decode"),
        "{err}"
    );
    let err = data.get(1).unwrap_err().to_string();
    assert!(
        err.contains("images[1] (id 2)") && err.contains("4×3") && err.contains("5×3"),
        "{err}"
    );
    // The loader surfaces them as errors, batch by batch.
    let loader = DataLoader::new(
        &data,
        LoaderConfig {
            batch_size: 1,
            shuffle: false,
            ..Default::default()
        },
        Transform::default(),
    )
    .unwrap();
    let results: Vec<_> = loader.epoch(0).collect();
    assert_eq!(results.len(), 2);
    assert!(results.iter().all(|r| r.is_err()));
}

#[test]
fn coco_loader_accepts_paths_in_subfolders() {
    let fixture = CocoFixture::new();
    let sub = fixture.images().join("val");
    std::fs::create_dir(&sub).unwrap();
    std::fs::copy(fixture.images().join("a.png"), sub.join("c.png")).unwrap();
    let json = format!(
        "{{\"images\": [{{\"id\": 0, \"file_name\": \"val/c.png\", \"width\": 4, \"height\": 3}}], {CATEGORIES}}}"
    );
    let data = fixture.load(&json).unwrap();
    assert_eq!(data.get(0).unwrap().image.width(), 4);
    assert_eq!(data.images()[0].file_name, "val/c.png");
    assert!(Path::new(&data.image_dir()).ends_with("images"));
}

// ---------------------------------------------------------------------------------------------------------
// Transforms and collation

/// An image whose value at `(c, y, x)` is `f(c, y, x)`.
fn image_from(h: usize, w: usize, f: impl Fn(usize, usize, usize) -> f32) -> Image {
    let mut data = Vec::new();
    for c in 0..3 {
        for y in 0..h {
            for x in 0..w {
                data.push(f(c, y, x));
            }
        }
    }
    Image::new(h, w, data).unwrap()
}

#[test]
fn resize_keeps_aspect_and_scales_boxes() {
    assert_eq!(fit_size(4, 8, (2, 8)).unwrap(), (2, 4));
    assert_eq!(fit_size(480, 640, (800, 1333)).unwrap(), (800, 1067));
    assert_eq!(fit_size(100, 50, (64, 64)).unwrap(), (64, 32));
    assert_eq!(
        fit_size(3, 1000, (10, 10)).unwrap(),
        (1, 10),
        "never below one pixel"
    );
    assert!(fit_size(0, 5, (10, 10)).is_err());
    assert!(fit_size(5, 5, (0, 10)).is_err());

    // Halving a ramp: output x' samples source x = 2x' + ½, the mean of two neighbours.
    let ramp = image_from(4, 8, |c, y, x| (x + 10 * y + 100 * c) as f32);
    let (small, boxes, scale) = resize_to_fit(&ramp, &[[2.0, 1.0, 6.0, 3.0]], (2, 8)).unwrap();
    assert_eq!((small.height(), small.width()), (2, 4));
    assert_eq!(scale, (0.5, 0.5));
    assert_eq!(boxes, vec![[1.0, 0.5, 3.0, 1.5]]);
    assert_eq!(
        small.channel(0),
        &[5.5, 7.5, 9.5, 11.5, 25.5, 27.5, 29.5, 31.5]
    );
    assert_eq!(small.channel(2)[0], 205.5);

    // Doubling: half-pixel centres, edges clamped.
    let line = image_from(1, 2, |_, _, x| x as f32 * 4.0);
    let (big, boxes, scale) = resize(&line, &[[0.0, 0.0, 2.0, 1.0]], 2, 4).unwrap();
    assert_eq!(scale, (2.0, 2.0));
    assert_eq!(boxes, vec![[0.0, 0.0, 4.0, 2.0]]);
    assert_eq!(big.channel(0), &[0.0, 1.0, 3.0, 4.0, 0.0, 1.0, 3.0, 4.0]);

    // A constant image stays constant at any scale.
    let flat = image_from(7, 5, |c, _, _| c as f32 - 0.25);
    let (out, _, _) = resize(&flat, &[], 3, 11).unwrap();
    assert!(out.channel(1).iter().all(|&v| v == 0.75));
    assert!(resize(&flat, &[], 0, 3).is_err());
}

#[test]
fn flip_and_pad_by_hand() {
    let img = image_from(2, 3, |c, y, x| (100 * c + 10 * y + x) as f32);
    let (flipped, boxes) =
        flip_horizontal(&img, &[[0.0, 0.0, 1.0, 2.0], [1.0, 1.0, 3.0, 2.0]]).unwrap();
    assert_eq!(
        flipped.channel(1),
        &[102.0, 101.0, 100.0, 112.0, 111.0, 110.0]
    );
    assert_eq!(boxes, vec![[2.0, 0.0, 3.0, 2.0], [0.0, 1.0, 2.0, 2.0]]);
    let (back, boxes_back) = flip_horizontal(&flipped, &boxes).unwrap();
    assert_eq!(back, img);
    assert_eq!(boxes_back, vec![[0.0, 0.0, 1.0, 2.0], [1.0, 1.0, 3.0, 2.0]]);

    let padded = pad_to_multiple(&img, 4).unwrap();
    assert_eq!((padded.height(), padded.width()), (4, 4));
    assert_eq!(
        padded.channel(2),
        &[
            200.0, 201.0, 202.0, 0.0, 210.0, 211.0, 212.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
            0.0
        ]
    );
    assert_eq!(
        pad_to_multiple(&padded, 4).unwrap(),
        padded,
        "already a multiple"
    );
    assert_eq!(pad_to_multiple(&img, 1).unwrap(), img);
    assert!(pad_to_multiple(&img, 0).is_err());
}

fn sample_with(h: usize, w: usize, boxes: Vec<[f32; 4]>, crowd: Vec<bool>) -> Sample {
    Sample {
        image_id: (h * 1000 + w) as u64,
        image: image_from(h, w, |c, y, x| 1.0 + (c * h * w + y * w + x) as f32),
        labels: (0..boxes.len()).collect(),
        boxes,
        crowd,
    }
}

#[test]
fn transform_applies_resize_flip_pad_and_maps_back() {
    // 40 × 100 fitted into 64 × 64 → 26 × 64 (s = 0.64), flipped, padded to 32 × 64.
    let sample = sample_with(40, 100, vec![[10.0, 5.0, 30.0, 25.0]], vec![false]);
    let transform = Transform {
        target_size: Some((64, 64)),
        size_divisor: 32,
        flip_probability: 1.0,
        seed: 9,
    };
    let (out, meta) = transform.apply(sample.clone(), 0).unwrap();
    assert_eq!((out.image.height(), out.image.width()), (32, 64));
    assert_eq!(meta.original_size, (40, 100));
    assert_eq!(meta.resized_size, (26, 64));
    assert_eq!(meta.padded_size, (32, 64));
    assert_eq!(meta.padding(), (6, 0));
    assert_eq!(meta.scale, (0.64, 0.65));
    assert!(meta.flipped);
    let b = out.boxes[0];
    let want = [
        64.0 - 30.0 * 0.64,
        5.0 * 0.65,
        64.0 - 10.0 * 0.64,
        25.0 * 0.65,
    ];
    for k in 0..4 {
        assert!((b[k] - want[k]).abs() < 1e-5, "{b:?} vs {want:?}");
    }
    let back = meta.box_to_original(b);
    for k in 0..4 {
        assert!((back[k] - sample.boxes[0][k]).abs() < 1e-4, "{back:?}");
    }
    // Padding rows are zero, the valid region is not.
    assert!(out.image.channel(0)[26 * 64..].iter().all(|&v| v == 0.0));
    assert!(out.image.channel(0)[..26 * 64].iter().all(|&v| v > 0.0));

    // Without resizing or flipping only padding happens, and boxes are untouched.
    let plain = Transform::default();
    let (out, meta) = plain.apply(sample.clone(), 0).unwrap();
    assert_eq!((out.image.height(), out.image.width()), (64, 128));
    assert_eq!(out.boxes, sample.boxes);
    assert_eq!(meta.box_to_original(out.boxes[0]), sample.boxes[0]);
    assert!(!meta.flipped && meta.scale == (1.0, 1.0));

    // The flip draw: deterministic per key, never at p = 0, about p of the keys otherwise.
    let half = Transform {
        flip_probability: 0.5,
        ..Transform::default()
    };
    let flips = (0..2000u64).filter(|&k| half.flips(k)).count();
    assert!((900..1100).contains(&flips), "{flips}");
    assert!((0..2000u64).all(|k| half.flips(k) == half.flips(k)));
    let reseeded = Transform {
        seed: 1,
        ..half.clone()
    };
    assert!((0..64u64).any(|k| half.flips(k) != reseeded.flips(k)));
    assert!((0..2000u64).all(|k| !plain.flips(k)));

    for bad in [
        Transform {
            size_divisor: 0,
            ..Transform::default()
        },
        Transform {
            flip_probability: 1.5,
            ..Transform::default()
        },
        Transform {
            flip_probability: f64::NAN,
            ..Transform::default()
        },
        Transform {
            target_size: Some((0, 5)),
            ..Transform::default()
        },
    ] {
        assert!(bad.apply(sample.clone(), 0).is_err(), "{bad:?}");
    }
}

#[test]
fn collation_pads_to_the_batch_and_splits_crowd() {
    let transform = Transform::default();
    let a = sample_with(
        40,
        60,
        vec![[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]],
        vec![false, true],
    );
    let b = sample_with(70, 30, vec![], vec![]);
    let items = vec![
        transform.apply(a.clone(), 0).unwrap(),
        transform.apply(b.clone(), 0).unwrap(),
    ];
    let batch = collate(items, 32).unwrap();
    assert_eq!(batch.len(), 2);
    assert_eq!(batch.images.shape(), &[2, 3, 96, 64]);
    assert_eq!(batch.images.dtype(), DType::F32);
    let data = batch.images.as_slice::<f32>().unwrap();
    // Image a channel 1 row 5 sits at the top left of its slot; the rest of the row is padding.
    let slot = |n: usize, c: usize, y: usize| &data[((n * 3 + c) * 96 + y) * 64..][..64];
    assert_eq!(&slot(0, 1, 5)[..60], &a.image.channel(1)[5 * 60..6 * 60]);
    assert!(slot(0, 1, 5)[60..].iter().all(|&v| v == 0.0));
    assert!(slot(0, 2, 50).iter().all(|&v| v == 0.0));
    assert_eq!(&slot(1, 0, 69)[..30], &b.image.channel(0)[69 * 30..]);
    assert!(slot(1, 0, 70).iter().all(|&v| v == 0.0));

    assert_eq!(batch.targets[0].boxes, vec![[1.0, 2.0, 3.0, 4.0]]);
    assert_eq!(batch.targets[0].labels, vec![0]);
    assert_eq!(batch.targets[0].crowd_boxes, vec![[5.0, 6.0, 7.0, 8.0]]);
    assert_eq!(batch.targets[0].crowd_labels, vec![1]);
    let boxes = batch.targets[0].boxes_tensor().unwrap();
    assert_eq!(boxes.shape(), &[1, 4]);
    assert_eq!(boxes.as_slice::<f32>().unwrap(), &[1.0, 2.0, 3.0, 4.0]);
    let labels = batch.targets[0].labels_tensor().unwrap();
    assert_eq!(
        (labels.shape(), labels.dtype()),
        (&[1usize][..], DType::I64)
    );
    assert_eq!(batch.targets[1].boxes_tensor().unwrap().shape(), &[0, 4]);
    assert_eq!(batch.targets[1].labels_tensor().unwrap().shape(), &[0]);
    assert_eq!(
        batch
            .metas
            .iter()
            .map(|m| m.padded_size)
            .collect::<Vec<_>>(),
        vec![(96, 64), (96, 64)]
    );
    assert_eq!(batch.metas[1].resized_size, (70, 30));
    assert_eq!(batch.metas[0].image_id, a.image_id);

    assert!(collate(vec![], 32).is_err());
    let meta = ImageMeta {
        image_id: 0,
        original_size: (4, 4),
        resized_size: (4, 4),
        scale: (1.0, 1.0),
        flipped: false,
        padded_size: (4, 4),
    };
    let mut broken = sample_with(4, 4, vec![[0.0, 0.0, 1.0, 1.0]], vec![false]);
    broken.labels.clear();
    assert!(collate(vec![(broken, meta)], 4).is_err());
    let fine = sample_with(4, 4, vec![], vec![]);
    assert!(collate(vec![(fine, meta)], 0).is_err());
}

// ---------------------------------------------------------------------------------------------------------
// Loader

#[test]
fn loader_shuffles_by_seed_and_batches() {
    let config = SyntheticConfig {
        height: 48,
        width: 40,
        max_object_fraction: 0.5,
        ..SyntheticConfig::default()
    };
    let split = SyntheticShapes::new(config, 4, 10).unwrap();
    let loader_config = LoaderConfig {
        batch_size: 4,
        shuffle: true,
        drop_last: false,
        seed: 17,
    };
    let transform = Transform {
        target_size: Some((64, 64)),
        size_divisor: 32,
        flip_probability: 0.5,
        seed: 2,
    };
    let loader = DataLoader::new(&split, loader_config.clone(), transform.clone()).unwrap();
    assert_eq!(loader.num_batches(), 3);
    let epoch0 = loader.order(0);
    let mut sorted = epoch0.clone();
    sorted.sort();
    assert_eq!(sorted, (0..10).collect::<Vec<_>>());
    assert_ne!(epoch0, loader.order(1), "epochs reshuffle");
    assert_ne!(epoch0, (0..10).collect::<Vec<_>>());

    let batches: Vec<_> = loader.epoch(0).map(|b| b.unwrap()).collect();
    assert_eq!(
        batches.iter().map(|b| b.len()).collect::<Vec<_>>(),
        vec![4, 4, 2]
    );
    let ids: Vec<u64> = batches
        .iter()
        .flat_map(|b| b.metas.iter().map(|m| m.image_id))
        .collect();
    assert_eq!(ids, epoch0.iter().map(|&i| i as u64).collect::<Vec<_>>());
    // 48 × 40 fitted into 64 × 64 → 64 × 53, padded to 64 × 64.
    assert_eq!(batches[0].images.shape(), &[4, 3, 64, 64]);
    assert!(batches.iter().flat_map(|b| &b.metas).any(|m| m.flipped));
    assert!(batches.iter().flat_map(|b| &b.metas).any(|m| !m.flipped));

    // Same seeds, another loader and another thread count: identical batches.
    let same = DataLoader::new(&split, loader_config.clone(), transform.clone()).unwrap();
    let again: Vec<_> = in_pool(1, || same.epoch(0).map(|b| b.unwrap()).collect());
    for (x, y) in batches.iter().zip(&again) {
        assert_eq!(
            x.images.as_slice::<f32>().unwrap(),
            y.images.as_slice::<f32>().unwrap()
        );
        assert_eq!(x.targets, y.targets);
        assert_eq!(x.metas, y.metas);
    }
    // Another seed, another order.
    let reseeded = DataLoader::new(
        &split,
        LoaderConfig {
            seed: 18,
            ..loader_config.clone()
        },
        transform.clone(),
    )
    .unwrap();
    assert_ne!(reseeded.order(0), epoch0);

    // drop_last and no shuffling.
    let ordered = DataLoader::new(
        &split,
        LoaderConfig {
            shuffle: false,
            drop_last: true,
            ..loader_config.clone()
        },
        Transform::default(),
    )
    .unwrap();
    assert_eq!(ordered.num_batches(), 2);
    let epoch = ordered.epoch(5);
    assert_eq!(epoch.len(), 2);
    assert_eq!(epoch.order(), (0..10).collect::<Vec<_>>().as_slice());
    let ids: Vec<u64> = epoch
        .flat_map(|b| b.unwrap().metas.into_iter().map(|m| m.image_id))
        .collect();
    assert_eq!(ids, (0..8).collect::<Vec<u64>>());
    assert_eq!(
        DataLoader::new(
            &split,
            LoaderConfig {
                batch_size: 16,
                drop_last: true,
                ..loader_config.clone()
            },
            Transform::default()
        )
        .unwrap()
        .epoch(0)
        .count(),
        0
    );

    assert!(DataLoader::new(
        &split,
        LoaderConfig {
            batch_size: 0,
            ..loader_config
        },
        Transform::default()
    )
    .is_err());
    assert!(DataLoader::new(
        &split,
        LoaderConfig::default(),
        Transform {
            size_divisor: 0,
            ..Transform::default()
        }
    )
    .is_err());
}

#[test]
fn loader_works_on_a_dyn_dataset() {
    let split = SyntheticShapes::new(
        SyntheticConfig {
            height: 32,
            width: 32,
            ..Default::default()
        },
        1,
        3,
    )
    .unwrap();
    let dataset: &dyn Dataset = &split;
    let loader = DataLoader::new(
        dataset,
        LoaderConfig {
            batch_size: 2,
            ..Default::default()
        },
        Transform::default(),
    )
    .unwrap();
    let shapes: Vec<Vec<usize>> = loader
        .epoch(0)
        .map(|b| b.unwrap().images.shape().to_vec())
        .collect();
    assert_eq!(shapes, vec![vec![2, 3, 32, 32], vec![1, 3, 32, 32]]);
    assert_eq!(dataset.num_classes(), 8);
}
