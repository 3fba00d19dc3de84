//! The `similarity` op family (work in progress).
