"""Small generated tasks with checkable answers (Transformer² experts and dispatch), and task
specifications.

An example is (prompt, answer); a model is right when its greedy continuation of the prompt,
up to the first newline, equals the answer. Training text is `prompt + answer + "\\n"`.

Generated kinds (`KINDS`; options in brackets, with their defaults):

    add      two-number addition         "47+38="            -> "85"        [digits=2]
    sub      subtraction, a >= b         "47-38="            -> "9"         [digits=2]
    reverse  reverse a word              "rev kqzu="         -> "uzqk"      [min_len=2, max_len=6]
    sort     sort digits ascending       "sort 7 2 9 4="     -> "2 4 7 9"   [min_len=2, max_len=6]
    rsort    sort digits descending      "rsort 7 2 9 4="    -> "9 7 4 2"   [min_len=2, max_len=6]
    max      the largest digit           "max 7 2 9 4="      -> "9"         [min_len=2, max_len=6]
    min      the smallest digit          "min 7 2 9 4="      -> "2"         [min_len=2, max_len=6]

`TRAINING_TASKS` (add, reverse, sort, max) are what the experts learn; `HELD_OUT_TASKS` are
related tasks none of them was trained on (three-digit additions, the largest of longer lists,
and two new operations that combine trained skills: the smallest digit, sorting descending),
for adaptation by a mixture of experts.

A task specification (`parse_task`, the `--task NAME=SPEC` of `cerebrum adapt`) is a kind
with options, `add` or `add:digits=3` or `reverse:min_len=6,max_len=8`, or `corpus:PATH`: a
file or folder of text (a named corpus subset), trained with next-token loss on its documents
and without a checkable answer.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass, field


def _digits_list(rng: random.Random, min_len: int, max_len: int) -> list[int]:
    return [rng.randrange(10) for _ in range(rng.randint(min_len, max_len))]


def _add(rng, digits=2):
    a, b = rng.randrange(10 ** digits), rng.randrange(10 ** digits)
    return f"{a}+{b}=", str(a + b)


def _sub(rng, digits=2):
    a, b = sorted((rng.randrange(10 ** digits), rng.randrange(10 ** digits)), reverse=True)
    return f"{a}-{b}=", str(a - b)


def _reverse(rng, min_len=2, max_len=6):
    word = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(min_len, max_len)))
    return f"rev {word}=", word[::-1]


def _sort(rng, min_len=2, max_len=6):
    xs = _digits_list(rng, min_len, max_len)
    return f"sort {' '.join(map(str, xs))}=", " ".join(map(str, sorted(xs)))


def _rsort(rng, min_len=2, max_len=6):
    xs = _digits_list(rng, min_len, max_len)
    return f"rsort {' '.join(map(str, xs))}=", " ".join(map(str, sorted(xs, reverse=True)))


def _max(rng, min_len=2, max_len=6):
    xs = _digits_list(rng, min_len, max_len)
    return f"max {' '.join(map(str, xs))}=", str(max(xs))


def _min(rng, min_len=2, max_len=6):
    xs = _digits_list(rng, min_len, max_len)
    return f"min {' '.join(map(str, xs))}=", str(min(xs))


#: kind -> (generator(rng, **options) -> (prompt, answer), {option: default}).
KINDS: dict[str, tuple[Callable, dict]] = {
    "add": (_add, {"digits": 2}),
    "sub": (_sub, {"digits": 2}),
    "reverse": (_reverse, {"min_len": 2, "max_len": 6}),
    "sort": (_sort, {"min_len": 2, "max_len": 6}),
    "rsort": (_rsort, {"min_len": 2, "max_len": 6}),
    "max": (_max, {"min_len": 2, "max_len": 6}),
    "min": (_min, {"min_len": 2, "max_len": 6}),
}


@dataclass(frozen=True)
class Task:
    """A named task: a generated kind with options, or a corpus (`path`).

    Attributes:
        name: the expert's name.
        kind: a key of KINDS, or "corpus".
        options: the generator's options (validated).
        path: the text file or folder of a corpus task.
    """

    name: str
    kind: str
    options: dict = field(default_factory=dict)
    path: str | None = None

    @property
    def checkable(self) -> bool:
        """Whether examples have answers to check (generated kinds) or are plain text."""
        return self.kind != "corpus"

    @property
    def spec(self) -> str:
        """The specification this task parses from."""
        if self.kind == "corpus":
            return f"corpus:{self.path}"
        if not self.options:
            return self.kind
        return f"{self.kind}:" + ",".join(f"{k}={v}" for k, v in self.options.items())

    def examples(self, n: int, *, seed: int = 0) -> list[tuple[str, str]]:
        """n (prompt, answer) pairs, the same for the same seed (generated kinds only)."""
        if not self.checkable:
            raise ValueError(f"task {self.name!r} is a corpus: it has no (prompt, answer) "
                             "examples")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an integer >= 0, got {n!r}")
        make, _ = KINDS[self.kind]
        # the name is part of the seed, so two tasks never share examples by accident
        rng = random.Random(f"{self.name}/{self.spec}/{seed}")
        return [make(rng, **self.options) for _ in range(n)]

    def texts(self) -> list[str]:
        """The documents of a corpus task."""
        from cerebrum.data.corpus import Corpus

        corpus = Corpus(self.path, validation=0.0, test=0.0)
        return [d.text for d in corpus.documents("train", shuffle=False)]


def parse_task(name: str, spec: str) -> Task:
    """The Task `name` of a specification (module docstring); ValueError naming `spec`."""
    if not isinstance(name, str) or not name or not all(
            c.isalnum() or c in "_-." for c in name):
        raise ValueError(f"task name must be letters, digits, '_', '-' or '.', got {name!r}")
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"task spec of {name!r} must be a non-empty string, got {spec!r}")
    kind, _, rest = spec.partition(":")
    if kind == "corpus":
        if not rest:
            raise ValueError(f"task spec {spec!r}: corpus needs a path, corpus:PATH")
        return Task(name, "corpus", {}, rest)
    if kind not in KINDS:
        raise ValueError(f"task spec {spec!r}: unknown kind {kind!r}; kinds: "
                         f"{', '.join(KINDS)}, corpus:PATH")
    _, defaults = KINDS[kind]
    options = dict(defaults)
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key not in defaults:
            raise ValueError(f"task spec {spec!r}: bad option {item!r}; {kind} takes "
                             f"{', '.join(f'{k}=INT' for k in defaults)}")
        try:
            options[key] = int(value)
        except ValueError:
            raise ValueError(f"task spec {spec!r}: option {key} must be an integer, got "
                             f"{value!r}") from None
    for key, value in options.items():
        if value < 1 or value > 12:
            raise ValueError(f"task spec {spec!r}: {key} must be in 1..12, got {value}")
    if options.get("min_len", 0) > options.get("max_len", 12):
        raise ValueError(f"task spec {spec!r}: min_len must be <= max_len")
    return Task(name, kind, {k: options[k] for k in defaults if options[k] != defaults[k]})


def parse_task_argument(text: str) -> Task:
    """A Task from "NAME=SPEC" (the command line's --task)."""
    name, eq, spec = text.partition("=")
    if not eq:
        raise ValueError(f"--task must be NAME=SPEC (e.g. math=add:digits=2), got {text!r}")
    return parse_task(name, spec)


#: The experts' tasks.
TRAINING_TASKS = (Task("add", "add"), Task("reverse", "reverse"), Task("sort", "sort"),
                  Task("max", "max"))
#: Related tasks no expert was trained on.
HELD_OUT_TASKS = (Task("add3", "add", {"digits": 3}),
                  Task("max8", "max", {"min_len": 7, "max_len": 8}),
                  Task("min", "min"), Task("rsort", "rsort"))


def task_mix_text(tasks, n_per_task: int, *, seed: int = 0) -> str:
    """Training text of several tasks: n_per_task examples each, interleaved at random, one
    `prompt + answer` per line (what a base model is trained on to learn the format)."""
    lines = [p + a for task in tasks for p, a in task.examples(n_per_task, seed=seed)]
    random.Random(seed).shuffle(lines)
    return "\n".join(lines) + "\n"


def parse_task_list(text: str) -> list[Task]:
    """Tasks from "SPEC;SPEC;..." where each item is NAME=SPEC or a SPEC named by its kind
    ("add;rev=reverse:max_len=8"); ValueError naming the item."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"a task list must be a non-empty string of SPEC;SPEC;..., got "
                         f"{text!r}")
    tasks = []
    for item in filter(None, (part.strip() for part in text.split(";"))):
        if "=" in item.split(":")[0]:
            tasks.append(parse_task_argument(item))
        else:
            tasks.append(parse_task(item.split(":")[0], item))
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"task names must be unique, got {names}")
    return tasks
