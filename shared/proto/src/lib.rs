//! Paddock's gRPC contracts: generated messages, clients and servers, the
//! descriptor set for reflection, and each RPC's declared access rule.
#![forbid(unsafe_code)]
// Outside tests a failure is an answer, never a panic.

pub mod api {
    pub mod v1 {
        tonic::include_proto!("paddock.api.v1");
    }
}

pub mod identity {
    pub mod v1 {
        tonic::include_proto!("paddock.identity.v1");
    }
}

pub mod audit {
    pub mod v1 {
        tonic::include_proto!("paddock.audit.v1");
    }
}

pub mod sandbox {
    pub mod v1 {
        tonic::include_proto!("paddock.sandbox.v1");
    }
}

pub mod authz {
    pub mod v1 {
        tonic::include_proto!("paddock.authz.v1");
    }
}

/// Encoded `FileDescriptorSet` of every Paddock proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/paddock_descriptor.bin"));

/// How the shared auth layers admit a call, as declared on the RPC with the
/// `(paddock.api.v1.access)` method option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The caller needs this permission in its organization.
    Permission(&'static str),
    /// No token needed; the RPC checks its own credential.
    Public,
    /// Service principals only.
    Internal,
    /// Any authenticated principal.
    Authenticated,
    /// The platform bootstrap principal only.
    Platform,
}

include!(concat!(env!("OUT_DIR"), "/access_table.rs"));

/// The declared access rule of an RPC path (`/pkg.Service/Method`), if any.
pub fn access_for(path: &str) -> Option<Access> {
    ACCESS
        .binary_search_by(|(p, _)| (*p).cmp(path))
        .ok()
        .map(|i| ACCESS[i].1)
}
