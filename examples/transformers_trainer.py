"""A transformers Trainer run whose causal-LM loss runs through objx.linear_prob_loss, with the logits never built.

    python examples/transformers_trainer.py
"""

import torch
import transformers

from objx.integrations.transformers import apply_objx_loss

config = transformers.LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2)
# "nll" for a model that starts weak on the data (this one is random); "-p" once it is strong
# (objx.select.recommend_objective tells which); any objx.prob_loss keyword too (min_prob=0.2, z_loss=...).
model = apply_objx_loss(transformers.LlamaForCausalLM(config), "nll")

ids = torch.randint(0, 1000, (64, 32), generator=torch.Generator().manual_seed(0))
data = [{"input_ids": row, "labels": row} for row in ids]

args = transformers.TrainingArguments(output_dir="/tmp/objx-trainer", max_steps=10, per_device_train_batch_size=8,
                                      logging_steps=5, report_to=[], save_strategy="no", use_cpu=True)
transformers.Trainer(model=model, args=args, train_dataset=data).train()
