//! tonic binding for pickwise (work in progress).
pub use pickwise;
