//! Logging and W3C trace context. Servers read `traceparent` from incoming
//! metadata (or start a trace), keep it in a task-local for the request, and
//! every Paddock client writes it into outgoing metadata, so one trace id
//! follows a request through every hop. OTLP export plugs in here.

use std::fmt;

use rand::Rng;

/// Initializes `tracing` once per process; `PADDOCK_LOG` (or `RUST_LOG`)
/// sets the filter, default `info`. Colours only on a terminal, and never
/// with `NO_COLOR` set: logs piped to a file or journald stay plain text.
pub fn init() {
    use std::io::IsTerminal;
    let filter = std::env::var("PADDOCK_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_owned());
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// A W3C trace context: trace id, parent span id and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

impl TraceContext {
    /// A new trace.
    pub fn root() -> Self {
        let mut rng = rand::rng();
        Self {
            trace_id: rng.random(),
            span_id: rng.random(),
            sampled: true,
        }
    }

    /// The same trace with a new span, for the next hop.
    pub fn child(&self) -> Self {
        Self {
            span_id: rand::rng().random(),
            ..*self
        }
    }

    /// Parses a `traceparent` header (version 00).
    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version != "00" || parts.next().is_some() {
            return None;
        }
        let trace_id: [u8; 16] = hex(trace)?.try_into().ok()?;
        let span_id: [u8; 8] = hex(span)?.try_into().ok()?;
        let flags = hex(flags)?;
        if trace_id == [0; 16] || span_id == [0; 8] || flags.len() != 1 {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            sampled: flags[0] & 1 == 1,
        })
    }

    pub fn trace_id_hex(&self) -> String {
        to_hex(&self.trace_id)
    }

    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            to_hex(&self.trace_id),
            to_hex(&self.span_id),
            u8::from(self.sampled)
        )
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.traceparent())
    }
}

fn hex(s: &str) -> Option<Vec<u8>> {
    crate::hex::decode(s)
}

fn to_hex(bytes: &[u8]) -> String {
    crate::hex::encode(bytes)
}

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// Runs `fut` with `ctx` as the current trace context.
pub async fn with_trace<F: Future>(ctx: TraceContext, fut: F) -> F::Output {
    CURRENT.scope(ctx, fut).await
}

/// The current request's trace context, if any.
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(|c| *c).ok()
}

/// The current trace id, or `-` outside a request.
pub fn current_trace_id() -> String {
    current().map_or_else(|| "-".to_owned(), |c| c.trace_id_hex())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips() {
        let ctx = TraceContext::root();
        assert_eq!(TraceContext::parse(&ctx.traceparent()), Some(ctx));
        let child = ctx.child();
        assert_eq!(child.trace_id, ctx.trace_id);
        assert_ne!(child.span_id, ctx.span_id);
        assert!(
            TraceContext::parse("00-00000000000000000000000000000000-0000000000000001-01")
                .is_none()
        );
        assert!(TraceContext::parse("garbage").is_none());
        assert!(
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                .is_some()
        );
    }
}
