"""A prompt teacher: an instruction-tuned language model answers a question about each row, and the scores of the label
words right after the answer's start, calibrated on the gold rows, are its class probabilities.

Zero-shot label-word scoring as in GPT-3's classification evaluations; calibrating it on the few labeled rows follows
Zhao et al. 2021 ("Calibrate Before Use"), with a logistic regression fitted on the gold rows in place of their
content-free input, since the gold rows are at hand.
"""

import inspect

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, DynamicCache

from tasks import model as models
from tasks.augment.spec import PromptTeacherSpec
from tasks.errors import UserError

SETTING = "augment.prompt_teacher"
SLOT = "\x00text\x00"  # stands for a row's text while the chat template is rendered once, then split around it


class PromptTeacher:
    """The model, its tokenizer, the prompt's ids before the row and the token id that stands for each label.

    `weights=False` checks everything the spec says (labels, model kind, label words) with the tokenizer alone: the
    augment stage does so before round 0 trains, so a bad prompt teacher stops the run before anything is registered.
    """

    def __init__(self, spec: PromptTeacherSpec, labels: list[str], weights: bool = True):
        missing = [x for x in labels if x not in spec.label_words]
        extra = [x for x in spec.label_words if x not in labels]
        if missing or extra:
            raise UserError(
                f"{SETTING}.label_words names {sorted(spec.label_words)} but the data's labels are {labels}: "
                f"give one word for each label{' (missing: ' + ', '.join(missing) + ')' if missing else ''}"
                f"{' and drop ' + ', '.join(extra) if extra else ''}"
            )
        where = models.locate(spec.model)
        if not where.gguf_file and models.auto_class(where) is not AutoModelForCausalLM:  # GGUF files hold decoders
            architectures = ", ".join(models.saved_config(where).architectures or ["unknown"])
            raise UserError(
                f"{SETTING}.model {spec.model} is not a causal language model ({architectures}): "
                "give an instruction-tuned decoder such as package:smollm2-135m"
            )
        self.tok = models.load_tokenizer(where.tokenizer, gguf_file=where.gguf_file)
        self.spec, self.labels = spec, labels
        self.before, after = self._template()
        self.after, self.words = self._label_tokens(after, [spec.label_words[x] for x in labels])
        if weights:
            self.model = models.load(spec.model, where=where, auto=AutoModelForCausalLM, tokenizer=False)[0].eval()

    def _template(self) -> tuple[list[int], str]:
        """The prompt's ids before the row's text (one cached prefix for every row), and the text that follows it."""
        question = self.spec.prompt.replace("{text}", SLOT).format()
        if self.tok.chat_template:
            rendered = self.tok.apply_chat_template(
                [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
            )
        else:  # a base model: the question, then the answer on the next line
            rendered = question + "\n"
        before, after = rendered.split(SLOT)
        return self.tok(before, add_special_tokens=False)["input_ids"], after + self.spec.answer

    def _label_tokens(self, after: str, words: list[str]) -> tuple[list[int], list[int]]:
        """The ids after the row, and the token that stands for each label word there.

        A word follows the answer with a space unless the answer ends in one. Tokens that every word starts with (a
        lone space in a byte-level BPE that never merged it with the words) join the prompt; the next token decides.
        """
        gap = " " if self.spec.answer and not self.spec.answer[-1].isspace() else ""
        head = self.tok(after, add_special_tokens=False)["input_ids"]
        fulls = [self.tok(after + gap + w.strip(), add_special_tokens=False)["input_ids"] for w in words]
        same = min(_common(head, full) for full in fulls)  # where the words' tokens begin (BPE may merge across)
        tails = [full[same:] for full in fulls]
        shared = 0
        while all(len(t) > shared + 1 for t in tails) and len({t[shared] for t in tails}) == 1:
            shared += 1
        firsts = [t[shared] if len(t) > shared else None for t in tails]
        if None in firsts or len(set(firsts)) < len(firsts):
            raise UserError(
                f"{SETTING}.label_words {self.spec.label_words} do not each start with a token of their own after the "
                f"answer ({[self.tok.decode(t) for t in tails]}): choose words that differ in their first token"
            )
        return head[:same] + tails[0][:shared], firsts

    @torch.no_grad()
    def scores(self, texts: list[str], max_length: int, desc: str | None = None) -> np.ndarray:
        """The label words' logits [len(texts), labels] after each row's prompt; rows cut to `max_length` tokens.

        The prefix's keys and values are computed once and reused (cropped back after each batch): on SST-2 the chat
        template and question are longer than most rows. Rows are left-padded after the prefix, the pads masked and
        every real token given its own position, so each row ends at the last position and only that position's
        logits are computed (the vocabulary projection of every other token would cost as much as a layer or more).
        """
        rows = [self._row_ids(t, max_length) for t in texts]
        order = np.argsort([len(r) for r in rows], kind="stable")
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        n_prefix, size = len(self.before), self.spec.batch_size
        cache, cached_for = None, 0
        device = self.model.device
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        accepted = inspect.signature(self.model.forward).parameters
        # transformers 5.25 renamed the argument (past_key_values warns until 5.40 removes it); older ones only know the old name
        name = "cache" if "cache" in accepted else "past_key_values"
        last_only = {"logits_to_keep": 1} if "logits_to_keep" in accepted else {}
        starts = range(0, len(texts), size)
        for start in tqdm(starts, desc=desc, disable=desc is None or len(texts) < 2 * size, unit="batch"):
            idx = order[start : start + size]
            if cached_for != len(idx):  # the first batch, and the last when it is smaller
                prefix = torch.tensor([self.before] * len(idx), device=device)
                cache = DynamicCache(config=self.model.config)
                self.model(input_ids=prefix, use_cache=True, **{name: cache}, **last_only)
                cached_for = len(idx)
            longest = max(len(rows[i]) for i in idx)
            gaps = [longest - len(rows[i]) for i in idx]
            ids = torch.tensor([[pad] * g + rows[i] for g, i in zip(gaps, idx)], device=device)
            mask = torch.tensor([[1] * n_prefix + [0] * g + [1] * (longest - g) for g in gaps], device=device)
            positions = torch.tensor([[n_prefix] * g + list(range(n_prefix, n_prefix + longest - g)) for g in gaps])
            logits = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions.to(device),
                use_cache=True,
                **{name: cache},
                **last_only,
            ).logits
            cache.crop(-longest)  # back to the prefix (a negative count removes that many tokens)
            out[idx] = logits[:, -1, self.words].float().cpu().numpy()
        return out

    def _row_ids(self, text: str, max_length: int) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"][:max_length] + self.after


def _common(a: list[int], b: list[int]) -> int:
    """The length of the longest common prefix."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def calibrator(gold_scores: np.ndarray, gold: list[int], calibrate: bool):
    """A function from label-word scores to log class probabilities: a logistic regression fitted once on the gold rows'
    scores, or (off, or when the gold rows lack a label) the softmax over the label words."""
    if calibrate and len(set(gold)) == gold_scores.shape[1]:
        return LogisticRegression(max_iter=1000).fit(gold_scores, gold).predict_log_proba
    if calibrate:
        print(f"augment: the gold rows lack a label, so {SETTING} is not calibrated (softmax over the label words)")
    return lambda scores: torch.log_softmax(torch.from_numpy(scores).double(), dim=1).numpy()
