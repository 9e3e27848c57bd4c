//! Unit tests: a hand-made image builder and damaged variants.
