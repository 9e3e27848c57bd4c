//! Builds the probe guest (guest/probe) with the system gcc: written by the probe work.
fn main() {}
