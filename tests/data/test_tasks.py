"""Generated tasks with checkable answers and task specifications."""

import pytest

from cerebrum.data.tasks import (
    HELD_OUT_TASKS,
    KINDS,
    TRAINING_TASKS,
    parse_task,
    parse_task_argument,
    task_mix_text,
)


def _check(kind, prompt, answer):
    """An independent solver of each kind."""
    body = prompt[:-1]
    if kind == "add":
        a, b = body.split("+")
        return str(int(a) + int(b)) == answer
    if kind == "sub":
        a, b = body.split("-")
        return str(int(a) - int(b)) == answer and int(a) >= int(b)
    word, args = body.split(" ", 1)
    if word == "rev":
        return args[::-1] == answer
    digits = [int(d) for d in args.split()]
    return {
            "sort": lambda: answer == " ".join(str(d) for d in sorted(digits)),
            "rsort": lambda: answer == " ".join(str(d) for d in sorted(digits)[::-1]),
            "max": lambda: answer == str(max(digits)),
            "min": lambda: answer == str(min(digits))}[word]()


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_gives_right_answers_deterministically(kind):
    task = parse_task("t", kind)
    examples = task.examples(50, seed=3)
    assert examples == task.examples(50, seed=3)
    assert examples != task.examples(50, seed=4)
    assert all(_check(kind, p, a) for p, a in examples)


def test_options_change_the_examples():
    long_words = parse_task("r", "reverse:min_len=7,max_len=8").examples(30)
    assert all(7 <= len(a) <= 8 for _, a in long_words)
    assert all(len(p.split("+")[0]) <= 3 for p, _ in parse_task("a", "add:digits=3").examples(20))
    assert parse_task("a", "add:digits=3").spec == "add:digits=3"
    assert parse_task("a", "add:digits=2").spec == "add"


def test_training_and_held_out_tasks_differ_and_mix():
    assert not {t.name for t in TRAINING_TASKS} & {t.name for t in HELD_OUT_TASKS}
    text = task_mix_text(TRAINING_TASKS, 5)
    assert len(text.splitlines()) == 20


def test_corpus_task(tmp_path):
    (tmp_path / "a.txt").write_text("hello world\n")
    task = parse_task_argument(f"docs=corpus:{tmp_path / 'a.txt'}")
    assert not task.checkable and task.texts() == ["hello world\n"]
    with pytest.raises(ValueError, match="corpus"):
        task.examples(3)


@pytest.mark.parametrize("spec", ["divide", "add:digits", "add:digits=x", "add:width=2",
                                  "reverse:min_len=5,max_len=3", "add:digits=0", "corpus:",
                                  ""])
def test_bad_specs_raise_value_errors_naming_the_spec(spec):
    with pytest.raises(ValueError, match="spec"):
        parse_task("t", spec)


def test_bad_task_arguments():
    with pytest.raises(ValueError, match="--task"):
        parse_task_argument("add")
    with pytest.raises(ValueError, match="name"):
        parse_task_argument("a b=add")
