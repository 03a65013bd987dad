"""Datasets: `formats` (read, detect, validate, normalize), `store` (the workspace datasets),
`analysis` (lengths, duplicates, domain-term density). Imports no mlx or torch."""
