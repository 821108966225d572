//! `paddock bench`: the benchmarks of ARCHITECTURE §10 and the harness
//! they share: the measured rows (`Sample`, nearest-rank percentiles), the
//! §10 report (JSON, or a table), and the loop that drives N concurrent
//! callers of one operation. Each benchmark is a submodule that uses this
//! harness; only the dispatch below names them.

mod audit;
mod authz;
mod otlp;
mod sandbox;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Subcommand;
use serde_json::{Value, json};
use tonic::{Code, Status};

use crate::Global;
use crate::error::{CliError, code_name};
use crate::output::{Format, Table, print_json};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// health (baseline) vs authz.check vs authorized.read, over a seeded org.
    Authz(authz::AuthzBenchArgs),
    /// storage.raw_batch_insert (baseline) vs audit.append vs
    /// audit.query_first_page, over at least --events stored events.
    Audit(audit::AuditBenchArgs),
    /// docker.create_start / docker.exec / docker.stop (baselines) vs
    /// sandbox.create, sandbox.exec and sandbox.stop on the Docker Engine.
    Sandbox(sandbox::SandboxBenchArgs),
}

pub async fn run(global: &Global, cmd: BenchCommand) -> Result<(), CliError> {
    match cmd {
        BenchCommand::Authz(args) => authz::run(global, args).await,
        BenchCommand::Audit(args) => audit::run(global, args).await,
        BenchCommand::Sandbox(args) => sandbox::run(global, args).await,
    }
}

/// One measured row.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub ops_per_s: f64,
    pub p50_us: u32,
    pub p99_us: u32,
    pub count: usize,
}

impl Sample {
    /// From per-request latencies (µs) completed within `elapsed`.
    pub fn from_latencies(mut latencies: Vec<u32>, elapsed: Duration) -> Self {
        latencies.sort_unstable();
        let secs = elapsed.as_secs_f64();
        Sample {
            ops_per_s: if secs > 0.0 {
                latencies.len() as f64 / secs
            } else {
                0.0
            },
            p50_us: percentile(&latencies, 50.0),
            p99_us: percentile(&latencies, 99.0),
            count: latencies.len(),
        }
    }
}

/// Nearest-rank percentile of sorted values; 0 when empty.
pub fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The §10 report.
pub fn report(area: &str, baseline: (&str, &Sample), measured: &[(&str, &Sample)]) -> Value {
    let (base_name, base) = baseline;
    let mut rows = vec![json!({
        "name": base_name,
        "baseline": null,
        "ops_per_s": base.ops_per_s.round() as u64,
        "p50_us": base.p50_us,
        "p99_us": base.p99_us,
        "ratio_to_baseline": 1.0,
    })];
    for (name, s) in measured {
        let ratio = if base.ops_per_s > 0.0 {
            round3(s.ops_per_s / base.ops_per_s)
        } else {
            0.0
        };
        rows.push(json!({
            "name": name,
            "baseline": base_name,
            "ratio_of": "ops_per_s",
            "ops_per_s": s.ops_per_s.round() as u64,
            "p50_us": s.p50_us,
            "p99_us": s.p99_us,
            "ratio_to_baseline": ratio,
            "added_p50_us": i64::from(s.p50_us) - i64::from(base.p50_us),
            "added_p99_us": i64::from(s.p99_us) - i64::from(base.p99_us),
        }));
    }
    json!({ "area": area, "rows": rows })
}

pub fn print_report_table(report: &Value) {
    let mut t = Table::new(&[
        "ROW",
        "OPS/S",
        "P50 µs",
        "P99 µs",
        "RATIO",
        "ADDED P50",
        "ADDED P99",
        "BASELINE",
    ]);
    let rows = report
        .get("rows")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let cell = |row: &Value, key: &str| match row.get(key) {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    };
    for row in &rows {
        t.row(vec![
            cell(row, "name"),
            cell(row, "ops_per_s"),
            cell(row, "p50_us"),
            cell(row, "p99_us"),
            cell(row, "ratio_to_baseline"),
            cell(row, "added_p50_us"),
            cell(row, "added_p99_us"),
            cell(row, "baseline"),
        ]);
    }
    t.print();
}

/// Prints a report as `-o` asks: the JSON alone on stdout, or a table.
fn print_report(global: &Global, report: &Value) {
    if global.output == Format::Json {
        print_json(report);
    } else {
        print_report_table(report);
    }
}

/// A failure of the bench itself (not of a measured call), naming the step.
fn internal(what: &str, e: impl std::fmt::Display) -> CliError {
    CliError::new(Code::Internal, format!("{what}: {e}"))
}

/// One measured request kind; each caller task owns a clone.
trait Op: Clone + Send + 'static {
    fn call(&mut self) -> impl Future<Output = Result<(), Status>> + Send + '_;
}

/// Runs `op` on `concurrency` callers for `duration` after a short warm-up;
/// returns the latencies (µs) and the time they were measured over. Any
/// failed request fails the row.
async fn measure<O: Op>(
    name: &str,
    op: O,
    concurrency: usize,
    duration: Duration,
) -> Result<(Vec<u32>, Duration), CliError> {
    let warmup = Duration::from_millis(100);
    let start = Instant::now() + warmup;
    let deadline = start + duration;
    let errors = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let mut op = op.clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies: Vec<u32> = Vec::with_capacity(16 * 1024);
            let mut first_error: Option<Status> = None;
            let mut last_end = start;
            loop {
                let t0 = Instant::now();
                if t0 >= deadline {
                    break;
                }
                let res = op.call().await;
                let t1 = Instant::now();
                match res {
                    Ok(()) if t0 >= start => {
                        latencies.push(u32::try_from((t1 - t0).as_micros()).unwrap_or(u32::MAX));
                        last_end = t1;
                    }
                    Ok(()) => {}
                    Err(s) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_error.get_or_insert(s);
                        break;
                    }
                }
            }
            (latencies, last_end, first_error)
        }));
    }
    let mut all = Vec::new();
    let mut end = start;
    let mut first_error = None;
    for t in tasks {
        let (lat, last_end, err) = t.await.map_err(|e| {
            CliError::new(Code::Internal, format!("{name}: caller task failed: {e}"))
        })?;
        all.extend(lat);
        end = end.max(last_end);
        if first_error.is_none() {
            first_error = err;
        }
    }
    if let Some(s) = first_error {
        return Err(CliError::new(
            s.code(),
            format!(
                "{name}: {} request(s) failed; first: {}: {}",
                errors.load(Ordering::Relaxed),
                code_name(s.code()),
                s.message()
            ),
        ));
    }
    Ok((all, end.saturating_duration_since(start).max(duration)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }

    #[test]
    fn samples_from_latencies() {
        let s = Sample::from_latencies(vec![30, 10, 20, 40], Duration::from_secs(2));
        assert_eq!(s.ops_per_s, 2.0);
        assert_eq!((s.p50_us, s.p99_us, s.count), (20, 40, 4));
    }

    #[test]
    fn report_has_the_architecture_shape() {
        let base = Sample {
            ops_per_s: 40_000.0,
            p50_us: 700,
            p99_us: 1900,
            count: 1,
        };
        let check = Sample {
            ops_per_s: 36_000.0,
            p50_us: 780,
            p99_us: 2100,
            count: 1,
        };
        let r = report("authz", ("health", &base), &[("authz.check", &check)]);
        assert_eq!(
            r,
            json!({"area": "authz", "rows": [
                {"name": "health", "baseline": null, "ops_per_s": 40000, "p50_us": 700, "p99_us": 1900, "ratio_to_baseline": 1.0},
                {"name": "authz.check", "baseline": "health", "ratio_of": "ops_per_s", "ops_per_s": 36000, "p50_us": 780,
                 "p99_us": 2100, "ratio_to_baseline": 0.9, "added_p50_us": 80, "added_p99_us": 200}
            ]})
        );
    }
}
