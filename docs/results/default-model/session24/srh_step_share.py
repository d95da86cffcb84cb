# Session 24: the SRH share of a joint training step (DPO model, all weights trainable, 6 batches of 8 SFT records).
import time, torch, random
from pathlib import Path
from transformers import AutoTokenizer
from funaudiochat.modeling.model import FunAudioChatForConditionalGeneration
from funaudiochat.processing import FunAudioChatProcessor
from funaudiochat.training.dataset import ConversationDataset, SFTCollator, load_records
torch.set_num_threads(2)
work = Path("build/s22"); start = work / "runs/dpo/final"
model = FunAudioChatForConditionalGeneration.from_pretrained(start, dtype=torch.float32).train()
tok = AutoTokenizer.from_pretrained(start)
recs = load_records([work / "data/sft.jsonl"], "sft", work / "data")
random.Random(0).shuffle(recs)
ds = ConversationDataset(recs[:48], FunAudioChatProcessor(tok, model.config), "sft")
col = SFTCollator(ds.processor)
batches = [{k: v for k, v in col([ds[j] for j in range(i, i + 8)]).items() if k != "tasks"} for i in range(0, 48, 8)]
for flag in (None, False, None, False):
    t = time.perf_counter()
    for b in batches:
        out = model(**b, compute_speech_logits=flag)
        out.loss.backward()
        model.zero_grad(set_to_none=True)
    print("compute_speech_logits", flag, "%.2f s per batch of 8" % ((time.perf_counter() - t) / len(batches)), flush=True)
