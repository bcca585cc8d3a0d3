"""Small built-in reasoning sets (seed 004's `cot`, `reasoning` and `conversational` subsets),
generated with no download, with checkable answers, and users' own JSONL sets.

Three kinds (`KINDS`), each example an `Example(kind, prompt, answer, text)` whose `text` is
what a language model trains on (the prompt, the worked solution where there is one, and the
answer on a final "A: ..." line):
- "cot": multi-step arithmetic with worked steps (chain of thought), e.g.
      Q: Compute (7 + 5) * 3 - 4.
      Step 1: 7 + 5 = 12.
      Step 2: 12 * 3 = 36.
      Step 3: 36 - 4 = 32.
      A: 32
- "reasoning": logic puzzles: orderings ("Ann is taller than Bob. Bob is taller than Cy. Who
  is tallest?"), syllogisms (answer yes / no), and parity of a count.
- "conversational": short question-answer exchanges over a small built-in table of facts
  (capitals, opposites, colours, counts), as "User: ... / Assistant: ..." turns.

`generate_examples(kind, n, seed)` is deterministic in (kind, n, seed). `write_jsonl` /
`read_jsonl` store examples one JSON object a line ({"kind", "prompt", "answer", "text"});
a user's file needs only the text field (`text_field`, "text" by default) and may carry
"prompt" and "answer" for `answer_accuracy`. `reasoning_corpus(directory, kinds)` writes the
built-in sets and returns a `Corpus` with one named subset per kind (what the seed's
`--dataset-cot` / `--dataset-reasoning` / `--dataset-conversational` select).
`answer_accuracy(model, examples)` greedy-decodes each prompt and checks the answer.
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

KINDS = ("cot", "reasoning", "conversational")

_NAMES = ("Ann", "Bob", "Cy", "Dee", "Eve", "Fay", "Gus", "Hal", "Ivy", "Jo")
_RELATIONS = (("taller", "tallest", "shortest"), ("older", "oldest", "youngest"),
              ("faster", "fastest", "slowest"))
_CATEGORIES = (("cats", "animals", "mammals"), ("roses", "flowers", "plants"),
               ("sparrows", "birds", "animals"), ("oaks", "trees", "plants"),
               ("trout", "fish", "animals"), ("hammers", "tools", "objects"))
_CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid",
             "Egypt": "Cairo", "Canada": "Ottawa", "Kenya": "Nairobi", "Peru": "Lima",
             "Norway": "Oslo", "Greece": "Athens", "Chile": "Santiago", "India": "New Delhi"}
_OPPOSITES = {"hot": "cold", "up": "down", "big": "small", "fast": "slow", "light": "dark",
              "open": "closed", "early": "late", "full": "empty", "wet": "dry", "old": "new"}
_COLOURS = {"the sky on a clear day": "blue", "grass": "green", "snow": "white",
            "a ripe banana": "yellow", "coal": "black", "a ripe tomato": "red"}
_LEGS = {"a spider": 8, "a dog": 4, "a bird": 2, "an ant": 6, "a snake": 0, "a cow": 4}


@dataclass(frozen=True)
class Example:
    """One example: its kind, the prompt, the expected answer and the full training text."""

    kind: str
    prompt: str
    answer: str
    text: str


def _cot(rng: random.Random) -> Example:
    n_ops = rng.randint(2, 4)
    value = rng.randint(1, 20)
    expression = str(value)
    steps = []
    for i in range(n_ops):
        op = rng.choice("+-*")
        operand = rng.randint(2, 9) if op == "*" else rng.randint(1, 30)
        new = value + operand if op == "+" else value - operand if op == "-" \
            else value * operand
        steps.append(f"Step {i + 1}: {value} {op} {operand} = {new}.")
        expression = f"({expression} {op} {operand})" if i < n_ops - 1 else \
            f"{expression} {op} {operand}"
        value = new
    prompt = f"Q: Compute {expression}.\n"
    answer = str(value)
    return Example("cot", prompt, answer, prompt + "\n".join(steps) + f"\nA: {answer}\n")


def _reasoning(rng: random.Random) -> Example:
    puzzle = rng.randrange(3)
    if puzzle == 0:  # an ordering
        people = rng.sample(_NAMES, rng.randint(3, 4))
        comparative, most, least = rng.choice(_RELATIONS)
        facts = [f"{a} is {comparative} than {b}." for a, b in itertools.pairwise(people)]
        rng.shuffle(facts)
        ask_most = rng.random() < 0.5
        prompt = f"Q: {' '.join(facts)} Who is {most if ask_most else least}?\n"
        answer = people[0] if ask_most else people[-1]
        steps = f"The order is {', '.join(people)}, from {most} to {least}."
    elif puzzle == 1:  # a syllogism
        small, middle, large = rng.choice(_CATEGORIES)
        valid = rng.random() < 0.5
        if valid:
            prompt = (f"Q: All {small} are {middle}. All {middle} are {large}. Are all "
                      f"{small} {large}?\n")
            answer, steps = "yes", f"Every one of the {small} is one of the {middle}, and " \
                f"every one of those is one of the {large}."
        else:
            prompt = (f"Q: All {small} are {large}. All {middle} are {large}. Must all "
                      f"{middle} be {small}?\n")
            answer, steps = "no", f"Both are {large}, which says nothing about {middle} " \
                f"being {small}."
    else:  # parity of a count
        items = [rng.choice(("apple", "pear", "plum")) for _ in range(rng.randint(3, 9))]
        target = rng.choice(("apple", "pear", "plum"))
        count = items.count(target)
        prompt = (f"Q: In the list {', '.join(items)}, is the number of {target}s even or "
                  f"odd?\n")
        answer = "even" if count % 2 == 0 else "odd"
        steps = f"There are {count} {target}s."
    return Example("reasoning", prompt, answer, f"{prompt}{steps}\nA: {answer}\n")


def _conversational(rng: random.Random) -> Example:
    topic = rng.randrange(4)
    if topic == 0:
        country = rng.choice(sorted(_CAPITALS))
        question, answer = f"What is the capital of {country}?", _CAPITALS[country]
        reply = f"The capital of {country} is {answer}."
    elif topic == 1:
        word = rng.choice(sorted(_OPPOSITES))
        question, answer = f"What is the opposite of {word}?", _OPPOSITES[word]
        reply = f"The opposite of {word} is {answer}."
    elif topic == 2:
        thing = rng.choice(sorted(_COLOURS))
        question, answer = f"What colour is {thing}?", _COLOURS[thing]
        reply = f"{thing[0].upper()}{thing[1:]} is {answer}."
    else:
        animal = rng.choice(sorted(_LEGS))
        question, answer = f"How many legs does {animal} have?", str(_LEGS[animal])
        reply = f"{animal[0].upper()}{animal[1:]} has {answer} legs."
    prompt = f"User: {question}\nAssistant:"
    return Example("conversational", prompt, answer, f"{prompt} {reply}\nA: {answer}\n")


_GENERATORS = {"cot": _cot, "reasoning": _reasoning, "conversational": _conversational}


def _check_kind(kind) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return kind


def generate_examples(kind: str, n: int, seed: int = 0) -> list[Example]:
    """`n` examples of one kind ("cot", "reasoning" or "conversational"), deterministic in
    (kind, n, seed)."""
    _check_kind(kind)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    rng = random.Random(f"{kind}:{seed}")
    return [_GENERATORS[kind](rng) for _ in range(n)]


def write_jsonl(examples, path) -> Path:
    """Write examples one JSON object a line; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for example in examples:
            out.write(json.dumps(asdict(example)) + "\n")
    return path


def read_jsonl(path, *, text_field: str = "text", kind: str = "user") -> list[Example]:
    """A user's (or a written) JSONL set: one JSON object a line with the text in
    `text_field`; "prompt" and "answer" are kept when present (else empty). Blank lines are
    skipped; a line that is not a JSON object with that field is a ValueError naming the file
    and the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such JSONL file: {path}")
    examples = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number} is not JSON: {err.msg}") from None
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                raise ValueError(f"{path}:{number} must be a JSON object with a string "
                                 f"{text_field!r} field, got {line.strip()[:80]!r}")
            examples.append(Example(str(record.get("kind", kind)),
                                    str(record.get("prompt", "")),
                                    str(record.get("answer", "")), record[text_field]))
    return examples


def reasoning_corpus(directory, kinds=KINDS, *, n: int = 2000, seed: int = 0,
                     validation: float = 0.05, test: float = 0.01):
    """Write `n` built-in examples of each kind to directory/<kind>.jsonl (one JSONL file per
    kind) and return a Corpus with one named subset per kind."""
    from cerebrum.data.corpus import Corpus

    kinds = [_check_kind(k) for k in kinds]
    if not kinds:
        raise ValueError("kinds must name at least one of cot, reasoning, conversational")
    directory = Path(directory)
    subsets = {kind: [str(write_jsonl(generate_examples(kind, n, seed),
                                      directory / f"{kind}.jsonl"))] for kind in kinds}
    return Corpus(subsets, validation=validation, test=test)


def extract_answer(text: str) -> str:
    """The answer in a generated continuation: what follows the first "A:" (up to the end
    of its line), else the first line; stripped, a final full stop removed."""
    marker = text.find("A:")
    line = text[marker + 2:] if marker >= 0 else text
    return line.strip().split("\n")[0].strip().rstrip(".")


def answer_accuracy(model, examples, *, max_new_tokens: int = 64) -> float:
    """Fraction of examples whose greedy continuation of the prompt (by a language model's
    `generate`) gives the expected answer (`extract_answer`; case-insensitive). A prompt that
    leaves no room in the model's context counts as wrong."""
    examples = [e for e in examples if e.answer]
    if not examples:
        raise ValueError("answer_accuracy needs examples with answers")
    right = 0
    for example in examples:
        used = len(model._require_tokenizer().encode(example.prompt)) + 1  # and <bos>
        budget = min(max_new_tokens, model.context_length - used)
        if budget < 1:  # the prompt fills the context: no room for an answer
            continue
        continuation = model.generate(example.prompt, max(0, budget), temperature=0)
        right += extract_answer(continuation).lower() == example.answer.lower()
    return right / len(examples)
