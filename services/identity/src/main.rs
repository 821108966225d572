//! `paddock-identity`: the identity service alone.

paddock_shared::service_main!(
    paddock_identity,
    "paddock-identity",
    "Paddock identity service"
);
