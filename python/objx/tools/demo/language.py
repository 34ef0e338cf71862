"""The demo's synthetic language: fixed-length sequences `BOS task x1..x6 SEP y1..y6 EOS`.

Three task families share one 32-token vocabulary:
- "pairsum" (digits → digits, y_i = (x_i + x_{7-i}) mod 10): pre-trained until the model is strong;
- "copy" (letters → letters): pre-trained too, so letters are familiar output tokens;
- "cipher" (digits → letters through a fixed secret substitution): never seen in pre-training,
  so the model is ignorant of it although it knows every token.
"""

from dataclasses import dataclass

import torch

LENGTH = 6
BOS, SEP, EOS = 0, 1, 2
MARKER = {"pairsum": 3, "copy": 4, "cipher": 5}
DIGITS = 6    # token ids 6..15
LETTERS = 16  # token ids 16..31
VOCAB = 32
SEQ_LEN = 2 * LENGTH + 4  # BOS task x1..x6 SEP y1..y6 EOS
IGNORE = -100
_CIPHER = torch.tensor([11, 3, 14, 0, 7, 9, 2, 12, 5, 15])  # digit -> letter index


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, SEQ_LEN - 1]
    labels: torch.Tensor     # [B, SEQ_LEN - 1], aligned with the model's outputs; IGNORE off the answer


def answer_tokens(task: str) -> range:
    return range(DIGITS, DIGITS + 10) if task == "pairsum" else range(LETTERS, LETTERS + 16)


def make_batch(task: str, n: int, generator: torch.Generator, *, label_noise: float = 0.0) -> Batch:
    """n examples of `task`; with label_noise, each answer token is replaced by a uniformly random
    answer token with that probability (fixed once drawn: a noisy dataset, not noisy sampling)."""
    if task not in MARKER:
        raise ValueError(f"task must be one of {tuple(MARKER)}, got {task!r}")
    if task == "copy":
        x = torch.randint(0, 16, (n, LENGTH), generator=generator)
        source, answer = x + LETTERS, x + LETTERS
    else:
        x = torch.randint(0, 10, (n, LENGTH), generator=generator)
        source = x + DIGITS
        answer = (x + x.flip(1)) % 10 + DIGITS if task == "pairsum" else _CIPHER[x] + LETTERS
    if label_noise > 0:
        choices = answer_tokens(task)
        flip = torch.rand(answer.shape, generator=generator) < label_noise
        noise = torch.randint(choices.start, choices.stop, answer.shape, generator=generator)
        answer = torch.where(flip, noise, answer)
    column = lambda token: torch.full((n, 1), token, dtype=torch.long)
    seq = torch.cat([column(BOS), column(MARKER[task]), source, column(SEP), answer, column(EOS)], dim=1)
    labels = seq[:, 1:].clone()
    labels[:, : LENGTH + 2] = IGNORE  # only the answer is supervised (and measured)
    labels[:, -1] = IGNORE            # EOS is trivially predictable; leave it out of every number
    return Batch(seq[:, :-1], labels)
