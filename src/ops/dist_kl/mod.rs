//! The `dist_kl` op family (work in progress).
