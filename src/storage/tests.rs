//! Unit tests for storage.
