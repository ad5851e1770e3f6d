//! remora-injector: the mutating admission webhook that injects `remora-init`
//! and `remora-proxy` into pods. Not built yet; see DESIGN.md.

fn main() {
    eprintln!("remora-injector is not built yet");
    std::process::exit(2);
}
