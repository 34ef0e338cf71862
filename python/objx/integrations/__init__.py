"""Drop-ins for other libraries' trainers. Each submodule imports its library lazily, so objx imports
without them: objx.integrations.transformers (Trainer loss, causal-LM forward through
linear_prob_loss), objx.integrations.trl (GKD-style generalized JSD, DPO-style loss)."""
