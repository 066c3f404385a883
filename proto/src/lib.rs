//! `moat-proto`: the generated gRPC types and service stubs of `moat.proto`, and the validated
//! conversions into `moat-shared`'s domain types.
//!
//! The generated types stop at the boundary: edges and control nodes convert them with
//! [`convert`] as soon as they arrive and never pass them around inside.

pub mod convert;
pub mod mtls;

/// Everything `moat.proto` defines (package `moat.v1`).
#[allow(missing_docs, clippy::all, clippy::unwrap_used)]
pub mod v1 {
    tonic::include_proto!("moat.v1");
}

pub use v1::*;
