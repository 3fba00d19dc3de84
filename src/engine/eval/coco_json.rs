//! COCO JSON files: the subset of an annotation file that box evaluation needs (`images`,
//! `categories`, `annotations`) and results files (a list of detections), read with `serde_json`.
//!
//! Every malformed input is an [`Error::InvalidArgument`] whose argument names the file and the entry
//! (`instances_val2017.json: annotations[12].bbox`) and whose reason says what was expected and what was
//! found. The rules:
//!
//! **Annotation file.** The top level is an object. `images` (required) is a list of objects with a
//! unique non-negative integer `id`; `width`, `height` (non-negative integers) and `file_name` (string)
//! are read when present. `categories` (required) is a list of objects with a unique non-negative integer
//! `id` and an optional string `name`. `annotations` (optional, as in pycocotools; absent means none) is a
//! list of objects with
//! - `image_id` and `category_id`: non-negative integers naming a listed image and category;
//! - `bbox`: exactly four finite numbers `[x, y, width, height]` with `width, height ≥ 0`;
//! - `area`: a finite number `≥ 0` (required: pycocotools reads it for the area ranges, and COCO's value
//!   is the segmentation area, not `width · height`);
//! - `iscrowd`: `0`, `1`, `false` or `true`; absent means 0;
//! - `id`: optional; when present a non-negative integer, unique in the file (pycocotools indexes
//!   annotations by id, so duplicates would silently collapse there).
//!
//! Other keys (`segmentation`, `info`, `licenses`, ...) are ignored.
//!
//! **Results file.** The top level is a list (possibly empty) of objects with `image_id`, `category_id`
//! (non-negative integers naming an image and a category of the annotation file: pycocotools rejects
//! unknown images too, and silently drops unknown categories, which here is an error), `bbox` (as
//! above) and `score` (a finite number). Other keys are ignored.

use std::collections::HashSet;
use std::path::Path;

use serde_json::{Map, Number, Value};

use super::coco::{evaluate, evaluate_detailed, CocoEvaluation, CocoStats, Detection, GroundTruth};
use crate::error::{Error, Result};

/// One entry of an annotation file's `images` list.
#[derive(Clone, Debug, PartialEq)]
pub struct CocoImage {
    /// Image id, unique in the file.
    pub id: u64,
    /// Width in pixels, when the file gives it.
    pub width: Option<u64>,
    /// Height in pixels, when the file gives it.
    pub height: Option<u64>,
    /// File name, when the file gives it.
    pub file_name: Option<String>,
}

/// One entry of an annotation file's `categories` list.
#[derive(Clone, Debug, PartialEq)]
pub struct CocoCategory {
    /// Category id, unique in the file (COCO's ids run 1..=90 with gaps).
    pub id: u64,
    /// Category name, when the file gives it.
    pub name: Option<String>,
}

/// The parts of a COCO annotation file that box evaluation uses.
#[derive(Clone, Debug, PartialEq)]
pub struct CocoDataset {
    /// The `images` list, in file order.
    pub images: Vec<CocoImage>,
    /// The `categories` list, in file order.
    pub categories: Vec<CocoCategory>,
    /// The `annotations` list, in file order.
    pub annotations: Vec<GroundTruth>,
}

impl CocoDataset {
    /// Ids of all images, in file order.
    pub fn image_ids(&self) -> Vec<u64> {
        self.images.iter().map(|image| image.id).collect()
    }

    /// Ids of all categories, in file order.
    pub fn category_ids(&self) -> Vec<u64> {
        self.categories.iter().map(|category| category.id).collect()
    }

    /// [`evaluate`] over every image and category of the file (pycocotools' default `Params`).
    pub fn evaluate(&self, detections: &[Detection]) -> Result<CocoStats> {
        evaluate(
            &self.annotations,
            detections,
            &self.image_ids(),
            &self.category_ids(),
        )
    }

    /// [`evaluate_detailed`] over every image and category of the file.
    pub fn evaluate_detailed(&self, detections: &[Detection]) -> Result<CocoEvaluation> {
        evaluate_detailed(
            &self.annotations,
            detections,
            &self.image_ids(),
            &self.category_ids(),
        )
    }
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_json(text: &str, source: &str) -> Result<Value> {
    serde_json::from_str(text)
        .map_err(|e| Error::invalid(source, format!("expected valid JSON: {e}")))
}

/// Reads a COCO annotation file (see the module documentation for the rules it enforces).
pub fn load_annotations(path: impl AsRef<Path>) -> Result<CocoDataset> {
    let path = path.as_ref();
    parse_annotations(&read_text(path)?, &path.display().to_string())
}

/// Parses the text of a COCO annotation file; `source` names it in error messages.
pub fn parse_annotations(text: &str, source: &str) -> Result<CocoDataset> {
    let root = parse_json(text, source)?;
    let root = root.as_object().ok_or_else(|| {
        Error::invalid(
            source,
            format!(
                "expected a JSON object at the top level, got {}",
                kind(&root)
            ),
        )
    })?;

    let images_value = required(root, "images", source)?;
    let images_list = as_list(images_value, &format!("{source}: images"))?;
    let mut images = Vec::with_capacity(images_list.len());
    let mut image_ids = HashSet::new();
    for (n, entry) in images_list.iter().enumerate() {
        let at = format!("{source}: images[{n}]");
        let object = as_object(entry, &at)?;
        let id = integer_field(object, "id", &at)?;
        if !image_ids.insert(id) {
            return Err(Error::invalid(
                format!("{at}.id"),
                format!("expected a unique image id, got {id} again"),
            ));
        }
        images.push(CocoImage {
            id,
            width: optional_integer(object, "width", &at)?,
            height: optional_integer(object, "height", &at)?,
            file_name: optional_string(object, "file_name", &at)?,
        });
    }

    let categories_value = required(root, "categories", source)?;
    let categories_list = as_list(categories_value, &format!("{source}: categories"))?;
    let mut categories = Vec::with_capacity(categories_list.len());
    let mut category_ids = HashSet::new();
    for (n, entry) in categories_list.iter().enumerate() {
        let at = format!("{source}: categories[{n}]");
        let object = as_object(entry, &at)?;
        let id = integer_field(object, "id", &at)?;
        if !category_ids.insert(id) {
            return Err(Error::invalid(
                format!("{at}.id"),
                format!("expected a unique category id, got {id} again"),
            ));
        }
        categories.push(CocoCategory {
            id,
            name: optional_string(object, "name", &at)?,
        });
    }

    let mut annotations = Vec::new();
    if let Some(value) = root.get("annotations") {
        let list = as_list(value, &format!("{source}: annotations"))?;
        annotations.reserve(list.len());
        let mut annotation_ids = HashSet::new();
        for (n, entry) in list.iter().enumerate() {
            let at = format!("{source}: annotations[{n}]");
            let object = as_object(entry, &at)?;
            if let Some(id) = optional_integer(object, "id", &at)? {
                if !annotation_ids.insert(id) {
                    return Err(Error::invalid(
                        format!("{at}.id"),
                        format!("expected a unique annotation id, got {id} again"),
                    ));
                }
            }
            let (image_id, category_id) =
                image_and_category(object, &at, &image_ids, &category_ids)?;
            let bbox = bbox_field(object, &at)?;
            let area = number_field(object, "area", &at)?;
            if area < 0.0 {
                return Err(Error::invalid(
                    format!("{at}.area"),
                    format!("expected a number >= 0, got {area}"),
                ));
            }
            let iscrowd = match object.get("iscrowd") {
                None => false,
                Some(Value::Bool(b)) => *b,
                Some(Value::Number(v)) if v.as_u64() == Some(0) => false,
                Some(Value::Number(v)) if v.as_u64() == Some(1) => true,
                Some(other) => {
                    return Err(Error::invalid(
                        format!("{at}.iscrowd"),
                        format!("expected 0, 1, false or true, got {other}"),
                    ))
                }
            };
            annotations.push(GroundTruth {
                image_id,
                category_id,
                bbox,
                area,
                iscrowd,
            });
        }
    }
    Ok(CocoDataset {
        images,
        categories,
        annotations,
    })
}

/// Reads a COCO results file, checking every detection against `dataset`'s images and categories.
pub fn load_results(path: impl AsRef<Path>, dataset: &CocoDataset) -> Result<Vec<Detection>> {
    let path = path.as_ref();
    parse_results(&read_text(path)?, &path.display().to_string(), dataset)
}

/// Parses the text of a COCO results file; `source` names it in error messages.
pub fn parse_results(text: &str, source: &str, dataset: &CocoDataset) -> Result<Vec<Detection>> {
    let root = parse_json(text, source)?;
    let list = as_list(&root, source)?;
    let image_ids: HashSet<u64> = dataset.images.iter().map(|image| image.id).collect();
    let category_ids: HashSet<u64> = dataset
        .categories
        .iter()
        .map(|category| category.id)
        .collect();
    let mut detections = Vec::with_capacity(list.len());
    for (n, entry) in list.iter().enumerate() {
        let at = format!("{source}: [{n}]");
        let object = as_object(entry, &at)?;
        let (image_id, category_id) = image_and_category(object, &at, &image_ids, &category_ids)?;
        detections.push(Detection {
            image_id,
            category_id,
            bbox: bbox_field(object, &at)?,
            score: number_field(object, "score", &at)?,
        });
    }
    Ok(detections)
}

/// Serialises detections as a COCO results file (a JSON list of `{image_id, category_id, bbox, score}`
/// objects). Numbers are written in their shortest round-trip form, so reading the text back gives the
/// same values. Errors on a non-finite number (JSON has none).
pub fn results_to_json(detections: &[Detection]) -> Result<String> {
    let mut list = Vec::with_capacity(detections.len());
    for (n, det) in detections.iter().enumerate() {
        let number = |v: f64, what: &str| {
            Number::from_f64(v).map(Value::Number).ok_or_else(|| {
                Error::invalid(
                    format!("detections[{n}].{what}"),
                    format!("expected a finite number, got {v}"),
                )
            })
        };
        let bbox = det
            .bbox
            .iter()
            .map(|&v| number(v, "bbox"))
            .collect::<Result<Vec<Value>>>()?;
        let mut object = Map::new();
        object.insert("image_id".into(), Value::from(det.image_id));
        object.insert("category_id".into(), Value::from(det.category_id));
        object.insert("bbox".into(), Value::Array(bbox));
        object.insert("score".into(), number(det.score, "score")?);
        list.push(Value::Object(object));
    }
    Ok(Value::Array(list).to_string())
}

/// Writes [`results_to_json`] to `path`.
pub fn save_results(path: impl AsRef<Path>, detections: &[Detection]) -> Result<()> {
    let path = path.as_ref();
    std::fs::write(path, results_to_json(detections)?).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn required<'a>(object: &'a Map<String, Value>, key: &str, at: &str) -> Result<&'a Value> {
    object
        .get(key)
        .ok_or_else(|| Error::invalid(at, format!("expected the key `{key}`, found none")))
}

fn as_list<'a>(value: &'a Value, at: &str) -> Result<&'a Vec<Value>> {
    value
        .as_array()
        .ok_or_else(|| Error::invalid(at, format!("expected a list, got {}", kind(value))))
}

fn as_object<'a>(value: &'a Value, at: &str) -> Result<&'a Map<String, Value>> {
    value
        .as_object()
        .ok_or_else(|| Error::invalid(at, format!("expected an object, got {}", kind(value))))
}

fn integer(value: &Value, at: &str) -> Result<u64> {
    value
        .as_u64()
        .ok_or_else(|| Error::invalid(at, format!("expected a non-negative integer, got {value}")))
}

fn integer_field(object: &Map<String, Value>, key: &str, at: &str) -> Result<u64> {
    integer(required(object, key, at)?, &format!("{at}.{key}"))
}

fn optional_integer(object: &Map<String, Value>, key: &str, at: &str) -> Result<Option<u64>> {
    object
        .get(key)
        .map(|value| integer(value, &format!("{at}.{key}")))
        .transpose()
}

fn optional_string(object: &Map<String, Value>, key: &str, at: &str) -> Result<Option<String>> {
    match object.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(Error::invalid(
            format!("{at}.{key}"),
            format!("expected a string, got {}", kind(other)),
        )),
    }
}

fn finite_number(value: &Value, at: &str) -> Result<f64> {
    match value.as_f64() {
        Some(v) if v.is_finite() => Ok(v),
        _ => Err(Error::invalid(
            at,
            format!("expected a finite number, got {value}"),
        )),
    }
}

fn number_field(object: &Map<String, Value>, key: &str, at: &str) -> Result<f64> {
    finite_number(required(object, key, at)?, &format!("{at}.{key}"))
}

fn bbox_field(object: &Map<String, Value>, at: &str) -> Result<[f64; 4]> {
    let at_box = format!("{at}.bbox");
    let value = required(object, "bbox", at)?;
    let list = as_list(value, &at_box)?;
    if list.len() != 4 {
        return Err(Error::invalid(
            &at_box,
            format!(
                "expected 4 numbers [x, y, width, height], got {} entries",
                list.len()
            ),
        ));
    }
    let mut bbox = [0.0; 4];
    for (slot, entry) in bbox.iter_mut().zip(list) {
        *slot = finite_number(entry, &at_box)?;
    }
    if bbox[2] < 0.0 || bbox[3] < 0.0 {
        return Err(Error::invalid(
            at_box,
            format!("expected width and height >= 0, got {bbox:?}"),
        ));
    }
    Ok(bbox)
}

fn image_and_category(
    object: &Map<String, Value>,
    at: &str,
    image_ids: &HashSet<u64>,
    category_ids: &HashSet<u64>,
) -> Result<(u64, u64)> {
    let image_id = integer_field(object, "image_id", at)?;
    if !image_ids.contains(&image_id) {
        return Err(Error::invalid(
            format!("{at}.image_id"),
            format!("expected the id of an image in the annotation file, got {image_id}"),
        ));
    }
    let category_id = integer_field(object, "category_id", at)?;
    if !category_ids.contains(&category_id) {
        return Err(Error::invalid(
            format!("{at}.category_id"),
            format!("expected the id of a category in the annotation file, got {category_id}"),
        ));
    }
    Ok((image_id, category_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{
        "info": {"year": 2017},
        "images": [{"id": 4, "width": 640, "height": 480, "file_name": "a.jpg"}, {"id": 9}],
        "categories": [{"id": 1, "name": "person"}, {"id": 3}],
        "annotations": [
            {"id": 1, "image_id": 4, "category_id": 1, "bbox": [1, 2.5, 30, 40], "area": 1000.5,
             "iscrowd": 0, "segmentation": [[1, 2, 3, 4]]},
            {"id": 2, "image_id": 9, "category_id": 3, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": true},
            {"image_id": 9, "category_id": 3, "bbox": [5, 5, 0, 0], "area": 0}
        ]
    }"#;

    fn dataset() -> CocoDataset {
        parse_annotations(GOOD, "gt.json").unwrap()
    }

    #[test]
    fn parses_annotation_subset() {
        let d = dataset();
        assert_eq!(d.image_ids(), vec![4, 9]);
        assert_eq!(d.category_ids(), vec![1, 3]);
        assert_eq!(d.images[0].width, Some(640));
        assert_eq!(d.images[0].file_name.as_deref(), Some("a.jpg"));
        assert_eq!(d.images[1].height, None);
        assert_eq!(d.categories[0].name.as_deref(), Some("person"));
        assert_eq!(d.annotations.len(), 3);
        assert_eq!(
            d.annotations[0],
            GroundTruth {
                image_id: 4,
                category_id: 1,
                bbox: [1.0, 2.5, 30.0, 40.0],
                area: 1000.5,
                iscrowd: false
            }
        );
        assert!(d.annotations[1].iscrowd);
        assert!(!d.annotations[2].iscrowd);
        // No annotations key: an empty list.
        let d = parse_annotations(r#"{"images": [], "categories": []}"#, "x").unwrap();
        assert!(d.annotations.is_empty());
    }

    #[test]
    fn results_roundtrip() {
        let d = dataset();
        let dets = vec![
            Detection {
                image_id: 4,
                category_id: 1,
                // 0.1 + 0.2 = 0.30000000000000004 needs all 17 digits to round-trip.
                bbox: [0.1, 0.2, 0.1 + 0.2, 1e-7],
                score: 0.123456789012345,
            },
            Detection {
                image_id: 9,
                category_id: 3,
                bbox: [-1.0, 2.0, 3.0, 4.0],
                score: 1.0,
            },
        ];
        let text = results_to_json(&dets).unwrap();
        assert_eq!(parse_results(&text, "dt.json", &d).unwrap(), dets);
        assert!(parse_results("[]", "dt.json", &d).unwrap().is_empty());

        let dir = std::env::temp_dir().join(format!("detkd-coco-json-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dt.json");
        save_results(&path, &dets).unwrap();
        assert_eq!(load_results(&path, &d).unwrap(), dets);
        std::fs::remove_dir_all(&dir).unwrap();

        let bad = Detection {
            score: f64::NAN,
            ..dets[0].clone()
        };
        let err = results_to_json(&[dets[0].clone(), bad])
            .unwrap_err()
            .to_string();
        assert!(err.contains("detections[1].score"), "{err}");
    }

    #[test]
    fn dataset_evaluate_uses_all_images_and_categories() {
        let d = dataset();
        let dets = vec![Detection {
            image_id: 4,
            category_id: 1,
            bbox: [1.0, 2.5, 30.0, 40.0],
            score: 0.9,
        }];
        let stats = d.evaluate(&dets).unwrap();
        // Category 1: one object found by one detection. Category 3 has only a crowd region and a
        // zero-size object (which counts: it is not a crowd and its area 0 is in range) that nothing
        // finds, so its AP is 0 and the mean over the two categories is (1/(1+ε) + 0)/2.
        assert_eq!(stats.ap, (1.0 / (1.0 + f64::EPSILON)) / 2.0);
        assert_eq!(d.evaluate_detailed(&dets).unwrap().stats, stats);
    }

    #[test]
    fn missing_file_is_an_io_error() {
        let err = load_annotations("/nonexistent/detkd/instances.json").unwrap_err();
        assert!(matches!(err, Error::Io { .. }));
        assert!(err
            .to_string()
            .contains("/nonexistent/detkd/instances.json"));
    }

    fn annotation_error(text: &str) -> String {
        parse_annotations(text, "gt.json").unwrap_err().to_string()
    }

    fn with_annotation(annotation: &str) -> String {
        format!(
            r#"{{"images": [{{"id": 4}}], "categories": [{{"id": 1}}], "annotations": [
                {{"image_id": 4, "category_id": 1, "bbox": [0, 0, 1, 1], "area": 1}}, {annotation}]}}"#
        )
    }

    #[test]
    fn annotation_file_errors_name_file_and_entry() {
        let cases: Vec<(String, &str)> = vec![
            ("{not json".into(), "gt.json`: expected valid JSON"),
            (
                "[1, 2]".into(),
                "expected a JSON object at the top level, got a list",
            ),
            (r#"{"categories": []}"#.into(), "expected the key `images`"),
            (r#"{"images": []}"#.into(), "expected the key `categories`"),
            (
                r#"{"images": {}, "categories": []}"#.into(),
                "gt.json: images`: expected a list",
            ),
            (
                r#"{"images": [3], "categories": []}"#.into(),
                "gt.json: images[0]`: expected an object",
            ),
            (
                r#"{"images": [{"id": -1}], "categories": []}"#.into(),
                "images[0].id`: expected a non-negative integer",
            ),
            (
                r#"{"images": [{"id": 1.5}], "categories": []}"#.into(),
                "images[0].id`",
            ),
            (
                r#"{"images": [{"id": 1}, {"id": 1}], "categories": []}"#.into(),
                "images[1].id`: expected a unique image id",
            ),
            (
                r#"{"images": [{"id": 1, "width": "x"}], "categories": []}"#.into(),
                "images[0].width`",
            ),
            (
                r#"{"images": [{"id": 1, "file_name": 3}], "categories": []}"#.into(),
                "images[0].file_name`: expected a string",
            ),
            (
                r#"{"images": [], "categories": [{"id": 2}, {"id": 2}]}"#.into(),
                "categories[1].id`: expected a unique category id",
            ),
            (
                r#"{"images": [], "categories": [{"name": "x"}]}"#.into(),
                "categories[0]`: expected the key `id`",
            ),
            (
                r#"{"images": [], "categories": [{"id": 2, "name": 7}]}"#.into(),
                "categories[0].name`: expected a string",
            ),
            (
                r#"{"images": [], "categories": [], "annotations": [5]}"#.into(),
                "annotations[0]`: expected an object, got a number",
            ),
            (
                with_annotation(
                    r#"{"id": "a", "image_id": 4, "category_id": 1, "bbox": [0, 0, 1, 1], "area": 1}"#,
                ),
                "annotations[1].id`: expected a non-negative integer",
            ),
            (
                with_annotation(
                    r#"{"image_id": 4.0, "category_id": 1, "bbox": [0, 0, 1, 1], "area": 1}"#,
                ),
                "annotations[1].image_id`: expected a non-negative integer, got 4.0",
            ),
            (
                r#"{"images": [], "categories": [], "annotations": 5}"#.into(),
                "annotations`: expected a list",
            ),
            (
                with_annotation(
                    r#"{"image_id": 5, "category_id": 1, "bbox": [0, 0, 1, 1], "area": 1}"#,
                ),
                "annotations[1].image_id`: expected the id of an image",
            ),
            (
                with_annotation(
                    r#"{"image_id": 4, "category_id": 2, "bbox": [0, 0, 1, 1], "area": 1}"#,
                ),
                "annotations[1].category_id`",
            ),
            (
                with_annotation(r#"{"image_id": 4, "category_id": 1, "area": 1}"#),
                "annotations[1]`: expected the key `bbox`",
            ),
            (
                with_annotation(
                    r#"{"image_id": 4, "category_id": 1, "bbox": [0, 0, 1], "area": 1}"#,
                ),
                "annotations[1].bbox`: expected 4 numbers",
            ),
            (
                with_annotation(
                    r#"{"image_id": 4, "category_id": 1, "bbox": [0, 0, "1", 1], "area": 1}"#,
                ),
                "annotations[1].bbox`: expected a finite number",
            ),
            (
                with_annotation(
                    r#"{"image_id": 4, "category_id": 1, "bbox": [0, 0, 1e999, 1], "area": 1}"#,
                ),
                "gt.json`: expected valid JSON: number out of range",
            ),
            (
                with_annotation(
                    r#"{"image_id": 4, "category_id": 1, "bbox": [0, 0, -2, 1], "area": 1}"#,
                ),
                "annotations[1].bbox`: expected width and height >= 0",
            ),
            (
                with_annotation(r#"{"image_id": 4, "category_id": 1, "bbox": [0, 0, 1, 1]}"#),
                "annotations[1]`: expected the key `area`",
            ),
            (
                with_annotation(
                    r#"{"image_id": 4, "category_id": 1, "bbox": [0, 0, 1, 1], "area": -3}"#,
                ),
                "annotations[1].area`: expected a number >= 0",
            ),
            (
                with_annotation(
                    r#"{"image_id": 4, "category_id": 1, "bbox": [0, 0, 1, 1], "area": null}"#,
                ),
                "annotations[1].area`: expected a finite number",
            ),
            (
                with_annotation(
                    r#"{"image_id": 4, "category_id": 1, "bbox": [0, 0, 1, 1], "area": 1, "iscrowd": 2}"#,
                ),
                "annotations[1].iscrowd`: expected 0, 1, false or true",
            ),
            (
                with_annotation(
                    r#"{"id": 7, "image_id": 4, "category_id": 1, "bbox": [0, 0, 1, 1], "area": 1}, {"id": 7, "image_id": 4, "category_id": 1, "bbox": [0, 0, 1, 1], "area": 1}"#,
                ),
                "annotations[2].id`: expected a unique annotation id",
            ),
        ];
        for (text, want) in cases {
            let err = annotation_error(&text);
            assert!(
                err.contains(want),
                "input {text}\nerror {err}\nwanted {want}"
            );
        }
    }

    #[test]
    fn results_file_errors_name_file_and_entry() {
        let d = dataset();
        let ok = r#"{"image_id": 4, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}"#;
        let cases = [
            ("{}".to_string(), "dt.json`: expected a list, got an object"),
            ("[1".to_string(), "dt.json`: expected valid JSON"),
            (format!("[{ok}, 3]"), "dt.json: [1]`: expected an object"),
            (
                format!(
                    r#"[{ok}, {{"image_id": 5, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}}]"#
                ),
                "dt.json: [1].image_id`: expected the id of an image in the annotation file, got 5",
            ),
            (
                r#"[{"image_id": 4, "category_id": 2, "bbox": [0, 0, 1, 1], "score": 0.5}]"#
                    .to_string(),
                "dt.json: [0].category_id`",
            ),
            (
                r#"[{"image_id": 4, "category_id": 1, "bbox": [0, 0, 1, -1], "score": 0.5}]"#
                    .to_string(),
                "dt.json: [0].bbox`",
            ),
            (
                r#"[{"image_id": 4, "category_id": 1, "bbox": [0, 0, 1, 1]}]"#.to_string(),
                "dt.json: [0]`: expected the key `score`",
            ),
            (
                r#"[{"image_id": 4, "category_id": 1, "bbox": [0, 0, 1, 1], "score": "high"}]"#
                    .to_string(),
                "dt.json: [0].score`: expected a finite number",
            ),
            (
                r#"[{"image_id": "4", "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}]"#
                    .to_string(),
                "dt.json: [0].image_id`: expected a non-negative integer",
            ),
        ];
        for (text, want) in cases {
            let err = parse_results(&text, "dt.json", &d).unwrap_err().to_string();
            assert!(
                err.contains(want),
                "input {text}\nerror {err}\nwanted {want}"
            );
        }
    }
}
