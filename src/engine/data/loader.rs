//! A deterministic data loader: per-epoch seeded shuffling, batching, per-sample transforms in parallel.

use rayon::prelude::*;

use super::{collate, derive_seed, Batch, Dataset, Transform};
use crate::error::{Error, Result};
use crate::testing::Rng;

/// How a [`DataLoader`] orders and groups samples.
#[derive(Clone, Debug, PartialEq)]
pub struct LoaderConfig {
    /// Images per batch, ≥ 1; default 8.
    pub batch_size: usize,
    /// Shuffle the order every epoch (a Fisher–Yates permutation from `derive_seed(seed, epoch)`); default
    /// true. Without it batches follow the index order.
    pub shuffle: bool,
    /// Leave out the last batch when it would have fewer than `batch_size` images; default false.
    pub drop_last: bool,
    /// Seed of the shuffles.
    pub seed: u64,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 8,
            shuffle: true,
            drop_last: false,
            seed: 0,
        }
    }
}

/// Batches of a [`Dataset`], epoch by epoch. Epoch `e`'s batches depend only on the data set, the configs
/// and `e`: the order comes from `derive_seed(seed, e)` and each sample's transform key is
/// `derive_seed(e, index)`, so results do not depend on the rayon thread count.
#[derive(Clone, Debug)]
pub struct DataLoader<'a, D: Dataset + ?Sized> {
    dataset: &'a D,
    config: LoaderConfig,
    transform: Transform,
}

impl<'a, D: Dataset + ?Sized> DataLoader<'a, D> {
    /// A loader over `dataset`; validates both configs.
    pub fn new(dataset: &'a D, config: LoaderConfig, transform: Transform) -> Result<Self> {
        if config.batch_size == 0 {
            return Err(Error::invalid("batch_size", "expected ≥ 1, got 0"));
        }
        transform.validate()?;
        Ok(DataLoader {
            dataset,
            config,
            transform,
        })
    }

    /// The loader's configuration.
    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// The per-sample transform.
    pub fn transform(&self) -> &Transform {
        &self.transform
    }

    /// Batches per epoch: `⌊n / B⌋` with `drop_last`, else `⌈n / B⌉`.
    pub fn num_batches(&self) -> usize {
        let n = self.dataset.len();
        if self.config.drop_last {
            n / self.config.batch_size
        } else {
            n.div_ceil(self.config.batch_size)
        }
    }

    /// The sample order of `epoch`: a seeded permutation of `0..len` when shuffling, else `0..len`.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.dataset.len()).collect();
        if self.config.shuffle {
            let mut rng = Rng::new(derive_seed(self.config.seed, epoch));
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i + 1));
            }
        }
        order
    }

    /// Loads, transforms and collates the samples at `indices` (data-set indices) as in `epoch`.
    pub fn batch(&self, epoch: u64, indices: &[usize]) -> Result<Batch> {
        let samples = indices
            .par_iter()
            .map(|&index| {
                let sample = self.dataset.get(index)?;
                self.transform
                    .apply(sample, derive_seed(epoch, index as u64))
            })
            .collect::<Result<Vec<_>>>()?;
        collate(samples, self.transform.size_divisor)
    }

    /// The batches of `epoch`, in order.
    pub fn epoch(&self, epoch: u64) -> EpochBatches<'_, 'a, D> {
        EpochBatches {
            loader: self,
            epoch,
            order: self.order(epoch),
            next_batch: 0,
        }
    }
}

/// Iterator over one epoch's batches (see [`DataLoader::epoch`]); yields an `Err` for a sample that fails
/// to load and goes on with the next batch.
#[derive(Debug)]
pub struct EpochBatches<'l, 'a, D: Dataset + ?Sized> {
    loader: &'l DataLoader<'a, D>,
    epoch: u64,
    order: Vec<usize>,
    next_batch: usize,
}

impl<D: Dataset + ?Sized> EpochBatches<'_, '_, D> {
    /// The epoch's sample order.
    pub fn order(&self) -> &[usize] {
        &self.order
    }
}

impl<D: Dataset + ?Sized> Iterator for EpochBatches<'_, '_, D> {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.next_batch >= self.loader.num_batches() {
            return None;
        }
        let size = self.loader.config.batch_size;
        let start = self.next_batch * size;
        let end = (start + size).min(self.order.len());
        self.next_batch += 1;
        Some(self.loader.batch(self.epoch, &self.order[start..end]))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.loader.num_batches() - self.next_batch;
        (left, Some(left))
    }
}

impl<D: Dataset + ?Sized> ExactSizeIterator for EpochBatches<'_, '_, D> {}
