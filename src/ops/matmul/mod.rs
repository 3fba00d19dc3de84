//! The `matmul` op family (work in progress).
