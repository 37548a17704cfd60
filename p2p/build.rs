//! Declares `cfg(fuzzing)` (set by cargo-fuzz) so the fuzz helpers compile without warnings.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(fuzzing)");
}
