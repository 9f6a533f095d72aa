"""Benchmarks: timing and exactness checks of the library's algorithms against slow reference constructions."""
