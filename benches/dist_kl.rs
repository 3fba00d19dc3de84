//! Criterion bench for the `dist_kl` op family at the shapes of shared/DESIGN.md.

fn main() {}
