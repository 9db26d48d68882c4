//! reactor (placeholder)
