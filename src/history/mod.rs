//! History: what the store keeps over time, and moving it out of tallyd. Today that is
//! [`export`] (a metric's points as OpenMetrics text for `promtool tsdb
//! create-blocks-from openmetrics`) and the `tallyd history` subcommands that run it and back the
//! store up ([`crate::store::sqlite::backup`]).

pub mod export;

use std::path::Path;
use std::process::ExitCode;

use crate::config::HistoryCommand;
use crate::custom::time::parse_instant;
use crate::store::sqlite;

/// Runs `tallyd history …` against the store in `data_dir`: 0 done, 1 failed, 2 bad arguments.
pub fn run_command(command: &HistoryCommand, data_dir: &Path) -> ExitCode {
    match command {
        HistoryCommand::Export {
            metric,
            tenant,
            start,
            end,
            output,
        } => {
            let instant = |flag: &str, text: &Option<String>, default: i64| match text {
                Some(text) => parse_instant(text).map_err(|e| format!("--{flag}: {e}")),
                None => Ok(default),
            };
            let range = instant("start", start, i64::MIN)
                .and_then(|start| Ok((start, instant("end", end, i64::MAX)?)));
            let (start_ms, end_ms) = match range {
                Ok(range) => range,
                Err(e) => {
                    eprintln!("tallyd history export: {e}");
                    return ExitCode::from(2);
                }
            };
            let request = export::Export {
                metric: metric.clone(),
                tenant: tenant.clone(),
                start_ms,
                end_ms,
            };
            let result = sqlite::open_reader(data_dir)
                .map_err(export::ExportError::Store)
                .and_then(|reader| match output {
                    Some(path) => {
                        let file =
                            std::fs::File::create(path).map_err(export::ExportError::Output)?;
                        export::export(&reader, &request, &mut std::io::BufWriter::new(file))
                    }
                    None => export::export(&reader, &request, &mut std::io::stdout().lock()),
                });
            match result {
                Ok(done) => {
                    eprintln!(
                        "tallyd history export: {metric}: {} series, {} samples",
                        done.series, done.samples
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    if let Some(path) = output {
                        // No half-written export is left to be imported by mistake.
                        let _ = std::fs::remove_file(path);
                    }
                    eprintln!("tallyd history export: {metric}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        HistoryCommand::Backup { to } => match sqlite::backup(data_dir, to) {
            Ok(bytes) => {
                eprintln!(
                    "tallyd history backup: {} → {} ({bytes} bytes)",
                    data_dir.join(sqlite::FILE_NAME).display(),
                    to.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tallyd history backup: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
