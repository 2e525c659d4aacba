"""Benchmarks. Each ``bench_<area>.py`` has ``main() -> int``; ``python -m bench [AREA...]``
runs them. Figures are ratios or rates measured in one run (these machines are noisy)."""
