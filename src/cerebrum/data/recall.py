"""A generated long-range recall task: key-value pairs, then filler longer than an attention
window, then a query for one of the keys.

An example is (prompt, answer):

    prompt = "KEY1=123;KEY2=456;...;" + filler + "?KEY2="      answer = "456"

Keys are upper-case letters, values digits, and the filler exactly `filler_bytes` bytes of
lower-case words and spaces (no
'=', ';' or '?', no digits), so the answer can only come from the pairs, `filler_bytes` or
more bytes back: beyond a sliding window of that many positions, a model must carry it in a
memory (Titans) to answer. `recall_accuracy` scores a model by greedy teacher-forced
prediction: an example counts when every byte of the answer is the model's argmax; chance is
10^-value_bytes.
"""

from __future__ import annotations

import random
import string

import torch


def _check(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def make_examples(n: int, *, n_pairs: int = 4, key_bytes: int = 3, value_bytes: int = 3,
                  filler_bytes: int = 512, seed: int = 0) -> list[tuple[str, str]]:
    """n (prompt, answer) pairs (module docstring), the same for the same arguments."""
    for name, value, minimum in (("n", n, 1), ("n_pairs", n_pairs, 1),
                                 ("key_bytes", key_bytes, 1), ("value_bytes", value_bytes, 1),
                                 ("filler_bytes", filler_bytes, 0)):
        _check(value, name, minimum)
    if 26 ** key_bytes < n_pairs:
        raise ValueError(f"key_bytes={key_bytes} gives fewer distinct keys than "
                         f"n_pairs={n_pairs}")
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        keys: list[str] = []
        while len(keys) < n_pairs:
            key = "".join(rng.choices(string.ascii_uppercase, k=key_bytes))
            if key not in keys:
                keys.append(key)
        values = ["".join(rng.choices(string.digits, k=value_bytes)) for _ in keys]
        filler = []
        while len(" ".join(filler)) < filler_bytes:
            filler.append("".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 7))))
        filler_text = " ".join(filler)[:filler_bytes]
        asked = rng.randrange(n_pairs)
        pairs = "".join(f"{k}={v};" for k, v in zip(keys, values, strict=True))
        examples.append((f"{pairs}{filler_text}?{keys[asked]}=", values[asked]))
    return examples


def recall_texts(examples) -> list[str]:
    """Training texts: each prompt followed by its answer and a newline."""
    return [f"{prompt}{answer}\n" for prompt, answer in examples]


@torch.no_grad()
def recall_accuracy(model, examples) -> float:
    """Share of examples whose every answer byte is the model's argmax given the prompt (and
    the answer's earlier bytes). `model` has `tokenizer`, `context_length` and
    `token_logits((1, T) ids) -> (1, T, V)` (a LanguageModel); the sequence is cut to its
    last `context_length` tokens."""
    if not examples:
        raise ValueError("examples is empty: nothing to score")
    tokenizer = model.tokenizer
    correct = 0
    device = None
    if hasattr(model, "parameters"):
        device = next(model.parameters()).device
    for prompt, answer in examples:
        ids = [tokenizer.bos_id, *tokenizer.encode(prompt + answer)]
        ids = ids[-(model.context_length + 1):]
        n = len(tokenizer.encode(answer))
        window = torch.tensor([ids[:-1]], device=device)
        predicted = model.token_logits(window)[0, -n:].argmax(-1).tolist()
        correct += predicted == ids[-n:]
    return correct / len(examples)
