"""Stable-Baselines3 recurrent policies with Bayesian task beliefs (RL², Laplace-VRNN, VariBAD, GLiBRL)."""
