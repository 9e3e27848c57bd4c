//! The `vdr` command line (being written).

fn main() {
    eprintln!("vdr: the command line is being written");
    std::process::exit(2);
}
