"""Family 3: DPO-Kernels (SPEC §3): vocabulary divergences, embedding kernels, f-divergence scores,
the preference loss and its module."""
