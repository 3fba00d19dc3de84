//! Detection data on the host: data sets, transforms, batch collation and a seeded loader.
//!
//! Everything here is plain Rust on the CPU and bitwise deterministic: the same seeds give the same bytes on
//! every run and for every rayon thread count, because each image draws from its own generator keyed by
//! `(seed, index)` and never from a shared one.
//!
//! - [`synthetic`]: a procedurally generated shapes detection set ([`SyntheticShapes`]), small enough to train
//!   a detector on a laptop CPU in minutes.
//! - [`coco`]: a COCO-format loader ([`CocoDataset`]) and an exporter that writes a synthetic set as COCO JSON
//!   plus PNGs ([`export_coco`]).
//! - [`transforms`]: resize keeping the aspect ratio, horizontal flip, padding to a stride ([`Transform`]).
//! - [`batch`]: collation into a `[B, 3, H, W]` [`Tensor`] plus per-image targets and the
//!   metadata that maps detections back to the original image ([`Batch`], [`ImageMeta`]).
//! - [`loader`]: per-epoch seeded shuffling and batching ([`DataLoader`]).
//!
//! Conventions shared by every part:
//!
//! - Images are 3-channel RGB, channel-major (`[3, H, W]`), f32, normalised per channel as
//!   `x = (v / 255 − mean[c]) / std[c]` from 8-bit values `v` ([`Normalization`], ImageNet statistics by
//!   default). Padding adds zeros *after* normalisation, i.e. the mean colour.
//! - Boxes are `[x1, y1, x2, y2]` in pixel-edge coordinates: a box covering pixel columns `i..=j` has
//!   `x1 = i`, `x2 = j + 1`, so `0 ≤ x1 < x2 ≤ W` and the width is `x2 − x1`.
//! - Labels are contiguous class indices `0..num_classes`.
//!
//! ```
//! use detkd::engine::data::{DataLoader, LoaderConfig, SyntheticConfig, SyntheticShapes, Transform};
//!
//! let (train, _val) = SyntheticShapes::splits(SyntheticConfig::default(), 0, 8, 4)?;
//! let loader = DataLoader::new(
//!     &train,
//!     LoaderConfig { batch_size: 4, seed: 1, ..Default::default() },
//!     Transform { flip_probability: 0.5, ..Default::default() },
//! )?;
//! for batch in loader.epoch(0) {
//!     let batch = batch?;
//!     assert_eq!(batch.images.shape(), &[4, 3, 128, 128]);
//!     for (target, meta) in batch.targets.iter().zip(&batch.metas) {
//!         for b in &target.boxes {
//!             let original = meta.box_to_original(*b); // back to the un-flipped source image
//!             assert!(original[0] < original[2] && original[2] <= 128.0);
//!         }
//!     }
//! }
//! # Ok::<(), detkd::Error>(())
//! ```

pub mod batch;
pub mod coco;
pub mod loader;
mod shapes;
pub mod synthetic;
pub mod transforms;

pub use batch::{collate, Batch, Target};
pub use coco::{export_coco, CocoCategory, CocoDataset, CocoExport, CocoImage, LoadReport};
pub use loader::{DataLoader, EpochBatches, LoaderConfig};
pub use synthetic::{
    ObjectRecord, ObjectSpec, RenderedScene, Scene, ShapeClass, SyntheticConfig, SyntheticShapes,
    NO_OWNER,
};
pub use transforms::{
    fit_size, flip_horizontal, pad_to, pad_to_multiple, resize, resize_to_fit, round_up, ImageMeta,
    Transform,
};

use crate::error::{Error, Result};
use crate::testing::Rng;
use crate::Tensor;

/// An `[x1, y1, x2, y2]` box in pixel-edge coordinates (see the [module docs](self)).
pub type BoxXyxy = [f32; 4];

/// Per-channel normalisation of 8-bit RGB: `x = (v / 255 − mean[c]) / std[c]`, computed in f32.
///
/// The default is the ImageNet statistics most detectors' backbones were trained with:
/// mean `(0.485, 0.456, 0.406)`, std `(0.229, 0.224, 0.225)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalization {
    /// Per-channel mean on the `[0, 1]` scale (R, G, B).
    pub mean: [f32; 3],
    /// Per-channel standard deviation on the `[0, 1]` scale (R, G, B); each must be positive.
    pub std: [f32; 3],
}

impl Normalization {
    /// The ImageNet statistics (the default).
    pub const IMAGENET: Normalization = Normalization {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };

    /// No normalisation beyond `v / 255`: mean 0, std 1.
    pub const UNIT: Normalization = Normalization {
        mean: [0.0; 3],
        std: [1.0; 3],
    };

    /// Checks that every mean is finite and every std finite and positive.
    pub fn validate(&self) -> Result<()> {
        for c in 0..3 {
            if !self.mean[c].is_finite() {
                return Err(Error::invalid(
                    "normalization.mean",
                    format!("expected finite values, got {:?}", self.mean),
                ));
            }
            if !(self.std[c].is_finite() && self.std[c] > 0.0) {
                return Err(Error::invalid(
                    "normalization.std",
                    format!("expected finite positive values, got {:?}", self.std),
                ));
            }
        }
        Ok(())
    }

    /// The normalised value of every 8-bit level, per channel; a table keeps the loader and the synthetic
    /// generator bitwise identical for the same pixels.
    fn table(&self) -> [[f32; 256]; 3] {
        let mut table = [[0.0f32; 256]; 3];
        for (c, row) in table.iter_mut().enumerate() {
            for (v, out) in row.iter_mut().enumerate() {
                *out = (v as f32 / 255.0 - self.mean[c]) / self.std[c];
            }
        }
        table
    }

    /// Normalises interleaved 8-bit RGB (`[H, W, 3]`, row-major, as image files decode) into a channel-major
    /// [`Image`].
    pub fn normalize_rgb8(&self, rgb: &[u8], height: usize, width: usize) -> Result<Image> {
        self.validate()?;
        let pixels = height
            .checked_mul(width)
            .ok_or_else(|| Error::invalid("image", format!("{height}×{width} overflows usize")))?;
        if pixels.checked_mul(3) != Some(rgb.len()) {
            return Err(Error::invalid(
                "rgb",
                format!(
                    "expected {height}×{width}×3 = {} bytes, got {}",
                    pixels.saturating_mul(3),
                    rgb.len()
                ),
            ));
        }
        let table = self.table();
        let mut data = vec![0.0f32; 3 * pixels];
        for (p, px) in rgb.chunks_exact(3).enumerate() {
            for c in 0..3 {
                data[c * pixels + p] = table[c][px[c] as usize];
            }
        }
        Image::new(height, width, data)
    }
}

impl Default for Normalization {
    fn default() -> Self {
        Normalization::IMAGENET
    }
}

/// A 3-channel f32 image, channel-major (`[3, H, W]`, row-major within a channel).
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    height: usize,
    width: usize,
    data: Vec<f32>,
}

impl Image {
    /// Wraps `data`, which must hold `3 · height · width` values laid out `[3, H, W]`.
    pub fn new(height: usize, width: usize, data: Vec<f32>) -> Result<Image> {
        let expected = height.checked_mul(width).and_then(|n| n.checked_mul(3));
        if expected != Some(data.len()) {
            return Err(Error::invalid(
                "image data",
                format!(
                    "expected 3×{height}×{width} values, got {} values",
                    data.len()
                ),
            ));
        }
        Ok(Image {
            height,
            width,
            data,
        })
    }

    /// An all-zero image (the mean colour once normalised).
    pub fn zeros(height: usize, width: usize) -> Result<Image> {
        let n = height
            .checked_mul(width)
            .and_then(|n| n.checked_mul(3))
            .ok_or_else(|| {
                Error::invalid("image", format!("3×{height}×{width} overflows usize"))
            })?;
        Image::new(height, width, vec![0.0; n])
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// All values, `[3, H, W]`.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// One channel's `H · W` values, row-major.
    ///
    /// # Panics
    ///
    /// If `c > 2` (like indexing a slice out of range).
    pub fn channel(&self, c: usize) -> &[f32] {
        let plane = self.height * self.width;
        &self.data[c * plane..(c + 1) * plane]
    }

    /// Consumes the image, returning its `[3, H, W]` values.
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// A `[3, H, W]` f32 host tensor with a copy of the values.
    pub fn to_tensor(&self) -> Result<Tensor> {
        Tensor::from_vec(self.data.clone(), &[3, self.height, self.width])
    }
}

/// One detection example: an image and its annotations, in matching order across `boxes`, `labels` and
/// `crowd`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The image's id: the index within a synthetic split, the `id` of a COCO `images` entry.
    pub image_id: u64,
    /// The normalised image.
    pub image: Image,
    /// `[x1, y1, x2, y2]` boxes in pixel-edge coordinates of `image`.
    pub boxes: Vec<BoxXyxy>,
    /// Contiguous class labels, one per box.
    pub labels: Vec<usize>,
    /// Whether each box is a COCO crowd region (`iscrowd = 1`). Crowd boxes are kept here so evaluation can
    /// ignore detections on them, and left out of training targets by [`collate`].
    pub crowd: Vec<bool>,
}

/// A random-access detection data set. `Sync` so the [`DataLoader`] can fetch a batch's samples in
/// parallel.
pub trait Dataset: Sync {
    /// Number of samples.
    fn len(&self) -> usize;

    /// Whether there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sample `index` (`0..len()`); an `Err` for an index out of range or an unreadable source.
    fn get(&self, index: usize) -> Result<Sample>;

    /// Class names, indexed by label.
    fn class_names(&self) -> &[String];

    /// Number of classes (`class_names().len()`).
    fn num_classes(&self) -> usize {
        self.class_names().len()
    }
}

/// A seed for stream `stream` of `seed`: SplitMix64 of a mix of both, so nearby seeds and streams give
/// unrelated generators. Every per-image, per-epoch and per-split generator in this module comes from it.
pub fn derive_seed(seed: u64, stream: u64) -> u64 {
    Rng::new(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03).rotate_left(17)).next_u64()
}

/// The error for `index` outside `0..len` in a data set called `what`.
pub(crate) fn index_error(what: &str, index: usize, len: usize) -> Error {
    Error::invalid(
        "index",
        format!("{what} has {len} samples (0..{len}), got index {index}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_matches_formula_and_validates() {
        let norm = Normalization::IMAGENET;
        let image = norm
            .normalize_rgb8(&[0, 128, 255, 10, 20, 30], 1, 2)
            .unwrap();
        assert_eq!(
            image.channel(0),
            &[(0.0 - 0.485) / 0.229, (10.0 / 255.0 - 0.485) / 0.229]
        );
        assert_eq!(image.channel(2)[0], (1.0 - 0.406) / 0.225);
        assert!(norm.normalize_rgb8(&[0; 5], 1, 2).is_err());
        let bad = Normalization {
            std: [1.0, 0.0, 1.0],
            ..Normalization::IMAGENET
        };
        assert!(bad.validate().is_err());
        assert!(Normalization {
            mean: [f32::NAN, 0.0, 0.0],
            ..Normalization::UNIT
        }
        .validate()
        .is_err());
    }

    #[test]
    fn derived_seeds_differ_by_stream_and_seed() {
        let a = derive_seed(1, 0);
        assert_eq!(a, derive_seed(1, 0));
        assert_ne!(a, derive_seed(1, 1));
        assert_ne!(a, derive_seed(2, 0));
        assert_ne!(derive_seed(0, 1), derive_seed(1, 0));
    }

    #[test]
    fn image_rejects_wrong_length() {
        assert!(Image::new(2, 2, vec![0.0; 11]).is_err());
        let image = Image::new(1, 2, (0..6).map(|v| v as f32).collect()).unwrap();
        assert_eq!(image.channel(1), &[2.0, 3.0]);
        assert_eq!(image.to_tensor().unwrap().shape(), &[3, 1, 2]);
    }
}
