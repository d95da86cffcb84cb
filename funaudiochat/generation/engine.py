"""Joint text and speech decoding, streaming, batched, and safe to share between threads.

One backbone step makes one text token and, while the assistant speaks, one group of k speech
tokens through the Speech Refined Head's inner loop (k sequential SRH steps).  The fed-back input of
the next step is the mean of the text embedding and the grouped speech embedding, exactly as the
model was trained (``modeling/targets.py`` has the worked example).

All state lives in :class:`~funaudiochat.generation.state.Conversation` objects and in the
:class:`Turn` being generated; the :class:`Engine` only holds the (read-only) model.  Several
conversations can be decoded as one batch: their caches are left-padded into one, padding columns
are masked and positions are the true ones, so each row computes what it would compute alone.
A row that finishes can leave the batch early (:meth:`Turn.close_row`): its conversation gets its
own cache back at once and the remaining rows go on in a smaller batch.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from transformers import DynamicCache

from funaudiochat.generation.cache import PackedCache, merge_caches, split_cache
from funaudiochat.generation.events import AudioChunk, EndOfTurn, Event, SpeechTokens, TextDelta
from funaudiochat.generation.sampling import (
    DEFAULT_SPEECH_SAMPLING,
    GREEDY,
    SamplingConfig,
    sample_speech_token,
    sample_token,
)
from funaudiochat.generation.state import Conversation
from funaudiochat.generation.tools import tool_calls_from_text
from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration
from funaudiochat.processing import FunAudioChatProcessor, Message
from funaudiochat.prompts import function_calling_prompt, system_prompt

logger = logging.getLogger(__name__)

MODES = ("s2t", "s2s")

#: One backbone step covers this much speech (k = 5 tokens at 25 Hz).
SECONDS_PER_STEP = 0.2


@dataclass(frozen=True)
class TurnOptions:
    """How to generate one reply.

    ``mode`` is ``"s2t"`` (text only; the SRH is skipped) or ``"s2s"`` (text and speech).  The
    input may be speech or text either way.  ``max_seconds`` bounds the reply (0.2 s per step).
    """

    mode: str = "s2s"
    text_sampling: SamplingConfig = GREEDY
    speech_sampling: SamplingConfig = DEFAULT_SPEECH_SAMPLING
    max_seconds: float = 60.0
    force_delay: bool = True
    tools: tuple[dict, ...] | None = None
    voice: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.max_seconds <= 0:
            raise ValueError(f"max_seconds must be positive, got {self.max_seconds}")

    @property
    def max_steps(self) -> int:
        return max(1, round(self.max_seconds / SECONDS_PER_STEP))


@dataclass(eq=False)
class _Row:
    """Decoding state of one conversation within a turn (compared by identity)."""

    conv: Conversation
    speak: bool
    index: int = 0  # position in Turn.rows (stable; the batch slot changes as rows leave)
    closed: bool = False
    end: EndOfTurn | None = None  # set when the row is closed
    new_messages: list[Message] = field(default_factory=list)  # the turn's input, written to history at close
    speaking: bool = False
    #: The text stream said ``<|sil|>`` (or ``<|im_end|>``) while speaking: in training text never
    #: follows it in a turn, so ``<|sil|>`` is held until the speech ends (a model whose speech runs on
    #: otherwise starts the text over).  Paced models (``config.text_layout``) pause with ``<|sil|>``
    #: between words, so for them only ``<|im_end|>`` ends the text.
    text_ended: bool = False
    finished: bool = False
    reason: str = ""
    cancel_requested: bool = False
    spoken_limit: int | None = None
    prev_speech: int = -100  # last speech token fed to the SRH (the previous group's last)
    groups: int = 0
    steps: int = 0
    fed_text: list[int] = field(default_factory=list)  # every text token fed back, in order
    visible: list[int] = field(default_factory=list)  # text tokens that are words
    speech: list[int] = field(default_factory=list)  # real speech tokens
    speech_at_position: list[int] = field(default_factory=list)  # speech tokens input up to each position
    emitted_text: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    audio: object | None = None  # the detokenizer's stream while speaking
    tail: list = field(default_factory=list)  # events produced while closing (last audio)


class Turn:
    """One reply being generated for one or more conversations (one batch row each).

    Use :meth:`step` until :attr:`done`, then :meth:`close`; or iterate :meth:`events` (B = 1).
    Row ``i`` is always ``rows[i]``; a row closed early with :meth:`close_row` leaves the decoding
    batch (``_batch``, the rows still decoded, in tensor order) but keeps its index.
    """

    def __init__(
        self,
        engine: "Engine",
        conversations: Sequence[Conversation],
        messages: Sequence[Sequence[Message]],
        options: TurnOptions,
    ) -> None:
        self.engine = engine
        self.model = engine.model
        self.options = options
        self.k = self.model.group_size
        cfg = self.model.config
        self.cfg = cfg
        self.t0 = time.perf_counter()
        held: list[Conversation] = []
        for conv in conversations:
            if not conv.lock.acquire(blocking=False):
                for other in held:
                    other.lock.release()
                raise RuntimeError(f"conversation {conv.id} already has a reply in progress")
            held.append(conv)
        self.rows = [_Row(conv, speak=options.mode == "s2s", index=i) for i, conv in enumerate(conversations)]
        self._batch: list[_Row] = list(self.rows)
        try:
            self._setup_ids()
            with torch.inference_mode():
                self._prefill(messages)
        except BaseException:
            for conv in conversations:
                conv.lock.release()
            raise

    # ------------------------------------------------------------------ setup
    def _setup_ids(self) -> None:
        cfg, a = self.cfg, self.cfg.audio_config
        tok = self.engine.processor.tokenizer
        self.im_end = self.engine.processor.im_end
        self.newline = self.engine.processor.text("\n")
        self.audio_specials = [cfg.audio_token_index, cfg.audio_bos_id, cfg.audio_eos_id, cfg.sil_id]
        pad_text = tok.convert_tokens_to_ids("<|audio_pad|>")
        if pad_text is not None and pad_text != tok.unk_token_id:
            self.audio_specials.append(pad_text)
        dev = self.model.device
        # while speaking, the text stream may not open audio or close it (the speech does that); an
        # <|im_end|> there ends only the text and is fed as <|sil|>, as training maps text EOS to it
        self.ban_speaking = torch.tensor(
            sorted({cfg.audio_token_index, cfg.audio_bos_id, cfg.audio_eos_id, *self.audio_specials[4:]}),
            device=dev,
        )
        # ...and may not end before it has said a word: a spoken turn always has written text.  In the
        # paced layout <|sil|> is a pause between words, not the text's end, and the first word sits one
        # group before its speech: the first slots (the speech delay) may pause, later ones may not.
        self.paced = cfg.text_layout == "paced"
        self.ban_speaking_silent = torch.tensor(sorted({*self.ban_speaking.tolist(), cfg.sil_id, self.im_end}), device=dev)
        self.ban_speaking_pause = torch.tensor(sorted({*self.ban_speaking.tolist(), self.im_end}), device=dev)
        self.pause_slots = cfg.speech_delay // self.k if self.paced else 0
        self.text_end_ids = (self.im_end,) if self.paced else (cfg.sil_id, self.im_end)
        self.ban_text = torch.tensor(sorted(set(self.audio_specials)), device=dev)
        self.ban_speech = torch.tensor([a.bos_token_id, a.pad_token_id], device=dev)
        self.hidden_specials = set(self.audio_specials) | {self.im_end}

    def _encode_new(self, row: _Row, new: Sequence[Message]):
        conv = row.conv
        tools = self.options.tools
        if not conv.messages and not conv.pending and not any(m.role == "system" for m in new):
            base = system_prompt(self.options.mode)
            conv.pending.append(Message("system", function_calling_prompt(tools, base) if tools else base))
        elif tools and conv.messages:
            logger.warning("tools can only be set in a conversation's first turn (they live in its system prompt)")
        self.engine.attach_prefix(conv)
        todo = [*conv.pending, *new]
        return self.engine.processor.encode(todo, add_generation_prompt=True, speak=row.speak), todo

    def _prefill(self, messages: Sequence[Sequence[Message]]) -> None:
        model, k = self.model, self.k
        encoded = []
        for row, new in zip(self.rows, messages):
            ex, todo = self._encode_new(row, new)
            encoded.append(ex)
            row.new_messages = todo
        batch = self.engine.processor.collate(encoded, with_labels=False, padding_side="left")
        dev = model.device
        batch = {key: value.to(dev) for key, value in batch.items()}
        if "input_features" in batch:
            batch["input_features"] = batch["input_features"].to(model.dtype)
        ids = batch["input_ids"]
        b, length = ids.shape
        self.cache, past_mask = merge_caches([r.conv.cache for r in self.rows])
        self.mask = torch.cat([past_mask.to(dev), batch["attention_mask"]], dim=1)
        positions = torch.zeros(b, length, dtype=torch.long, device=dev)
        for i, (row, ex) in enumerate(zip(self.rows, encoded)):
            n = len(ex.input_ids)
            positions[i, length - n :] = torch.arange(row.conv.positions, row.conv.positions + n, device=dev)
        embeds = model.get_input_embeddings()(ids)
        text_embeds = embeds
        if "speech_ids" in batch:
            audio = model.embed_audio(
                ids, embeds, batch["speech_ids"], batch.get("speech_attention_mask"), batch.get("input_features"),
                batch.get("feature_attention_mask"), batch.get("feature_exist_mask"),
            )
            embeds, text_embeds = audio.inputs_embeds, audio.text_embeds
        hidden = self._backbone(embeds, positions)
        self.next_logits = model.get_output_embeddings()(hidden[:, -1]).float()
        pre = hidden + text_embeds  # SRH inputs of every new position
        self.cur_pre = pre[:, -1]
        for i, (row, ex) in enumerate(zip(self.rows, encoded)):
            n = len(ex.input_ids)
            row.conv.positions += n
            if n > 1:
                row.conv.push_backlog(pre[i, length - n : length - 1])
            row.timings["prefill_s"] = time.perf_counter() - self.t0
        # The SRH state of this batch.
        self.srh_cache, srh_past = merge_caches([r.conv.srh_cache for r in self.rows])
        self.srh_mask = srh_past.to(dev)
        if any(r.speak for r in self.rows):
            self._flush_backlogs()
        detok = self.engine.detokenizer
        for row in self.rows:
            row.speaking = row.speak
            if detok is not None and row.speak:
                row.audio = detok.stream(self.options.voice)

    def _backbone(self, embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        out = self.model.backbone()(
            inputs_embeds=embeds,
            attention_mask=self.mask,
            position_ids=positions,
            cache=self.cache,
            use_cache=True,
        )
        self.cache = out.cache
        return out.last_hidden_state

    def _srh(self, conditions: torch.Tensor, prev: torch.Tensor, active: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Feed sub-frames [B, T, H] to the SRH; ``active`` [B, T] masks rows that feed nothing."""
        self.srh_mask = torch.cat([self.srh_mask, active.to(self.srh_mask.dtype)], dim=1)
        logits, self.srh_cache = self.model.audio_invert_tower(
            conditions, prev, attention_mask=self.srh_mask, position_ids=positions, cache=self.srh_cache, use_cache=True
        )
        return logits

    def _flush_backlogs(self) -> None:
        """Let the SRH see every position it has not seen yet (with no previous speech token)."""
        srh, k, dev = self.model.audio_invert_tower, self.k, self.model.device
        rows = [r for r in self.rows if r.speak and r.conv.backlog_length]
        if not rows:
            return
        width = max(r.conv.backlog_length for r in rows)
        h = self.cur_pre.shape[-1]
        pre = torch.zeros(len(self.rows), width, h, dtype=self.cur_pre.dtype, device=dev)
        active = torch.zeros(len(self.rows), width * k, dtype=torch.long, device=dev)
        positions = torch.zeros(len(self.rows), width * k, dtype=torch.long, device=dev)
        for i, row in enumerate(self.rows):
            n = row.conv.backlog_length if row.speak else 0
            if n:
                pre[i, width - n :] = row.conv.srh_backlog
                active[i, (width - n) * k :] = 1
                start = row.conv.srh_positions * k
                positions[i, (width - n) * k :] = torch.arange(start, start + n * k, device=dev)
        conditions = srh.pre_matching(pre).reshape(len(self.rows), width * k, h)
        prev = torch.full((len(self.rows), width * k), -100, dtype=torch.long, device=dev)
        self._srh(conditions, prev, active, positions)
        for row in self.rows:
            if row.speak and row.conv.backlog_length:
                row.conv.srh_positions += row.conv.backlog_length
                row.conv.srh_backlog = None

    # ------------------------------------------------------------------ decoding
    @property
    def closed(self) -> bool:
        """True once every row is closed (by :meth:`close` or :meth:`close_row`)."""
        return all(r.closed for r in self.rows)

    @property
    def done(self) -> bool:
        return all(r.finished for r in self.rows)

    @property
    def batch_size(self) -> int:
        """Rows still decoded together (closed rows have left the batch)."""
        return len(self._batch)

    def cancel(self, row: int = 0, spoken_tokens: int | None = None) -> None:
        """Stop row ``row`` at the next step (barge-in); a row already closed is left alone.

        ``spoken_tokens``, when known, is how many speech tokens the user actually heard: the
        conversation then keeps only the part of the reply that was spoken.
        """
        r = self.rows[row]
        if r.closed:
            return
        r.cancel_requested = True
        r.spoken_limit = spoken_tokens

    def step(self) -> list[list[Event]]:
        """Advance every unfinished row by one backbone step; returns the new events per row.

        The list has one entry per row of :attr:`rows` (empty for finished or closed rows).
        """
        result: list[list[Event]] = [[] for _ in self.rows]
        if not self._batch:
            return result
        with torch.inference_mode():
            per_slot = self._step()
        for row, events in zip(self._batch, per_slot):
            result[row.index] = events
        return result

    def _step(self) -> list[list[Event]]:
        """One step of the rows in the batch; events per batch slot."""
        model, k, a, dev = self.model, self.k, self.cfg.audio_config, self.model.device
        rows = self._batch
        events: list[list[Event]] = [[] for _ in rows]
        b = len(rows)
        text = [self.im_end] * b
        for i, row in enumerate(rows):
            if row.finished:
                continue
            if row.cancel_requested:
                row.finished, row.reason = True, "cancelled"
                continue
            if row.speaking and row.steps >= self.options.max_steps:
                text[i], row.speaking, row.reason = self.cfg.audio_eos_id, False, "max_duration"
            elif row.speaking and row.text_ended:
                text[i] = self.cfg.sil_id
            else:
                if row.speaking and row.visible:
                    ban = self.ban_speaking
                elif row.speaking:
                    ban = self.ban_speaking_pause if row.steps < self.pause_slots else self.ban_speaking_silent
                else:
                    ban = self.ban_text
                previous = torch.tensor(row.fed_text, dtype=torch.long, device=dev)
                text[i] = sample_token(self.next_logits[i], self.options.text_sampling, row.conv.generator, previous, ban)
                if row.speaking and text[i] in self.text_end_ids:
                    text[i], row.text_ended = self.cfg.sil_id, True
            row.steps += 1
            if "first_text_s" not in row.timings and text[i] not in self.hidden_specials:
                row.timings["first_text_s"] = time.perf_counter() - self.t0

        speaking = [r.speaking and not r.finished for r in rows]
        groups: list[list[int] | None] = [None] * b
        if any(speaking):
            groups = self._speech_group(speaking)

        embeds = torch.zeros(b, 1, self.cur_pre.shape[-1], dtype=self.cur_pre.dtype, device=dev)
        text_embed = torch.zeros_like(embeds)
        active = torch.zeros(b, 1, dtype=torch.long, device=dev)
        positions = torch.zeros(b, 1, dtype=torch.long, device=dev)
        table = model.get_input_embeddings()
        for i, row in enumerate(rows):
            if row.finished:
                continue
            group = groups[i]
            if row.speaking and group is not None and group[0] == a.eos_token_id:
                # a whole EOS group: speech is over, the text stream closes the audio span
                text[i] = self.cfg.audio_eos_id
                row.speaking = False
                group = None
            # An EOS inside a group ends the speech after its real tokens; the group (EOS-padded, as in
            # training) is still fed back, and the next step produces the EOS group.
            over = row.steps > self.options.max_steps and text[i] != self.cfg.audio_eos_id
            if text[i] == self.im_end or (not row.speaking and over):
                row.finished = True
                row.reason = row.reason or ("eos" if text[i] == self.im_end else "max_duration")
                continue
            t = torch.tensor([text[i]], device=dev)
            emb = table(t)
            text_embed[i, 0] = emb[0]
            if group is not None:
                ids = torch.tensor([group], device=dev)
                embeds[i, 0] = (emb[0] + model.audio_tower.group_tokens(ids)[0, 0].to(emb.dtype)) / 2
                real = [s for s in group if s < a.bos_token_id]
                row.speech.extend(real)
                if real:
                    events[i].append(SpeechTokens(real))
                    row.timings.setdefault("first_speech_s", time.perf_counter() - self.t0)
                    if row.audio is not None:
                        for chunk in row.audio.push(real):
                            events[i].append(AudioChunk(chunk, self.engine.detokenizer.sample_rate))
                            row.timings.setdefault("first_audio_s", time.perf_counter() - self.t0)
            else:
                embeds[i, 0] = emb[0]
            row.fed_text.append(text[i])
            row.speech_at_position.append(len(row.speech))
            if text[i] not in self.hidden_specials:
                row.visible.append(text[i])
                decoded = self.engine.processor.tokenizer.decode(row.visible, skip_special_tokens=True)
                if decoded.startswith(row.emitted_text) and len(decoded) > len(row.emitted_text):
                    events[i].append(TextDelta(decoded[len(row.emitted_text) :], [text[i]]))
                    row.emitted_text = decoded
            active[i, 0] = 1
            positions[i, 0] = row.conv.positions
            row.conv.positions += 1

        # rows that stopped speaking hand their current SRH input to the backlog
        for i, row in enumerate(rows):
            if active[i, 0] and not speaking[i]:
                row.conv.push_backlog(self.cur_pre[i : i + 1])
        if bool(active.any()):
            self.mask = torch.cat([self.mask, active], dim=1)
            hidden = self._backbone(embeds, positions)
            fed = active.bool()  # [b, 1]: rows that fed a position keep its results
            self.next_logits = torch.where(fed, model.get_output_embeddings()(hidden[:, -1]).float(), self.next_logits)
            self.cur_pre = torch.where(fed, (hidden + text_embed)[:, -1], self.cur_pre)
        return events

    def _speech_group(self, speaking: list[bool]) -> list[list[int] | None]:
        """The SRH's inner loop: k sequential sub-frames for every speaking row."""
        model, k, a, dev = self.model, self.k, self.cfg.audio_config, self.model.device
        srh = model.audio_invert_tower
        rows = self._batch
        b, h = len(rows), self.cur_pre.shape[-1]
        conditions = srh.pre_matching(self.cur_pre).reshape(b, k, h)
        active = torch.tensor(speaking, dtype=torch.long, device=dev)[:, None]
        delay_groups = -(-self.cfg.speech_delay // k)
        groups: list[list[int] | None] = [[] if s else None for s in speaking]
        prev = [r.prev_speech for r in rows]
        ended = [False] * b
        if self.options.force_delay and all(r.groups < delay_groups for r, s in zip(rows, speaking) if s):
            # The delay tokens are known: feed the k sub-frames in one SRH call instead of k.
            positions = torch.tensor(
                [[r.conv.srh_positions * k + j for j in range(k)] for r in rows], dtype=torch.long, device=dev
            )
            prev_ids = torch.tensor([[p] + [a.bos_token_id] * (k - 1) for p in prev], device=dev)
            self._srh(conditions, prev_ids, active.expand(b, k), positions)
            for i in range(b):
                if speaking[i]:
                    groups[i] = [a.bos_token_id] * k
                    prev[i] = a.bos_token_id
        for j in range(k):
            if all(g is None or len(g) == k for g in groups):
                break  # every speaking row's group is already known (the delay)
            positions = torch.tensor(
                [[r.conv.srh_positions * k + j] for r in rows], dtype=torch.long, device=dev
            )
            logits = self._srh(conditions[:, j : j + 1], torch.tensor([[p] for p in prev], device=dev), active, positions)
            for i, row in enumerate(rows):
                if not speaking[i]:
                    continue
                if ended[i]:
                    tok = a.eos_token_id
                elif self.options.force_delay and row.groups < delay_groups:
                    tok = a.bos_token_id
                else:
                    tok = sample_speech_token(
                        logits[i, 0], self.options.speech_sampling, row.conv.generator, row.speech, self.ban_speech
                    )
                    if tok == a.eos_token_id:
                        ended[i] = True
                groups[i].append(tok)
                prev[i] = tok
        for i, row in enumerate(rows):
            if speaking[i]:
                row.conv.srh_positions += 1
                row.groups += 1
                row.prev_speech = prev[i]
        return groups

    # ------------------------------------------------------------------ closing
    def close(self) -> list[EndOfTurn]:
        """Store each conversation's caches and history; returns one end-of-turn summary per row.

        Unfinished rows are closed as cancelled; rows already closed with :meth:`close_row` give
        the summary they returned then.
        """
        if self.closed:
            raise RuntimeError("turn already closed")
        self._close_rows([r for r in self.rows if not r.closed])
        return [r.end for r in self.rows]  # type: ignore[misc]  # every row is closed now

    def close_row(self, row: int) -> EndOfTurn:
        """Close one row now, without waiting for the others (a short reply in a batch).

        The conversation gets its own caches and history and is unlocked, so it can take a new turn
        at once; the row leaves the batch and the remaining rows go on decoding.  An unfinished row
        is closed as cancelled.  Its last audio is in ``rows[row].tail``.
        """
        r = self.rows[row]
        if r.closed:
            raise RuntimeError(f"row {row} of this turn is already closed")
        return self._close_rows([r])[0]

    def _close_rows(self, rows: list[_Row]) -> list[EndOfTurn]:
        """Finish ``rows`` (all in the batch); whatever happens they are unlocked and leave the batch."""
        slots = [self._slot(r) for r in rows]
        with torch.inference_mode():
            try:
                caches = _split_rows(self.cache, self.mask, slots)
                srh_caches = _split_rows(self.srh_cache, self.srh_mask, slots)
                return [
                    self._finish_row(r, cache, srh_cache, self.cur_pre[slot : slot + 1])
                    for r, slot, cache, srh_cache in zip(rows, slots, caches, srh_caches)
                ]
            finally:
                for r in rows:
                    r.closed = True
                    r.conv.lock.release()
                self._drop_slots(slots)

    def _slot(self, row: _Row) -> int:
        for slot, other in enumerate(self._batch):
            if other is row:
                return slot
        raise RuntimeError(f"row {row.index} is not in the batch")

    def _drop_slots(self, slots: list[int]) -> None:
        """Remove closed rows from the batch tensors, so later steps only compute the rows left."""
        gone = set(slots)
        keep = [i for i in range(len(self._batch)) if i not in gone]
        self._batch = [self._batch[i] for i in keep]
        if not keep:  # nothing left to decode: free the batch
            self.cache = self.srh_cache = None
            return
        idx = torch.tensor(keep, device=self.mask.device)
        self.next_logits = self.next_logits[idx]
        self.cur_pre = self.cur_pre[idx]
        self.cache, self.mask = _select_rows(self.cache, self.mask, idx)
        self.srh_cache, self.srh_mask = _select_rows(self.srh_cache, self.srh_mask, idx)

    def _finish_row(self, row: _Row, cache: PackedCache | None, srh_cache: PackedCache | None, pre: torch.Tensor) -> EndOfTurn:
        """Give the conversation its caches, close the reply with end markers and write the history."""
        if not row.finished:
            row.finished, row.reason = True, "cancelled"
        conv = row.conv
        conv.cache = cache
        conv.srh_cache = srh_cache
        # the last fed position's SRH input was never consumed
        conv.push_backlog(pre)
        if row.audio is not None:
            last = row.audio.flush()
            if len(last):
                row.tail.append(AudioChunk(last, self.engine.detokenizer.sample_rate))
        generated = len(row.fed_text)
        start = conv.positions - generated
        if row.reason == "cancelled" and row.spoken_limit is not None:
            keep = next((n for n, c in enumerate(row.speech_at_position) if c > row.spoken_limit), generated)
            conv.truncate(start + keep, self.k)
            row.fed_text = row.fed_text[:keep]
            row.speech = row.speech[: row.spoken_limit]
            row.visible = [t for t in row.fed_text if t not in self.hidden_specials]
        closing: list[int] = []
        if self.cfg.audio_eos_id not in row.fed_text and row.speak:
            closing.append(self.cfg.audio_eos_id)
        closing += [self.im_end, *self.newline]
        self._feed_alone(conv, closing)
        text = self.engine.processor.tokenizer.decode(row.visible, skip_special_tokens=True).strip()
        conv.messages.extend(row.new_messages)
        conv.pending = []
        conv.messages.append(Message("assistant", text or " ", speech_tokens=row.speech or None, train=False))
        row.timings["total_s"] = time.perf_counter() - self.t0
        end = EndOfTurn(text=text, speech_tokens=list(row.speech), reason=row.reason, steps=row.steps, timings=dict(row.timings))
        if self.options.tools:
            end.tool_calls, end.tool_call_errors = tool_calls_from_text(text)
        row.end = end
        return end

    def _feed_alone(self, conv: Conversation, ids: list[int]) -> None:
        """Append tokens to one conversation's cache (end-of-turn markers)."""
        model, dev = self.model, self.model.device
        t = torch.tensor([ids], device=dev)
        cache, _ = merge_caches([conv.cache])
        positions = torch.arange(conv.positions, conv.positions + len(ids), device=dev)[None]
        mask = torch.ones(1, conv.positions + len(ids), dtype=torch.long, device=dev)
        emb = model.get_input_embeddings()(t)
        out = model.backbone()(inputs_embeds=emb, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
        conv.cache = split_cache(out.cache, mask)[0]
        conv.positions += len(ids)
        conv.push_backlog((out.last_hidden_state + emb)[0])

    # ------------------------------------------------------------------ single-row conveniences
    def events(self) -> Iterator[Event]:
        """Stream the events of a one-conversation turn; the last one is :class:`EndOfTurn`.

        A consumer that stops early cancels the turn, which still leaves the conversation valid.
        """
        if len(self.rows) != 1:
            raise ValueError("events() streams a single conversation; use step() for batches")
        completed = False
        try:
            while not self.done:
                yield from self.step()[0]
            completed = True
        finally:
            if not completed and not self.closed:
                self.cancel()
                self.close()
        end = self.close()[0]
        yield from self.rows[0].tail
        yield end


def _split_rows(cache: DynamicCache | None, mask: torch.Tensor, slots: Sequence[int]) -> list[PackedCache | None]:
    """:func:`split_cache` for some batch rows only (the others stay in the batch)."""
    if cache is None:
        return [None] * len(slots)
    layers = [(k, v) for k, v, *_ in cache]
    out: list[PackedCache | None] = []
    for i in slots:
        cols = mask[i].to(torch.bool)
        out.append(PackedCache([(k[i : i + 1, :, cols], v[i : i + 1, :, cols]) for k, v in layers]))
    return out


def _select_rows(cache: DynamicCache | None, mask: torch.Tensor, idx: torch.Tensor) -> tuple[DynamicCache | None, torch.Tensor]:
    """Keep the batch rows ``idx`` and drop the leading columns that are padding in all of them."""
    mask = mask[idx]
    valid = mask.any(dim=0).nonzero()
    first = int(valid[0]) if len(valid) else mask.shape[1]
    mask = mask[:, first:]
    if cache is None or mask.shape[1] == 0:
        return None, mask
    layers = [(k[idx, :, first:], v[idx, :, first:]) for k, v, *_ in cache]
    return DynamicCache(ddp_cache_data=layers), mask


class Engine:
    """Generates replies for any number of conversations with one shared model.

    ``detokenizer`` (optional) turns speech tokens into audio as they arrive: an object with a
    ``sample_rate`` and ``stream(voice)`` returning a stream with ``push(tokens) -> list[np.ndarray]``
    and ``flush() -> np.ndarray`` (see ``funaudiochat.audio``).  With it, turns also yield
    :class:`AudioChunk` events.
    """

    def __init__(
        self,
        model: FunAudioChatForConditionalGeneration,
        processor: FunAudioChatProcessor,
        detokenizer=None,
    ) -> None:
        self.model = model.eval()
        self.processor = processor
        self.detokenizer = detokenizer
        # Backbone states of system prompts, shared by every conversation that starts with one.
        self._prefixes: dict[str, tuple[PackedCache, torch.Tensor, int]] = {}
        self._prefix_lock = threading.Lock()

    MAX_PREFIXES = 8

    def attach_prefix(self, conv: Conversation) -> None:
        """Start a new conversation from the cached states of its system prompt (computed once).

        The cached tensors are never modified in place (caches grow by concatenation), so sharing
        them between conversations is safe.
        """
        if conv.cache is not None or not conv.pending or conv.pending[0].role != "system":
            return
        first = conv.pending[0]
        if first.audio is not None or not first.text:
            return
        with self._prefix_lock:
            prefix = self._prefixes.get(first.text)
        if prefix is None:
            prefix = self._compute_prefix(first)
            with self._prefix_lock:
                self._prefixes[first.text] = prefix
                while len(self._prefixes) > self.MAX_PREFIXES:
                    self._prefixes.pop(next(iter(self._prefixes)))
        conv.cache, conv.srh_backlog, conv.positions = prefix
        conv.messages.append(conv.pending.pop(0))

    def _compute_prefix(self, message: Message) -> tuple[PackedCache, torch.Tensor, int]:
        model, dev = self.model, self.model.device
        ids = torch.tensor([self.processor.encode([message]).input_ids], device=dev)
        n = ids.shape[1]
        with torch.inference_mode():
            embeds = model.get_input_embeddings()(ids)
            mask = torch.ones(1, n, dtype=torch.long, device=dev)
            out = model.backbone()(
                inputs_embeds=embeds, attention_mask=mask, position_ids=torch.arange(n, device=dev)[None], use_cache=True
            )
            cache = split_cache(out.cache, mask)[0]
            return cache, (out.last_hidden_state + embeds)[0], n

    def conversation(self, system_prompt: str | None = None, seed: int | None = 0) -> Conversation:
        return Conversation(system_prompt=system_prompt, seed=seed)

    def start(self, conv: Conversation, message: Message | Sequence[Message], options: TurnOptions | None = None) -> Turn:
        msgs = [message] if isinstance(message, Message) else list(message)
        return Turn(self, [conv], [msgs], options or TurnOptions())

    def start_batch(
        self,
        conversations: Sequence[Conversation],
        messages: Sequence[Message | Sequence[Message]],
        options: TurnOptions | None = None,
    ) -> Turn:
        """One turn whose row ``i`` answers ``messages[i]`` in ``conversations[i]`` (decoded as one batch)."""
        if len(conversations) != len(messages):
            raise ValueError(f"{len(conversations)} conversations but {len(messages)} messages")
        msgs = [[m] if isinstance(m, Message) else list(m) for m in messages]
        return Turn(self, conversations, msgs, options or TurnOptions())

    def stream(self, conv: Conversation, message: Message | Sequence[Message], options: TurnOptions | None = None) -> Iterator[Event]:
        """Events of one reply as they are produced (text deltas, speech tokens, end of turn)."""
        return self.start(conv, message, options).events()

    async def astream(
        self, conv: Conversation, message: Message | Sequence[Message], options: TurnOptions | None = None
    ) -> AsyncIterator[Event]:
        """The same as :meth:`stream` for asyncio code: each step runs in a worker thread."""
        turn = await asyncio.to_thread(self.start, conv, message, options)
        completed = False
        try:
            while not turn.done:
                for event in (await asyncio.to_thread(turn.step))[0]:
                    yield event
            completed = True
        finally:
            if not completed and not turn.closed:
                turn.cancel()
                await asyncio.to_thread(turn.close)
        end = (await asyncio.to_thread(turn.close))[0]
        for event in turn.rows[0].tail:
            yield event
        yield end

    def respond(self, conv: Conversation, message: Message | Sequence[Message], options: TurnOptions | None = None) -> EndOfTurn:
        """Generate a whole reply and return its summary."""
        end = None
        for event in self.stream(conv, message, options):
            if isinstance(event, EndOfTurn):
                end = event
        assert end is not None
        return end

    def respond_batch(
        self,
        conversations: Sequence[Conversation],
        messages: Sequence[Message | Sequence[Message]],
        options: TurnOptions | None = None,
    ) -> list[EndOfTurn]:
        """One reply for each conversation, decoded together as one batch."""
        turn = self.start_batch(conversations, messages, options)
        while not turn.done:
            turn.step()
        return turn.close()

