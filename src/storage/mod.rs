//! storage (placeholder)
