//! `metrics.csv`: one row per finished iteration, flushed as it is written.

use std::fs::{self, File, OpenOptions};
use std::path::Path;

use anyhow::{Context, Result};

use crate::atomic_file::write_bytes_atomically;
use crate::value_matching::IterationStats;

/// Appends iteration rows to a CSV file.
pub struct MetricsLog {
    writer: csv::Writer<File>,
}

impl MetricsLog {
    /// Opens `path`, keeping the rows of the first `keep` iterations (those a resumed run
    /// already has in its checkpoint) and dropping any later ones; returns the kept rows too.
    pub fn open(path: &Path, keep: usize) -> Result<(Self, Vec<IterationStats>)> {
        let kept: Vec<IterationStats> = if path.exists() {
            read(path)?
                .into_iter()
                .filter(|s| s.iteration < keep)
                .collect()
        } else {
            Vec::new()
        };
        let mut writer = csv::Writer::from_writer(Vec::new());
        if kept.is_empty() {
            // A header even before the first row, so the file always parses.
            writer.write_record(HEADER)?;
        }
        for row in &kept {
            writer.serialize(row)?;
        }
        let bytes = writer.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
        write_bytes_atomically(path, &bytes)?;
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let writer = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(file);
        Ok((Self { writer }, kept))
    }

    /// Appends one row and flushes it to the file.
    pub fn append(&mut self, stats: &IterationStats) -> Result<()> {
        self.writer.serialize(stats)?;
        self.writer.flush()?;
        Ok(())
    }
}

const HEADER: [&str; 8] = [
    "iteration",
    "loss",
    "reward_mean",
    "reward_std",
    "valid_fraction",
    "control_cost",
    "grad_norm",
    "seconds",
];

/// Every row of a metrics file.
pub fn read(path: &Path) -> Result<Vec<IterationStats>> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    reader
        .deserialize()
        .collect::<Result<Vec<IterationStats>, _>>()
        .with_context(|| format!("{} is not a metrics file", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(iteration: usize) -> IterationStats {
        IterationStats {
            iteration,
            loss: 0.5,
            reward_mean: 0.25,
            reward_std: 0.1,
            valid_fraction: 1.0,
            control_cost: 0.0,
            grad_norm: 2.0,
            seconds: 0.01,
        }
    }

    #[test]
    fn resuming_keeps_earlier_rows_and_drops_later_ones() {
        let dir = std::env::temp_dir().join(format!("flowgym-metrics-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("metrics.csv");
        let (mut log, kept) = MetricsLog::open(&path, 0).unwrap();
        assert!(kept.is_empty());
        for i in 0..5 {
            log.append(&row(i)).unwrap();
        }
        drop(log);
        let (mut log, kept) = MetricsLog::open(&path, 3).unwrap();
        assert_eq!(kept, vec![row(0), row(1), row(2)]);
        log.append(&row(3)).unwrap();
        let rows = read(&path).unwrap();
        assert_eq!(
            rows.iter().map(|r| r.iteration).collect::<Vec<_>>(),
            vec![0, 1, 2, 3]
        );
        assert!(fs::read_to_string(&path)
            .unwrap()
            .starts_with("iteration,loss,"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
