"""Benchmarks run side by side with Nix; each prints ratios, none is asserted in tests."""
