"""The built-in reasoning sets (cerebrum.data.reasoning): deterministic, answers that check
out (arithmetic re-evaluated, orderings re-derived), JSONL round trip and users' files, the
corpus of named subsets, and answer accuracy."""

import json
import re

import pytest

from cerebrum.data.reasoning import (
    KINDS,
    Example,
    answer_accuracy,
    extract_answer,
    generate_examples,
    read_jsonl,
    reasoning_corpus,
    write_jsonl,
)


@pytest.mark.parametrize("kind", KINDS)
def test_examples_are_deterministic_and_end_with_their_answer(kind):
    first = generate_examples(kind, 50, seed=1)
    assert first == generate_examples(kind, 50, seed=1)
    assert first != generate_examples(kind, 50, seed=2)
    for e in first:
        assert e.kind == kind and e.text.startswith(e.prompt)
        assert extract_answer(e.text[len(e.prompt):]) == e.answer


def test_arithmetic_answers_and_steps_are_right():
    for e in generate_examples("cot", 200):
        expression = re.match(r"Q: Compute (.*)\.\n", e.prompt).group(1)
        assert eval(expression) == int(e.answer)
        for a, op, b, c in re.findall(r"Step \d+: (-?\d+) ([-+*]) (\d+) = (-?\d+)\.", e.text):
            assert eval(f"{a} {op} {b}") == int(c)


def test_ordering_puzzles_are_solved_by_their_facts():
    checked = 0
    for e in generate_examples("reasoning", 300):
        facts = re.findall(r"(\w+) is (\w+)er than (\w+)\.", e.prompt)
        if not facts:
            assert e.answer in ("yes", "no", "even", "odd")
            continue
        above = {a for a, _, _ in facts}
        below = {b for _, _, b in facts}
        top, bottom = (above - below).pop(), (below - above).pop()
        asks_most = re.search(r"Who is (tallest|oldest|fastest)\?", e.prompt)
        assert e.answer == (top if asks_most else bottom)
        checked += 1
    assert checked > 50


def test_jsonl_round_trip_and_users_files(tmp_path):
    examples = generate_examples("conversational", 10)
    assert read_jsonl(write_jsonl(examples, tmp_path / "c.jsonl")) == examples
    user = tmp_path / "mine.jsonl"
    user.write_text(json.dumps({"body": "hello"}) + "\n\n" + json.dumps({"body": "x"}) + "\n")
    mine = read_jsonl(user, text_field="body")
    assert [e.text for e in mine] == ["hello", "x"] and mine[0].kind == "user"
    user.write_text('{"text": 3}\n')
    with pytest.raises(ValueError, match=r"mine.jsonl:1 must be a JSON object with a string"):
        read_jsonl(user)
    user.write_text("not json\n")
    with pytest.raises(ValueError, match=r"mine.jsonl:1 is not JSON"):
        read_jsonl(user)
    with pytest.raises(FileNotFoundError, match="no such JSONL file"):
        read_jsonl(tmp_path / "none.jsonl")


def test_the_corpus_has_one_subset_per_kind(tmp_path):
    corpus = reasoning_corpus(tmp_path, ("cot", "conversational"), n=50)
    assert list(corpus.subsets) == ["cot", "conversational"]
    docs = list(corpus.documents("train", shuffle=False))
    assert docs and any("Step 1" in d.text for d in docs)
    with pytest.raises(ValueError, match="kind must be one of cot, reasoning, conversational"):
        reasoning_corpus(tmp_path, ("poetry",))


def test_answer_accuracy_with_a_model_that_knows_and_one_that_does_not():
    examples = generate_examples("cot", 5)

    class Oracle:
        context_length = 10_000

        def _require_tokenizer(self):
            return type("T", (), {"encode": staticmethod(lambda s: list(s.encode()))})()

        def __init__(self, right):
            self.right = right

        def generate(self, prompt, n, temperature):
            e = next(e for e in examples if e.prompt == prompt)
            return e.text[len(prompt):] if self.right else "A: 0.5\n"

    assert answer_accuracy(Oracle(True), examples) == 1.0
    assert answer_accuracy(Oracle(False), examples) == 0.0
    with pytest.raises(ValueError, match="needs examples with answers"):
        answer_accuracy(Oracle(True), [Example("user", "", "", "text")])
