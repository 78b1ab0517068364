//! Text tables for humans: columns padded to their widest cell, two spaces apart, no trailing blanks.

/// Renders `rows` (the first is usually the header) as aligned columns, one line each.
pub fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row.iter().zip(widths).map(|(cell, width)| format!("  {cell:<width$}")).collect();
        out += line.concat().trim_end();
        out.push('\n');
    }
    out
}
