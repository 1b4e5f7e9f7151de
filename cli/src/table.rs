//! The fixed-width text tables of the admin commands' `list` output: the
//! header and every row go through one column layout, so they line up and
//! the widths are written once.

use std::fmt::Display;

/// How a column is laid out.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Col {
    /// Left-aligned, padded to this width.
    Left(usize),
    /// Right-aligned, padded to this width.
    Right(usize),
    /// As it is (the last column).
    Rest,
}

/// `cells` laid out as `columns` say, one space apart.
pub(crate) fn row(columns: &[Col], cells: &[&dyn Display]) -> String {
    columns
        .iter()
        .zip(cells)
        .map(|(column, cell)| match *column {
            Col::Left(width) => format!("{cell:<width$}"),
            Col::Right(width) => format!("{cell:>width$}"),
            Col::Rest => cell.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Prints [`row`] as a line of its own.
pub(crate) fn print_row(columns: &[Col], cells: &[&dyn Display]) {
    println!("{}", row(columns, cells));
}

/// Prints the header line: the column `names` laid out as `columns` say.
pub(crate) fn print_header(columns: &[Col], names: &[&str]) {
    let cells: Vec<&dyn Display> = names.iter().map(|n| n as &dyn Display).collect();
    print_row(columns, &cells);
}

/// `text`, or `placeholder` when it is empty (an unset field in a table).
pub(crate) fn or_placeholder<'a>(text: &'a str, placeholder: &'a str) -> &'a str {
    if text.is_empty() { placeholder } else { text }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_laid_out_as_format_widths_would() {
        let columns = [Col::Right(6), Col::Left(5), Col::Rest];
        assert_eq!(
            row(&columns, &[&"SEQ", &"TIME", &"DETAIL"]),
            format!("{:>6} {:<5} DETAIL", "SEQ", "TIME")
        );
        assert_eq!(
            row(&columns, &[&42u64, &"a".to_owned(), &"rest of it"]),
            format!("{:>6} {:<5} {}", 42, "a", "rest of it")
        );
        // A cell wider than its column is not cut.
        assert_eq!(row(&[Col::Left(2), Col::Rest], &[&"wide", &"x"]), "wide x");
    }

    #[test]
    fn an_empty_field_reads_as_its_placeholder() {
        assert_eq!(or_placeholder("", "-"), "-");
        assert_eq!(or_placeholder("alice", "-"), "alice");
    }
}
