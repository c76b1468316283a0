//! `cms-fakecloud`: runs the cloud emulator on a loopback port.
fn main() {
    eprintln!("cms-fakecloud: not built yet");
    std::process::exit(1);
}
