//! Memory budgets: what a plan may use on this machine, and byte counts on the command line
//! (shown with [`crate::terminal::format_bytes`]).

/// The memory this machine has available now (`MemAvailable` in /proc/meminfo), if known.
pub(crate) fn available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb = text.lines().find_map(|line| line.strip_prefix("MemAvailable:"))?.trim().trim_end_matches("kB").trim();
    kb.parse::<u64>().ok().map(|kb| kb * 1024)
}

/// Parses `1073741824`, `512M`, `16G` or `1.5T` (powers of 1024) into bytes.
pub(crate) fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((at, _)) => (&text[..at], text[at..].trim_end_matches(['B', 'b', 'i'])),
        None => (text, ""),
    };
    let factor: u64 = match unit.to_ascii_uppercase().as_str() {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        other => return Err(format!("unknown unit {other:?} in {text:?}: use K, M, G or T")),
    };
    let value: f64 = number.trim().parse().map_err(|_| format!("{text:?} is not a byte count (e.g. 16G)"))?;
    if !(value.is_finite() && value > 0.0) {
        return Err(format!("{text:?} is not a positive byte count"));
    }
    Ok((value * factor as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_parse_with_and_without_units() {
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert_eq!(parse_bytes("16G"), Ok(16 << 30));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("1.5k"), Ok(1536));
        assert!(parse_bytes("12Q").is_err());
        assert!(parse_bytes("-3G").is_err());
        assert!(parse_bytes("lots").is_err());
    }
}
