//! `paddock-authz`: the authz service alone.

paddock_shared::service_main!(paddock_authz, "paddock-authz", "Paddock authz service");
