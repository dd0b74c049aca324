"""Measurements behind ``exchange transport bench``; the benchmarks/ scripts build on them."""
