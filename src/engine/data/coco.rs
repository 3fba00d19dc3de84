//! COCO-format detection data: a loader ([`CocoDataset`]) and an exporter of synthetic splits
//! ([`export_coco`]).
//!
//! The loader reads the annotation JSON at once and checks every entry; images are decoded (PNG or JPEG,
//! converted to 8-bit RGB) when a sample is requested. Rules:
//!
//! - `images` (required): `id` (non-negative integer, unique), `file_name` (relative to the image folder;
//!   the file must exist at load time), `width` and `height` (integers in `1..=65536`, checked against
//!   the decoded file).
//! - `categories` (required): `id` (non-negative integer, unique), `name`. Labels are contiguous: the
//!   categories sorted by id get labels `0, 1, …` ([`CocoDataset::category_id`] maps back).
//! - `annotations` (optional, absent in test-set files): `image_id` and `category_id` must name an entry,
//!   `bbox = [x, y, w, h]` four finite numbers with `w, h ≥ 0`, `iscrowd` 0/1 or a boolean (default 0).
//!   Boxes become `[x, y, x + w, y + h]` clipped to the image; those with zero width or height after
//!   clipping are *degenerate*: dropped, counted in [`LoadReport`] and reported in one warning line on
//!   stderr. Crowd boxes are kept with `crowd = true` (training targets leave them out, see
//!   [`Target`](super::Target)).
//!
//! Every problem is an `Err` naming the file and the entry (`annotations[12] (id 40)`), never a panic.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::{json, Map, Value};

use super::synthetic::SyntheticShapes;
use super::{index_error, BoxXyxy, Dataset, Normalization, Sample};
use crate::error::{Error, Result};

/// One entry of the annotation file's `images`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CocoImage {
    /// The entry's `id`.
    pub id: u64,
    /// Path of the image file relative to the image folder.
    pub file_name: String,
    /// Width in pixels, as the file says.
    pub width: usize,
    /// Height in pixels, as the file says.
    pub height: usize,
}

/// One entry of the annotation file's `categories`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CocoCategory {
    /// The entry's `id`.
    pub id: u64,
    /// The category's name.
    pub name: String,
}

/// One kept annotation, already in contiguous-label `xyxy` form.
#[derive(Clone, Debug, PartialEq)]
struct Annotation {
    bbox: BoxXyxy,
    label: usize,
    crowd: bool,
}

/// What loading an annotation file found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Number of images.
    pub images: usize,
    /// Annotations kept (crowd included).
    pub annotations: usize,
    /// Of those, crowd regions.
    pub crowd: usize,
    /// Degenerate boxes dropped (zero width or height after clipping to the image).
    pub degenerate_dropped: usize,
    /// The first few dropped entries, named as in error messages.
    pub degenerate_examples: Vec<String>,
}

/// A COCO-format data set: annotation JSON plus an image folder. Sample `i` is the `i`-th entry of
/// `images` in file order; its image is decoded on every [`Dataset::get`] (there is no cache).
#[derive(Clone, Debug)]
pub struct CocoDataset {
    annotation_file: PathBuf,
    image_dir: PathBuf,
    images: Vec<CocoImage>,
    annotations: Vec<Vec<Annotation>>,
    categories: Vec<CocoCategory>,
    class_names: Vec<String>,
    normalization: Normalization,
    report: LoadReport,
}

/// How many dropped entries [`LoadReport::degenerate_examples`] keeps.
const MAX_EXAMPLES: usize = 5;

/// Largest image side accepted from an annotation file.
const MAX_SIDE: u64 = 1 << 16;

/// Names one JSON entry in error messages: `images[3] (id 7)`.
fn entry_name(list: &str, index: usize, object: &Map<String, Value>) -> String {
    match object.get("id").and_then(Value::as_u64) {
        Some(id) => format!("{list}[{index}] (id {id})"),
        None => format!("{list}[{index}]"),
    }
}

/// Parses one file's entries, naming `file` and the entry in every error.
struct Parser<'a> {
    file: &'a Path,
}

impl Parser<'_> {
    fn error(&self, entry: &str, reason: impl Into<String>) -> Error {
        Error::invalid(format!("{}: {entry}", self.file.display()), reason)
    }

    fn list<'v>(
        &self,
        root: &'v Map<String, Value>,
        key: &str,
        required: bool,
    ) -> Result<&'v [Value]> {
        match root.get(key) {
            Some(Value::Array(items)) => Ok(items),
            Some(other) => Err(self.error(key, format!("expected an array, got {}", kind(other)))),
            None if required => Err(self.error(key, "the required key is missing")),
            None => Ok(&[]),
        }
    }

    fn object<'v>(&self, entry: &str, value: &'v Value) -> Result<&'v Map<String, Value>> {
        value
            .as_object()
            .ok_or_else(|| self.error(entry, format!("expected an object, got {}", kind(value))))
    }

    fn field<'v>(
        &self,
        entry: &str,
        object: &'v Map<String, Value>,
        key: &str,
    ) -> Result<&'v Value> {
        object
            .get(key)
            .ok_or_else(|| self.error(entry, format!("the required field `{key}` is missing")))
    }

    fn id(&self, entry: &str, object: &Map<String, Value>, key: &str) -> Result<u64> {
        let value = self.field(entry, object, key)?;
        value.as_u64().ok_or_else(|| {
            self.error(
                entry,
                format!("`{key}`: expected a non-negative integer, got {value}"),
            )
        })
    }

    fn string(&self, entry: &str, object: &Map<String, Value>, key: &str) -> Result<String> {
        match self.field(entry, object, key)? {
            Value::String(s) if !s.is_empty() => Ok(s.clone()),
            other => Err(self.error(
                entry,
                format!("`{key}`: expected a non-empty string, got {other}"),
            )),
        }
    }

    fn side(&self, entry: &str, object: &Map<String, Value>, key: &str) -> Result<usize> {
        let value = self.field(entry, object, key)?;
        match value.as_u64() {
            Some(v) if (1..=MAX_SIDE).contains(&v) => Ok(v as usize),
            _ => Err(self.error(
                entry,
                format!("`{key}`: expected an integer in 1..={MAX_SIDE}, got {value}"),
            )),
        }
    }

    fn crowd(&self, entry: &str, object: &Map<String, Value>) -> Result<bool> {
        match object.get("iscrowd") {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => match v.as_u64() {
                Some(0) => Ok(false),
                Some(1) => Ok(true),
                _ => Err(self.error(
                    entry,
                    format!("`iscrowd`: expected 0, 1 or a boolean, got {v}"),
                )),
            },
        }
    }

    /// `[x, y, w, h]` as four finite numbers with non-negative sizes.
    fn bbox(&self, entry: &str, object: &Map<String, Value>) -> Result<[f64; 4]> {
        let value = self.field(entry, object, "bbox")?;
        let malformed = || {
            self.error(
                entry,
                format!(
                    "`bbox`: expected [x, y, width, height] of four finite numbers, got {value}"
                ),
            )
        };
        let items = value.as_array().ok_or_else(malformed)?;
        if items.len() != 4 {
            return Err(malformed());
        }
        let mut out = [0.0; 4];
        for (o, item) in out.iter_mut().zip(items) {
            *o = item
                .as_f64()
                .filter(|v| v.is_finite())
                .ok_or_else(malformed)?;
        }
        if out[2] < 0.0 || out[3] < 0.0 {
            return Err(self.error(
                entry,
                format!(
                    "`bbox`: expected a non-negative width and height, got width {} and height {}",
                    out[2], out[3]
                ),
            ));
        }
        Ok(out)
    }
}

/// A JSON value's kind, for messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl CocoDataset {
    /// Loads `annotation_file` with images under `image_dir`, normalised with [`Normalization::IMAGENET`].
    pub fn load(
        annotation_file: impl AsRef<Path>,
        image_dir: impl AsRef<Path>,
    ) -> Result<CocoDataset> {
        CocoDataset::load_with(annotation_file, image_dir, Normalization::IMAGENET)
    }

    /// Loads `annotation_file` with images under `image_dir`, normalised with `normalization`.
    pub fn load_with(
        annotation_file: impl AsRef<Path>,
        image_dir: impl AsRef<Path>,
        normalization: Normalization,
    ) -> Result<CocoDataset> {
        normalization.validate()?;
        let file = annotation_file.as_ref();
        let image_dir = image_dir.as_ref();
        let text = std::fs::read(file).map_err(|source| Error::Io {
            path: file.to_path_buf(),
            source,
        })?;
        let root: Value = serde_json::from_slice(&text).map_err(|e| {
            Error::invalid(file.display().to_string(), format!("malformed JSON: {e}"))
        })?;
        let parser = Parser { file };
        let root = parser.object("the top level", &root)?;

        let mut images = Vec::new();
        let mut image_index = HashMap::new();
        for (i, value) in parser.list(root, "images", true)?.iter().enumerate() {
            let entry = format!("images[{i}]");
            let object = parser.object(&entry, value)?;
            let entry = entry_name("images", i, object);
            let image = CocoImage {
                id: parser.id(&entry, object, "id")?,
                file_name: parser.string(&entry, object, "file_name")?,
                width: parser.side(&entry, object, "width")?,
                height: parser.side(&entry, object, "height")?,
            };
            if let Some(first) = image_index.insert(image.id, i) {
                return Err(parser.error(
                    &entry,
                    format!("duplicate image id {} (first in images[{first}])", image.id),
                ));
            }
            let path = image_dir.join(&image.file_name);
            if !path.is_file() {
                return Err(parser.error(
                    &entry,
                    format!("image file {} does not exist", path.display()),
                ));
            }
            images.push(image);
        }

        let mut categories = Vec::new();
        for (i, value) in parser.list(root, "categories", true)?.iter().enumerate() {
            let entry = format!("categories[{i}]");
            let object = parser.object(&entry, value)?;
            let entry = entry_name("categories", i, object);
            let category = CocoCategory {
                id: parser.id(&entry, object, "id")?,
                name: parser.string(&entry, object, "name")?,
            };
            if let Some(first) = categories
                .iter()
                .position(|c: &CocoCategory| c.id == category.id)
            {
                return Err(parser.error(
                    &entry,
                    format!(
                        "duplicate category id {} (first in categories[{first}])",
                        category.id
                    ),
                ));
            }
            categories.push(category);
        }
        categories.sort_by_key(|c| c.id);
        let label_of: HashMap<u64, usize> = categories
            .iter()
            .enumerate()
            .map(|(label, c)| (c.id, label))
            .collect();

        let mut annotations = vec![Vec::new(); images.len()];
        let mut report = LoadReport {
            images: images.len(),
            ..LoadReport::default()
        };
        for (i, value) in parser.list(root, "annotations", false)?.iter().enumerate() {
            let entry = format!("annotations[{i}]");
            let object = parser.object(&entry, value)?;
            let entry = entry_name("annotations", i, object);
            let image_id = parser.id(&entry, object, "image_id")?;
            let &image = image_index.get(&image_id).ok_or_else(|| {
                parser.error(
                    &entry,
                    format!("references image_id {image_id}, which no entry of `images` has"),
                )
            })?;
            let category_id = parser.id(&entry, object, "category_id")?;
            let &label = label_of.get(&category_id).ok_or_else(|| {
                parser.error(
                    &entry,
                    format!(
                        "references category_id {category_id}, which no entry of `categories` has"
                    ),
                )
            })?;
            let [x, y, w, h] = parser.bbox(&entry, object)?;
            let crowd = parser.crowd(&entry, object)?;
            let (iw, ih) = (images[image].width as f64, images[image].height as f64);
            let bbox = [
                x.clamp(0.0, iw) as f32,
                y.clamp(0.0, ih) as f32,
                (x + w).clamp(0.0, iw) as f32,
                (y + h).clamp(0.0, ih) as f32,
            ];
            if bbox[2] <= bbox[0] || bbox[3] <= bbox[1] {
                report.degenerate_dropped += 1;
                if report.degenerate_examples.len() < MAX_EXAMPLES {
                    report
                        .degenerate_examples
                        .push(format!("{entry}: bbox [{x}, {y}, {w}, {h}]"));
                }
                continue;
            }
            report.annotations += 1;
            report.crowd += usize::from(crowd);
            annotations[image].push(Annotation { bbox, label, crowd });
        }
        if report.degenerate_dropped > 0 {
            eprintln!(
                "warning: {}: dropped {} degenerate boxes (zero width or height after clipping to the image), e.g. {}",
                file.display(),
                report.degenerate_dropped,
                report.degenerate_examples.join("; ")
            );
        }
        let class_names = categories.iter().map(|c| c.name.clone()).collect();
        Ok(CocoDataset {
            annotation_file: file.to_path_buf(),
            image_dir: image_dir.to_path_buf(),
            images,
            annotations,
            categories,
            class_names,
            normalization,
            report,
        })
    }

    /// The annotation file this set was loaded from.
    pub fn annotation_file(&self) -> &Path {
        &self.annotation_file
    }

    /// The image folder.
    pub fn image_dir(&self) -> &Path {
        &self.image_dir
    }

    /// The `images` entries, in file order (sample `i` is `images()[i]`).
    pub fn images(&self) -> &[CocoImage] {
        &self.images
    }

    /// The categories sorted by id; label `l` is `categories()[l]`.
    pub fn categories(&self) -> &[CocoCategory] {
        &self.categories
    }

    /// The COCO category id of contiguous label `label`.
    pub fn category_id(&self, label: usize) -> Option<u64> {
        self.categories.get(label).map(|c| c.id)
    }

    /// The contiguous label of COCO category `id`.
    pub fn label_of_category(&self, id: u64) -> Option<usize> {
        self.categories.binary_search_by_key(&id, |c| c.id).ok()
    }

    /// Counts of what loading kept and dropped.
    pub fn report(&self) -> &LoadReport {
        &self.report
    }

    /// Decodes image `index` to interleaved 8-bit RGB `[H, W, 3]`; returns the bytes, height and width.
    pub fn decode_rgb8(&self, index: usize) -> Result<(Vec<u8>, usize, usize)> {
        let info = self
            .images
            .get(index)
            .ok_or_else(|| index_error("COCO data set", index, self.images.len()))?;
        let path = self.image_dir.join(&info.file_name);
        let fail = |reason: String| {
            Error::invalid(
                format!(
                    "{}: images[{index}] (id {})",
                    self.annotation_file.display(),
                    info.id
                ),
                reason,
            )
        };
        let decoded = image::ImageReader::open(&path)
            .and_then(|reader| reader.with_guessed_format())
            .map_err(|e| fail(format!("cannot open image file {}: {e}", path.display())))?
            .decode()
            .map_err(|e| fail(format!("cannot decode image file {}: {e}", path.display())))?
            .into_rgb8();
        let (w, h) = (decoded.width() as usize, decoded.height() as usize);
        if (w, h) != (info.width, info.height) {
            return Err(fail(format!(
                "image file {} is {w}×{h} (width × height), the entry says {}×{}",
                path.display(),
                info.width,
                info.height
            )));
        }
        Ok((decoded.into_raw(), h, w))
    }
}

impl Dataset for CocoDataset {
    fn len(&self) -> usize {
        self.images.len()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let (rgb, h, w) = self.decode_rgb8(index)?;
        let annotations = &self.annotations[index];
        Ok(Sample {
            image_id: self.images[index].id,
            image: self.normalization.normalize_rgb8(&rgb, h, w)?,
            boxes: annotations.iter().map(|a| a.bbox).collect(),
            labels: annotations.iter().map(|a| a.label).collect(),
            crowd: annotations.iter().map(|a| a.crowd).collect(),
        })
    }

    fn class_names(&self) -> &[String] {
        &self.class_names
    }
}

/// Where [`export_coco`] wrote a split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CocoExport {
    /// The annotation JSON (`<dir>/annotations.json`).
    pub annotation_file: PathBuf,
    /// The image folder (`<dir>/images`, files `<image id, 6 digits>.png`).
    pub image_dir: PathBuf,
    /// Images written.
    pub images: usize,
    /// Annotations written.
    pub annotations: usize,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `split` as COCO: PNGs (rendered in parallel) under `<dir>/images` and `<dir>/annotations.json`.
/// Category ids are `label + 1` with the class names; each kept object becomes an annotation with
/// `bbox = [x1, y1, x2 − x1, y2 − y1]`, `area` = its visible pixel count and `iscrowd = 0`. Loading the
/// result with [`CocoDataset::load_with`] and the split's normalisation gives back the split's samples
/// exactly.
pub fn export_coco(split: &SyntheticShapes, dir: impl AsRef<Path>) -> Result<CocoExport> {
    let dir = dir.as_ref();
    let image_dir = dir.join("images");
    std::fs::create_dir_all(&image_dir).map_err(io_error(&image_dir))?;
    let per_image = (0..split.len())
        .into_par_iter()
        .map(|index| {
            let rendered = split.render(index)?;
            let file_name = format!("{index:06}.png");
            let path = image_dir.join(&file_name);
            image::RgbImage::from_raw(
                rendered.width as u32,
                rendered.height as u32,
                rendered.rgb.clone(),
            )
            .ok_or_else(|| Error::invalid("rendered image", "buffer does not match its size"))?
            .save_with_format(&path, image::ImageFormat::Png)
            .map_err(|e| {
                Error::invalid(path.display().to_string(), format!("cannot write PNG: {e}"))
            })?;
            Ok((index, file_name, rendered))
        })
        .collect::<Result<Vec<_>>>()?;

    let mut images = Vec::with_capacity(per_image.len());
    let mut annotations = Vec::new();
    for (index, file_name, rendered) in &per_image {
        images.push(json!({
            "id": index,
            "file_name": file_name,
            "width": rendered.width,
            "height": rendered.height,
        }));
        for object in rendered.objects.iter().filter(|o| o.kept) {
            let Some(b) = object.visible_box else {
                continue;
            };
            annotations.push(json!({
                "id": annotations.len() + 1,
                "image_id": index,
                "category_id": object.label + 1,
                "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                "area": object.visible_pixels,
                "iscrowd": 0,
            }));
        }
    }
    let categories: Vec<Value> = split
        .class_names()
        .iter()
        .enumerate()
        .map(|(label, name)| json!({"id": label + 1, "name": name, "supercategory": "shape"}))
        .collect();
    let config = split.config();
    let root = json!({
        "info": {
            "description": "detkd synthetic shapes",
            "seed": split.seed(),
            "height": config.height,
            "width": config.width,
        },
        "images": images,
        "annotations": annotations,
        "categories": categories,
    });
    let annotation_file = dir.join("annotations.json");
    let text = serde_json::to_string_pretty(&root)
        .map_err(|e| Error::invalid("annotations", format!("cannot serialise: {e}")))?;
    std::fs::write(&annotation_file, text).map_err(io_error(&annotation_file))?;
    Ok(CocoExport {
        annotation_file,
        image_dir,
        images: images.len(),
        annotations: annotations.len(),
    })
}
