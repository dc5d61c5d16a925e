//! The matrix's results: one table with a section per matrix, footnotes for what failed.

use std::{fmt::Write as _, time::Duration};

use crate::util::fmt_duration;

/// How one check went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    Pass,
    Fail,
    /// Not applicable on this row (the message says why and what was seen).
    Skip,
}

impl Verdict {
    /// `pass`, `fail` or `skip`, as the check script prints them.
    pub(super) fn parse(word: &str) -> Option<Self> {
        match word {
            "pass" => Some(Self::Pass),
            "fail" => Some(Self::Fail),
            "skip" => Some(Self::Skip),
            _ => None,
        }
    }

    /// `pass`, `FAIL` or `n/a`, as the table shows them.
    pub(super) fn word(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "FAIL",
            Self::Skip => "n/a",
        }
    }
}

/// One cell: a verdict and what was seen (figures when it passed, the failure otherwise).
#[derive(Clone, Debug)]
pub(super) struct Cell {
    pub verdict: Verdict,
    pub message: String,
}

impl Cell {
    pub(super) fn new(verdict: Verdict, message: impl Into<String>) -> Self {
        Self {
            verdict,
            message: message.into(),
        }
    }

    pub(super) fn fail(message: impl Into<String>) -> Self {
        Self::new(Verdict::Fail, message)
    }
}

/// One row: a kernel and cgroup layout, or a containerd version.
#[derive(Debug)]
pub(super) struct Row {
    /// The short name footnotes use, e.g. `6.1 v2` or `containerd 2.1`.
    pub name: String,
    /// What ran, e.g. `linux-image-6.1.0-50-cloud-amd64 6.1.176-1 (bookworm), cgroup v2`.
    pub label: String,
    /// A cell per column, by column name.
    pub cells: Vec<(String, Cell)>,
    /// Facts worth knowing about this row (printed below the table).
    pub notes: Vec<String>,
    pub duration: Duration,
}

impl Row {
    /// A row whose every column failed for one reason (e.g. its kernel could not be fetched).
    pub(super) fn failed(
        name: String,
        label: String,
        columns: &[impl AsRef<str>],
        why: &str,
    ) -> Self {
        Self {
            name,
            label,
            cells: columns
                .iter()
                .map(|c| (c.as_ref().to_owned(), Cell::fail(why)))
                .collect(),
            notes: Vec::new(),
            duration: Duration::ZERO,
        }
    }

    fn cell(&self, column: &str) -> Option<&Cell> {
        self.cells.iter().find(|(c, _)| c == column).map(|(_, c)| c)
    }
}

/// The rows of one matrix and its columns.
#[derive(Debug)]
pub(super) struct Section {
    /// The header of the row labels, e.g. `kernel × cgroup layout`.
    pub title: &'static str,
    pub columns: Vec<String>,
    pub rows: Vec<Row>,
}

/// Everything the matrix found.
#[derive(Debug, Default)]
pub(super) struct Report {
    pub sections: Vec<Section>,
}

/// Longest message a footnote shows; the logs have the rest.
const NOTE_CHARS: usize = 400;

/// `message`, cut to [`NOTE_CHARS`] characters.
fn shorten(message: &str) -> String {
    match message.char_indices().nth(NOTE_CHARS) {
        Some((at, _)) => format!("{} … (cut; the log has it all)", &message[..at]),
        None => message.to_owned(),
    }
}

/// A footnote: a column and the message of a cell that did not pass, and every row where
/// that cell said the same (up to the numbers in it: pids, ids, milliseconds).
struct Note {
    rows: Vec<String>,
    column: String,
    cell: Cell,
    shape: String,
}

impl Note {
    /// `6.1 v2 / rename`, or `rename on 5.10 v2, 6.1 v2` when several rows share it.
    fn title(&self) -> String {
        match self.rows.as_slice() {
            [row] => format!("{row} / {}", self.column),
            rows => format!("{} on {}", self.column, rows.join(", ")),
        }
    }
}

/// `message` with every run of digits replaced by `#`, so that the same failure with other
/// pids reads the same.
fn shape(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for c in message.chars() {
        if !c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('#') {
            out.push('#');
        }
    }
    out
}

impl Report {
    /// Cells that failed, and all cells.
    pub(super) fn counts(&self) -> (usize, usize) {
        let cells = self
            .sections
            .iter()
            .flat_map(|s| &s.rows)
            .flat_map(|r| &r.cells);
        let (mut failed, mut total) = (0, 0);
        for (_, cell) in cells {
            total += 1;
            failed += usize::from(cell.verdict == Verdict::Fail);
        }
        (failed, total)
    }

    /// Failing and skipped cells, numbered in table order (one number for the same failure
    /// in one column), and each cell's text.
    fn cell_texts(&self, section: &Section, notes: &mut Vec<Note>) -> Vec<Vec<String>> {
        section
            .rows
            .iter()
            .map(|row| {
                section
                    .columns
                    .iter()
                    .map(|column| match row.cell(column) {
                        None => "-".to_owned(),
                        Some(cell) if cell.verdict == Verdict::Pass => "pass".to_owned(),
                        Some(cell) => {
                            let shape = shape(&cell.message);
                            let same = notes.iter().position(|n| {
                                n.column == *column
                                    && n.cell.verdict == cell.verdict
                                    && n.shape == shape
                            });
                            let number = match same {
                                Some(i) => {
                                    notes[i].rows.push(row.name.clone());
                                    i + 1
                                }
                                None => {
                                    notes.push(Note {
                                        rows: vec![row.name.clone()],
                                        column: (*column).to_owned(),
                                        cell: cell.clone(),
                                        shape,
                                    });
                                    notes.len()
                                }
                            };
                            format!("{} [{number}]", cell.verdict.word())
                        }
                    })
                    .collect()
            })
            .collect()
    }

    /// The table for a terminal: aligned columns, footnotes and row notes below.
    pub(super) fn text(&self) -> String {
        let mut out = String::new();
        let mut notes = Vec::new();
        for section in &self.sections {
            let texts = self.cell_texts(section, &mut notes);
            let label_width = section
                .rows
                .iter()
                .map(|r| r.label.chars().count())
                .chain([section.title.chars().count()])
                .max()
                .unwrap_or(0);
            let widths: Vec<usize> = section
                .columns
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    texts
                        .iter()
                        .map(|row| row[i].chars().count())
                        .chain([c.len()])
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let _ = write!(out, "{:label_width$}", section.title);
            for (column, width) in section.columns.iter().zip(&widths) {
                let _ = write!(out, "  {column:width$}");
            }
            out.push_str("  time\n");
            for (row, cells) in section.rows.iter().zip(&texts) {
                let _ = write!(out, "{:label_width$}", row.label);
                for (cell, width) in cells.iter().zip(&widths) {
                    let _ = write!(out, "  {cell:width$}");
                }
                let _ = writeln!(out, "  {}", fmt_duration(row.duration));
            }
            out.push('\n');
        }
        for (i, note) in notes.iter().enumerate() {
            let _ = writeln!(
                out,
                "[{}] {}: {}",
                i + 1,
                note.title(),
                shorten(&note.cell.message)
            );
        }
        self.row_notes(&mut out, "");
        out
    }

    /// The same as Markdown (for `target/matrix-last.md` and the README's "Tested on").
    pub(super) fn markdown(&self) -> String {
        let mut out = String::new();
        let mut notes = Vec::new();
        for section in &self.sections {
            let texts = self.cell_texts(section, &mut notes);
            let _ = write!(out, "| {} |", section.title);
            for column in &section.columns {
                let _ = write!(out, " {column} |");
            }
            out.push_str(" time |\n|---|");
            for _ in &section.columns {
                out.push_str("---|");
            }
            out.push_str("---|\n");
            for (row, cells) in section.rows.iter().zip(&texts) {
                let _ = write!(out, "| {} |", row.label);
                for cell in cells {
                    let _ = write!(out, " {cell} |");
                }
                let _ = writeln!(out, " {} |", fmt_duration(row.duration));
            }
            out.push('\n');
        }
        for (i, note) in notes.iter().enumerate() {
            let _ = writeln!(
                out,
                "{}. **{}**: {}",
                i + 1,
                note.title(),
                shorten(&note.cell.message).replace('|', "\\|")
            );
        }
        if !notes.is_empty() {
            out.push('\n');
        }
        self.row_notes(&mut out, "- ");
        out
    }

    fn row_notes(&self, out: &mut String, bullet: &str) {
        for row in self.sections.iter().flat_map(|s| &s.rows) {
            for note in &row.notes {
                let _ = writeln!(out, "{bullet}{}: {note}", row.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            sections: vec![Section {
                title: "kernel × cgroup layout",
                columns: vec!["ready".into(), "rename".into()],
                rows: vec![
                    Row {
                        name: "6.1 v2".into(),
                        label: "linux-image-6.1 (bookworm), cgroup v2".into(),
                        cells: vec![
                            ("ready".into(), Cell::new(Verdict::Pass, "ready after 3 s")),
                            ("rename".into(), Cell::fail("pidmap said comm=sh")),
                        ],
                        notes: vec!["v1 memory not mountable".into()],
                        duration: Duration::from_secs(61),
                    },
                    Row::failed(
                        "5.10 v1".into(),
                        "linux-image-5.10".into(),
                        &["ready"],
                        "download failed",
                    ),
                    Row {
                        name: "6.12 v2".into(),
                        label: "linux-image-6.12 (trixie), cgroup v2".into(),
                        cells: vec![
                            ("ready".into(), Cell::new(Verdict::Pass, "ready after 4 s")),
                            ("rename".into(), Cell::fail("pidmap said comm=sh")),
                        ],
                        notes: vec![],
                        duration: Duration::from_secs(62),
                    },
                ],
            }],
        }
    }

    #[test]
    fn the_same_failure_with_other_numbers_has_one_shape() {
        assert_eq!(
            shape("pid 2345 lost parent 2343 (checked for 130 ms)"),
            shape("pid 7 lost parent 12 (checked for 1 ms)")
        );
        assert_ne!(shape("state=exited"), shape("state=unknown"));
    }

    #[test]
    fn long_messages_are_cut() {
        assert_eq!(shorten("short"), "short");
        let long = "é".repeat(NOTE_CHARS + 5);
        let cut = shorten(&long);
        assert!(cut.starts_with(&"é".repeat(NOTE_CHARS)));
        assert!(cut.ends_with("(cut; the log has it all)"));
    }

    #[test]
    fn failures_are_numbered_footnotes_and_missing_cells_dashes() {
        let r = report();
        assert_eq!(r.counts(), (3, 5));
        let text = r.text();
        assert!(text.contains("FAIL [1]"), "{text}");
        assert!(
            text.contains("[1] rename on 6.1 v2, 6.12 v2: pidmap said comm=sh"),
            "{text}"
        );
        assert!(
            text.contains("[2] 5.10 v1 / ready: download failed"),
            "{text}"
        );
        assert!(
            !text.contains("[3]"),
            "one note for the same failure: {text}"
        );
        assert!(text.contains("6.1 v2: v1 memory not mountable"), "{text}");
        let row = text
            .lines()
            .find(|l| l.starts_with("linux-image-5.10"))
            .expect("row");
        assert!(
            row.contains(" -"),
            "the missing rename cell is a dash: {row}"
        );
        let md = r.markdown();
        assert!(
            md.contains("| kernel × cgroup layout | ready | rename | time |"),
            "{md}"
        );
        assert!(
            md.contains("| linux-image-6.1 (bookworm), cgroup v2 | pass | FAIL [1] | 1m01s |"),
            "{md}"
        );
        assert!(
            md.contains("1. **rename on 6.1 v2, 6.12 v2**: pidmap said comm=sh"),
            "{md}"
        );
    }
}
