"""Evaluating trained policies: weight and condition grids, steerability statistics, Pareto
fronts and plots, P-DPO accuracy, and the fidelity reproductions."""
