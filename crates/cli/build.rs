//! Embeds the sample images of `samples/` (repository root: digits, DermaMNIST lesions at 28×28
//! and 64×64, and HAM10000 lesions with their masks) into the binary, so `blindfold demo`
//! needs no data files: generates `samples.rs`, a table of (data set, file name, bytes).

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../samples");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut table = String::from("&[\n");
    for set in ["mnist", "dermamnist", "dermamnist64", "lesions", "lesions/masks"] {
        let dir = root.join(set);
        println!("cargo:rerun-if-changed={}", dir.display());
        let mut files: Vec<_> =
            std::fs::read_dir(&dir).map(|entries| entries.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        files.sort();
        for path in files {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
            if name.ends_with(".png") || name == "labels.csv" {
                let _ = writeln!(
                    table,
                    "    ({set:?}, {name:?}, include_bytes!({:?}).as_slice()),",
                    path.display().to_string()
                );
            }
        }
    }
    table.push_str("]\n");
    let out = Path::new(&std::env::var("OUT_DIR").unwrap_or_default()).join("samples.rs");
    if let Err(error) = std::fs::write(&out, table) {
        println!("cargo:warning=cannot write {}: {error}", out.display());
    }
}
