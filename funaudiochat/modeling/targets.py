"""Where audio items sit in the token sequence, and the text/speech training targets.

Conventions (the released model's; worked example in ``tests/modeling/test_targets.py``):

* Every audio item occupies one run of ``<|AUDIO|>`` placeholders, ceil(n_speech / k) long, between
  ``<|audio_bos|>`` and ``<|audio_eos|>``.  Items are matched to runs in row-major order.
* An assistant item (its placeholder positions carry labels) has text token i at group i; once the
  text ends the slot holds ``<|sil|>``.  Its speech ids start with ``speech_delay`` BOS tokens, so
  speech lags text by two 5 Hz steps.
* Text labels follow transformers' convention (``labels[p]`` is predicted from position p - 1).
  Speech labels are [B, L, k] (group of position p), flattened to [B, k*L]; the ``<|audio_eos|>``
  position gets k speech EOS labels.  The hidden state at p therefore predicts the text token and
  the speech group of position p + 1.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AudioRun:
    """One audio item's placeholder run: row ``row``, positions ``start`` to ``end`` (exclusive)."""

    row: int
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


def find_audio_runs(input_ids: torch.Tensor, audio_token_id: int) -> list[AudioRun]:
    """Maximal runs of the audio placeholder, in row-major order."""
    runs: list[AudioRun] = []
    is_audio = (input_ids == audio_token_id).cpu()
    for row in range(is_audio.shape[0]):
        positions = torch.nonzero(is_audio[row]).flatten().tolist()
        start = prev = None
        for p in positions:
            if start is None:
                start = prev = p
            elif p == prev + 1:
                prev = p
            else:
                runs.append(AudioRun(row, start, prev + 1))
                start = prev = p
        if start is not None:
            runs.append(AudioRun(row, start, prev + 1))
    return runs


def group_counts(speech_lengths: torch.Tensor, k: int) -> list[int]:
    """Number of 5 Hz positions each audio item needs: ceil(n / k)."""
    return [(int(n) + k - 1) // k for n in speech_lengths.tolist()]


def match_runs(input_ids: torch.Tensor, audio_token_id: int, counts: list[int]) -> list[AudioRun]:
    """Pair audio items with placeholder runs, failing loudly on any count mismatch."""
    n_placeholders = int((input_ids == audio_token_id).sum())
    if n_placeholders != sum(counts):
        raise ValueError(
            f"the input has {n_placeholders} <|AUDIO|> placeholder tokens but the audio items need "
            f"{sum(counts)} positions ({len(counts)} items of {counts} groups, k speech frames each)"
        )
    runs = find_audio_runs(input_ids, audio_token_id)
    if len(runs) != len(counts):
        raise ValueError(
            f"the input has {len(runs)} runs of <|AUDIO|> placeholders but {len(counts)} audio items"
        )
    for i, (run, count) in enumerate(zip(runs, counts)):
        if run.length != count:
            raise ValueError(
                f"audio item {i} needs {count} <|AUDIO|> placeholders but its run at row {run.row}, "
                f"position {run.start} has {run.length}"
            )
    return runs


def aligned_text_slots(
    text_ids: torch.Tensor,
    text_mask: torch.Tensor,
    n_groups: int,
    sil_id: int,
    end_ids: tuple[int, ...] = (),
) -> torch.Tensor:
    """Text token per 5 Hz group for one item: the transcript, then ``<|sil|>`` (paper Eq. 5)."""
    ids = text_ids[text_mask.to(torch.bool)]
    for end in end_ids:
        ids = ids.masked_fill(ids == end, sil_id)
    if ids.numel() > n_groups:
        logger.warning(
            "transcript of %d tokens does not fit in %d speech groups; truncating it", ids.numel(), n_groups
        )
        ids = ids[:n_groups]
    slots = torch.full((n_groups,), sil_id, dtype=torch.long, device=text_ids.device)
    slots[: ids.numel()] = ids
    return slots


def build_targets(
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    runs: list[AudioRun],
    speech_ids: torch.Tensor,
    speech_mask: torch.Tensor,
    text_slots: list[torch.Tensor | None],
    *,
    k: int,
    audio_eos_id: int,
    speech_eos_id: int,
    ignore_index: int = -100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Text labels [B, L] and flattened speech labels [B, k*L] from raw labels.

    ``labels`` holds token ids where the loss applies and ``ignore_index`` elsewhere (prompt);
    ``speech_ids``/``speech_mask`` are [N, T] padded to a multiple of k; ``text_slots[i]`` is the
    aligned text of item i, or None for items without a transcript (user speech).
    """
    b, length = input_ids.shape
    text_labels = labels.clone()
    speech_labels = torch.full((b, length, k), ignore_index, dtype=torch.long, device=input_ids.device)
    for i, run in enumerate(runs):
        if bool((labels[run.row, run.start : run.end] == ignore_index).all()):
            continue  # prompt audio: no targets
        if text_slots[i] is None:
            raise ValueError(f"audio item {i} is a labelled (assistant) item but has no transcript")
        text_labels[run.row, run.start : run.end] = text_slots[i]
        ids = speech_ids[i].masked_fill(~speech_mask[i].to(torch.bool), ignore_index)
        speech_labels[run.row, run.start : run.end] = ids[: run.length * k].view(run.length, k)
    speech_labels[text_labels == audio_eos_id] = speech_eos_id
    return text_labels, speech_labels.view(b, length * k)


def srh_teacher_inputs(speech_labels: torch.Tensor, k: int, ignore_index: int = -100) -> tuple[torch.Tensor, torch.Tensor]:
    """Previous-token ids and targets for every SRH sub-frame, both [B, kL].

    Sub-frame i predicts the label k positions later (the next group) and is fed the token just
    before that target.
    """
    fill = torch.full_like(speech_labels[:, :k], ignore_index)
    targets = torch.cat([speech_labels[:, k:], fill], dim=1)
    prev = torch.cat([speech_labels[:, k - 1 :], fill[:, : k - 1]], dim=1)
    return prev, targets
