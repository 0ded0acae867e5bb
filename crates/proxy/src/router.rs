//! Route matching (placeholder).
