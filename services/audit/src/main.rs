//! `paddock-audit`: the audit service alone.

paddock_shared::service_main!(paddock_audit, "paddock-audit", "Paddock audit service");
