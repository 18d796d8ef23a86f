"""The prompt teacher: label-word scores read after a cached prompt prefix, calibrated on the gold rows, and its bad forms."""

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from transformers import AutoModelForCausalLM, AutoTokenizer

from tasks.augment.prompt import PromptTeacher, calibrator
from tasks.augment.spec import AugmentSpec, PromptTeacherSpec
from tasks.errors import UserError
from tests.tasks.tiny_folders import bert_folder, llama_folder

TEXTS = ["the film was great", "a dull plot", "superb cast and a lovely score", "bad", "it is not good at all, sadly"]
CHAT = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}"
)


def spec(**changes) -> PromptTeacherSpec:
    fields = {"prompt": "Is this review positive or negative?\n\n{text}", "answer": "It is"}
    return PromptTeacherSpec(**{**fields, "label_words": {"0": "negative", "1": "positive"}, **changes})


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return llama_folder(
        tmp_path_factory.mktemp("llama"), TEXTS * 4 + ["review: It is positive", "review: It is negative"] * 8
    )


@pytest.mark.parametrize("chat", [False, True], ids=["base-model", "chat-template"])
def test_scores_equal_one_full_forward_pass_per_prompt(llama, chat):
    # What the cached prefix, right padding and explicit positions must reproduce: each row's prompt, tokenized as the
    # teacher puts it together, run alone and unpadded, read at its last token.
    if chat:
        tok = AutoTokenizer.from_pretrained(llama)
        tok.chat_template = CHAT
        tok.save_pretrained(llama)
    teacher = PromptTeacher(spec(model=str(llama), batch_size=2), ["0", "1"])
    got = teacher.scores(TEXTS, max_length=4)  # batches of 2, 2 and a last one of 1 (a fresh prefix cache)
    model = AutoModelForCausalLM.from_pretrained(llama).eval()
    tok = AutoTokenizer.from_pretrained(llama)
    for text, row in zip(TEXTS, got):
        ids = teacher.before + tok(text, add_special_tokens=False)["input_ids"][:4]
        ids += teacher.after
        with torch.no_grad():
            last = model(input_ids=torch.tensor([ids])).logits[0, -1]
        np.testing.assert_allclose(row, last[teacher.words].numpy(), atol=1e-5)
    # the label word is the token that follows the answer, with its space
    assert tok.decode(teacher.words[1]).startswith(" p") and tok.decode(teacher.after).endswith("It is")
    if chat:
        assert tok.decode(teacher.before).startswith("<s>user: Is this review") and "assistant: " in tok.decode(
            teacher.after
        )


def test_a_space_every_label_word_starts_with_joins_the_prompt(tmp_path):
    # This BPE saw the label words only at the start of a line, so " positive" is " " + "positive": the space goes into
    # the prompt and the words' own tokens decide.
    folder = llama_folder(tmp_path / "llama", TEXTS * 4 + ["positive", "negative"] * 8)
    teacher = PromptTeacher(spec(model=str(folder)), ["0", "1"])
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.decode(teacher.after).endswith("It is ")
    assert [tok.decode(w) for w in teacher.words] == ["negative", "positive"]


def test_calibration_removes_a_bias_toward_one_word():
    # The model always scores "positive" higher, by 3 for positive rows and by 1 for negative ones: uncalibrated it
    # calls every row positive; fitted on the gold rows, the difference separates the labels.
    rng = np.random.default_rng(0)
    gold = np.array([0, 1] * 20)
    gold_scores = np.stack([np.zeros(40), 1 + 2 * gold + rng.normal(0, 0.2, 40)], axis=1)
    truth = np.array([1, 0, 1, 0])
    scores = np.stack([np.zeros(4), 1 + 2 * truth], axis=1).astype(float)
    assert (calibrator(gold_scores, list(gold), calibrate=False)(scores).argmax(1) == 1).all()
    log_probs = calibrator(gold_scores, list(gold), calibrate=True)(scores)
    assert (log_probs.argmax(1) == truth).all()
    np.testing.assert_allclose(np.exp(log_probs).sum(1), 1.0, rtol=1e-6)


def test_bad_prompt_teachers_name_the_setting(llama, tmp_path):
    with pytest.raises(ValidationError, match=r"prompt has no \{text\}"):
        spec(prompt="Is this positive?")
    with pytest.raises(ValidationError, match=r"braces other than \{text\}"):
        spec(prompt="{text} as {json}")
    with pytest.raises(ValidationError, match="augment.pseudo is not set"):
        AugmentSpec(eda={}, prompt_teacher=spec())
    with pytest.raises(ValidationError, match="set augment.prompt_teacher.alone false to average them"):
        AugmentSpec(pseudo={"pool": ["pool.tsv"]}, teachers=["models:/other/1"], prompt_teacher=spec())
    pool = {"pool": ["pool.tsv"]}
    with pytest.raises(ValidationError, match="guard is off, .* set augment.prompt_teacher.alone true, or guard true"):
        AugmentSpec(pseudo=pool, prompt_teacher=spec(guard=False, alone=False))
    with pytest.raises(
        ValidationError, match="augment.adversarial attacks a fine-tuned teacher, .* give augment.teacher"
    ):
        AugmentSpec(pseudo=pool, adversarial={}, prompt_teacher=spec(guard=False))
    with pytest.raises(ValidationError, match="augment.rounds is 2, .* set augment.rounds 1, or guard true"):
        AugmentSpec(pseudo=pool, rounds=2, prompt_teacher=spec(guard=False))
    assert AugmentSpec(pseudo=pool, adversarial={}, teacher="models:/t/1", prompt_teacher=spec(guard=False)).unguarded
    assert spec(label_words={0: "no", 1: "yes"}).label_words == {"0": "no", "1": "yes"}  # YAML's int keys are labels
    with pytest.raises(UserError, match=r"label_words .* \(missing: 2\)"):
        PromptTeacher(spec(model=str(llama)), ["0", "1", "2"])
    with pytest.raises(UserError, match="do not each start with a token of their own"):
        PromptTeacher(spec(model=str(llama), label_words={"0": "positive", "1": "positively"}), ["0", "1"])
    encoder = bert_folder(tmp_path / "bert", TEXTS)
    with pytest.raises(UserError, match=r"prompt_teacher.model .* is not a causal language model \(BertForMaskedLM\)"):
        PromptTeacher(spec(model=str(encoder)), ["0", "1"])
