//! What the `blindfold` command shows a person: the global `--quiet` and `--json` switches and
//! how a command's result is printed under them, progress bars and spinners, tables and byte
//! counts. One module, so that every command looks and behaves the same.

use std::fmt;
use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// `--quiet` and `--json`: global, so they are accepted before or after any subcommand.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct Output {
    /// No progress bars and no summary.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Print one JSON object describing what was done (commands with several results print
    /// one per line); errors become one JSON object on stderr.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Prints the JSON object with `--json`, the text without, nothing with `--quiet`.
pub(crate) fn report(output: Output, object: serde_json::Value, text: impl FnOnce() -> String) -> anyhow::Result<()> {
    if output.json {
        println!("{}", serde_json::to_string(&object)?);
    } else if !output.quiet {
        println!("{}", text());
    }
    Ok(())
}

/// Whether progress is drawn: not with `--quiet`, and only on a terminal (a log file would fill
/// with redrawn lines).
pub(crate) fn visible(output: Output) -> bool {
    !output.quiet && std::io::stderr().is_terminal()
}

/// A bar of `len` steps with a percentage and an ETA on stderr, hidden when not [`visible`].
pub(crate) fn bar(output: Output, len: u64, what: &str) -> ProgressBar {
    styled(output, len, what, "{prefix} [{bar:40}] {percent:>3}% {elapsed} (eta {eta}) {msg}")
}

/// A bar counting bytes (uploads, downloads), with the rate.
pub(crate) fn bytes_bar(output: Output, len: u64, what: &str) -> ProgressBar {
    styled(output, len, what, "{prefix} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} (eta {eta})")
}

fn styled(output: Output, len: u64, what: &str, template: &str) -> ProgressBar {
    if !visible(output) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len).with_prefix(what.to_string());
    // The templates are constants; a bad one would only lose the style, not the progress.
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// A spinner for work of unknown length, hidden when not [`visible`].
pub(crate) fn spinner(output: Output, message: String) -> ProgressBar {
    if !visible(output) {
        return ProgressBar::hidden();
    }
    let spinner = ProgressBar::new_spinner().with_message(message);
    spinner.enable_steady_tick(Duration::from_millis(120));
    spinner
}

/// `1.5 GiB`, `80.0 MiB`, `512 B`: a byte count for people, in powers of 1024 as the progress
/// bars count them.
pub(crate) fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    if value < 1024.0 {
        return format!("{bytes} B");
    }
    let mut unit = "B";
    for next in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    format!("{value:.1} {unit}")
}

/// A mean byte count (bytes per image) for people: [`format_bytes`] of the nearest whole byte.
pub(crate) fn format_mean_bytes(bytes: f64) -> String {
    format_bytes(bytes.max(0.0).round() as u64)
}

/// A plain-text table: a header line, then one line per row, columns separated by two spaces
/// (easy to read and to `grep`/`awk`). Columns are left-aligned unless [`Table::right`] says
/// otherwise; the last column is not padded, so no line ends in spaces.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    headers: Vec<String>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers and no rows.
    pub(crate) fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            right: vec![false; headers.len()],
            rows: Vec::new(),
        }
    }

    /// Right-aligns the columns at these indices (numbers, so their digits line up).
    pub(crate) fn right(mut self, columns: &[usize]) -> Self {
        for column in columns {
            if let Some(right) = self.right.get_mut(*column) {
                *right = true;
            }
        }
        self
    }

    /// Adds rows (cells in header order).
    pub(crate) fn rows(mut self, rows: impl IntoIterator<Item = Vec<String>>) -> Self {
        self.rows.extend(rows);
        self
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        for (index, cells) in std::iter::once(&self.headers).chain(&self.rows).enumerate() {
            if index > 0 {
                f.write_str("\n")?;
            }
            let mut line = String::new();
            for (column, (cell, width)) in cells.iter().zip(&widths).enumerate() {
                if column > 0 {
                    line.push_str("  ");
                }
                let last = column + 1 == cells.len();
                match self.right.get(column) {
                    Some(true) => line.push_str(&format!("{cell:>width$}")),
                    _ if last => line.push_str(cell),
                    _ => line.push_str(&format!("{cell:<width$}")),
                }
            }
            f.write_str(line.trim_end())?;
        }
        Ok(())
    }
}

/// A left-aligned [`Table`] as text.
pub(crate) fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    Table::new(headers).rows(rows).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_format_for_people() {
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(80 << 20), "80.0 MiB");
        assert_eq!(format_bytes(3 << 30), "3.0 GiB");
        assert_eq!(format_mean_bytes(1535.6), "1.5 KiB");
    }

    #[test]
    fn tables_align_columns_and_end_lines_without_spaces() {
        let rows = vec![
            vec!["a".to_owned(), "7".to_owned(), "x".to_owned()],
            vec!["long name".to_owned(), "123".to_owned(), String::new()],
        ];
        let text = Table::new(&["NAME", "N", "NOTE"]).right(&[1]).rows(rows).to_string();
        assert_eq!(text, "NAME         N  NOTE\na            7  x\nlong name  123");
        assert_eq!(table(&["A", "B"], vec![vec!["xyz".to_owned(), "1".to_owned()]]), "A    B\nxyz  1");
    }
}
