//! tracker (placeholder)
