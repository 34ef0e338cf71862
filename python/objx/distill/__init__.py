"""Family 2: transformed-teacher distillation and the KD / KL / JSD / TVD losses (SPEC §2)."""
