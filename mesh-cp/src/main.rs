//! remora-cp: the control plane. Not built yet; see DESIGN.md.

fn main() {
    eprintln!("remora-cp is not built yet");
    std::process::exit(2);
}
