//! `moat-proto`: the generated gRPC types and service stubs of `moat.proto`.
//!
//! These types stop at the boundary: edges and control nodes convert them into the validated
//! domain types of `moat-shared` (and back) as soon as they arrive, and never pass them around
//! inside.

#![allow(missing_docs, clippy::all, clippy::unwrap_used)]

/// Everything `moat.proto` defines (package `moat.v1`).
pub mod v1 {
    tonic::include_proto!("moat.v1");
}

pub use v1::*;
