"""Benchmarks of accuracy, pseudo-label quality and speed; run from the repository root as
`python -m benchmarks.<name> --help` (la_study, plot_la_study, pseudo_labels, speed, inference_speed, gpu_check)."""
