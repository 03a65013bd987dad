"""Training backends. The only package that imports mlx or torch, and only inside its modules."""
