//! End-to-end tests that drive the real plenary binary.
