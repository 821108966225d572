//! The RPCs as the layers see them, by path: their descriptors at run time,
//! from the proto crate's descriptor set (whether a method streams, its
//! input type).

use std::sync::LazyLock;

use prost_reflect::{DescriptorPool, MethodDescriptor};

/// Every Paddock proto, decoded once; `None` only if the embedded
/// descriptor set does not decode (then no method is known, and each layer
/// falls back to what it does for an unknown method).
static POOL: LazyLock<Option<DescriptorPool>> = LazyLock::new(|| {
    DescriptorPool::decode(crate::proto::FILE_DESCRIPTOR_SET)
        .inspect_err(|e| tracing::error!(error = %e, "the embedded descriptor set does not decode"))
        .ok()
});

/// The method of an RPC path (`/pkg.Service/Method`), if it is a Paddock
/// RPC.
pub fn method(path: &str) -> Option<MethodDescriptor> {
    let (service, name) = path.strip_prefix('/')?.split_once('/')?;
    POOL.as_ref()?
        .get_service_by_name(service)?
        .methods()
        .find(|m| m.name() == name)
}

/// Whether neither side of the RPC streams (`None` for an unknown path).
pub fn is_unary(path: &str) -> Option<bool> {
    method(path).map(|m| !m.is_client_streaming() && !m.is_server_streaming())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_found_by_path() {
        assert_eq!(
            is_unary("/paddock.identity.v1.IdentityService/GetProject"),
            Some(true)
        );
        assert_eq!(
            is_unary("/paddock.identity.v1.IdentityService/WatchInvalidations"),
            Some(false)
        );
        assert_eq!(
            is_unary("/paddock.sandbox.v1.SandboxService/Exec"),
            Some(false)
        );
        assert_eq!(is_unary("/paddock.identity.v1.IdentityService/Nope"), None);
        assert_eq!(is_unary("/grpc.health.v1.Health/Check"), None);
        assert_eq!(is_unary("garbage"), None);
    }
}
