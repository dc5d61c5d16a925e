//! A run of named stages (lint, test) with a pass/fail summary at the end.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::util::fmt_duration;

enum Outcome {
    Passed,
    Failed(anyhow::Error),
    Skipped(&'static str),
}

struct Stage {
    name: &'static str,
    outcome: Outcome,
    duration: Duration,
}

/// Runs stages one after another, remembering how each went.
pub(crate) struct Stages {
    task: &'static str,
    done: Vec<Stage>,
}

impl Stages {
    pub(crate) fn new(task: &'static str) -> Self {
        Self {
            task,
            done: Vec::new(),
        }
    }

    /// Runs one stage; a failure is printed and remembered, and the run goes on.
    /// Returns whether the stage passed.
    pub(crate) fn run(&mut self, name: &'static str, stage: impl FnOnce() -> Result<()>) -> bool {
        println!("\n==> {}: {name}", self.task);
        let start = Instant::now();
        let result = stage();
        let duration = start.elapsed();
        let outcome = match result {
            Ok(()) => Outcome::Passed,
            Err(err) => {
                eprintln!("xtask: {name} failed: {err:#}");
                Outcome::Failed(err)
            }
        };
        let passed = matches!(outcome, Outcome::Passed);
        self.done.push(Stage {
            name,
            outcome,
            duration,
        });
        passed
    }

    /// Records a stage that did not run, and why.
    pub(crate) fn skip(&mut self, name: &'static str, why: &'static str) {
        self.done.push(Stage {
            name,
            outcome: Outcome::Skipped(why),
            duration: Duration::ZERO,
        });
    }

    /// Prints the summary; fails if any stage failed.
    pub(crate) fn finish(self) -> Result<()> {
        let width = self.done.iter().map(|s| s.name.len()).max().unwrap_or(0);
        println!("\n{} summary:", self.task);
        for stage in &self.done {
            let (verdict, note) = match &stage.outcome {
                Outcome::Passed => ("ok", String::new()),
                Outcome::Failed(err) => ("FAILED", format!("  {err}")),
                Outcome::Skipped(why) => ("skipped", format!("  ({why})")),
            };
            let duration = match stage.outcome {
                Outcome::Skipped(_) => "-".to_owned(),
                _ => fmt_duration(stage.duration),
            };
            println!("  {:width$}  {verdict:7}  {duration:>7}{note}", stage.name);
        }
        let failed: Vec<_> = self
            .done
            .iter()
            .filter(|s| matches!(s.outcome, Outcome::Failed(_)))
            .map(|s| s.name)
            .collect();
        if !failed.is_empty() {
            bail!(
                "{} of {} stages failed: {}",
                failed.len(),
                self.done.len(),
                failed.join(", ")
            );
        }
        Ok(())
    }
}
