//! Benchmarks for pickwise.
