//! Printing: a human table by default, or JSON for scripts (`--output json`).

use std::io::Write;

use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;

use crate::exit::{Failure, REMOTE};

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Tables and sentences for people.
    Table,
    /// One JSON document on stdout, for scripts.
    Json,
}

/// Where results go.
pub(crate) struct Out {
    pub(crate) format: Format,
}

impl Out {
    pub(crate) fn json_mode(&self) -> bool {
        self.format == Format::Json
    }

    /// Prints a line of human output (nothing in JSON mode).
    pub(crate) fn say(&self, text: impl std::fmt::Display) {
        if !self.json_mode() {
            write_stdout(&format!("{text}\n"));
        }
    }

    /// Prints one line whatever the format (JSON Lines streams).
    pub(crate) fn say_always(&self, text: impl std::fmt::Display) {
        write_stdout(&format!("{text}\n"));
    }

    /// Prints a value as JSON.
    pub(crate) fn json<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), Failure> {
        let text = serde_json::to_string_pretty(value)
            .map_err(|e| Failure::new(REMOTE, anyhow::anyhow!("cannot encode JSON: {e}")))?;
        write_stdout(&format!("{text}\n"));
        Ok(())
    }

    /// Prints a two-column table of fields (nothing in JSON mode).
    pub(crate) fn fields(&self, rows: &[(&str, String)]) {
        if self.json_mode() {
            return;
        }
        let mut t = table();
        for (k, v) in rows {
            t.add_row(vec![(*k).to_owned(), v.clone()]);
        }
        write_stdout(&format!("{t}\n"));
    }

    /// Prints a table with a header row (nothing in JSON mode).
    pub(crate) fn table(&self, header: &[&str], rows: Vec<Vec<String>>) {
        if self.json_mode() {
            return;
        }
        let mut t = table();
        t.set_header(header.to_vec());
        for r in rows {
            t.add_row(r);
        }
        write_stdout(&format!("{t}\n"));
    }
}

fn table() -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic);
    t
}

/// Writes to stdout, ignoring a closed pipe (`wasteledger … | head` must not panic).
fn write_stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}
