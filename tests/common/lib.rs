//! Workspace integration tests live in this folder; this library is empty.
