"""Classification two ways: a linear head on the last real token (Hugging Face's Gemma3ForSequenceClassification),
and generative labels scored token by token and constrained to the label set."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .data import CLASSIFY_PROMPT, IGNORE, Example, collate
from ..model import Gemma3Model


class SequenceClassifier(nn.Module):
    """Gemma 3 body + `score`, a bias-free Linear(hidden, num_labels) on the final-normed hidden state of each
    row's last real token (rows are right-padded, so that is position length - 1)."""

    def __init__(self, model: Gemma3Model, num_labels: int):
        super().__init__()
        self.model = model
        self.score = nn.Linear(model.config.hidden_size, num_labels, bias=False)
        nn.init.normal_(self.score.weight, std=0.02)      # Hugging Face's initializer_range

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_labels) in float32 for right-padded ids (B, L) with `lengths` real tokens."""
        x = self.model.body(ids)                                    # (B, L, hidden)
        last = x[torch.arange(ids.shape[0]), lengths - 1]           # (B, hidden)
        h = self.model.norm(last)
        return self.score(h.to(self.score.weight.dtype)).float()


def _by_length(items: list[list[int]], batch_size: int):
    """Index batches of similar length (less padding), in a fixed order."""
    order = sorted(range(len(items)), key=lambda i: len(items[i]))
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


@torch.inference_mode()
def predict_head(classifier: SequenceClassifier, tokenizer, texts: list[str], batch_size: int = 32,
                 max_length: int = 512, progress=None) -> torch.Tensor:
    """Class probabilities (N, num_labels) from the head."""
    ids = [tokenizer.encode(t, add_bos=True)[:max_length] for t in texts]
    out = torch.empty(len(ids), classifier.score.out_features)
    for batch in _by_length(ids, batch_size):
        b = collate([Example(ids[i], label=0) for i in batch], tokenizer.pad_id)
        out[batch] = classifier(b.ids, b.lengths).softmax(-1)
        if progress:
            progress(len(batch))
    return out


@torch.inference_mode()
def score_labels(model: Gemma3Model, tokenizer, texts: list[str], labels: list[str], batch_size: int = 32,
                 max_length: int = 512, progress=None) -> torch.Tensor:
    """Log-probabilities (N, num_labels) of " {label}" <eos> after CLASSIFY_PROMPT: the generative classifier's
    answer constrained to the label set. Exact: every label is scored as a whole, for K labels a text costs
    K sequences of prompt + label tokens."""
    label_ids = [tokenizer.encode(" " + label, add_bos=False) + [tokenizer.eos_id] for label in labels]
    longest = max(len(x) for x in label_ids)
    prompts = [tokenizer.encode(CLASSIFY_PROMPT.format(text=t), add_bos=True)[:max(1, max_length - longest)]
               for t in texts]
    out = torch.empty(len(prompts), len(labels))
    rows_per_text = len(labels)
    texts_per_batch = max(1, batch_size // rows_per_text)
    for batch in _by_length(prompts, texts_per_batch):
        rows = [(prompts[i], lab) for i in batch for lab in label_ids]
        examples = [Example(p + lab, [IGNORE] * (len(p) - 1) + lab + [IGNORE]) for p, lab in rows]
        b = collate(examples, tokenizer.pad_id)
        scored = b.targets != IGNORE                                              # (R, L)
        # Only the label positions go through the vocabulary projection.
        logits = model.project(model.norm(model.body(b.ids)[scored]))            # (scored, V)
        token_logp = F.log_softmax(logits, dim=-1).gather(-1, b.targets[scored][:, None])[:, 0]
        row = torch.arange(len(rows))[:, None].expand_as(scored)[scored]
        sums = torch.zeros(len(rows)).index_add_(0, row, token_logp)
        out[batch] = sums.view(len(batch), rows_per_text)
        if progress:
            progress(len(batch))
    return out
