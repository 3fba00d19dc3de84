//! The `prototype` op family (work in progress).
