"""Family 1: the probability-based SFT objectives (SPEC §1), on logits and fused with the LM head."""
