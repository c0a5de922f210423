"""Generation with the KV cache: same logits as a full forward pass, batching, sampling, stopping."""
import pytest
import torch

import blt.inference.byte_lm as gen
from blt.inference.args import GenerationArgs as Args
from blt.errors import UserError
from blt.models.byte_lm import ByteLM, ByteLMConfig
from blt.models.masks import attention_mask
from blt.inference.sampling import sample_next
from blt.vocab import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE, encode


def tiny_lm(context=16, window=None, n_kv_heads=None, seed=0) -> ByteLM:
    torch.manual_seed(seed)
    cfg = ByteLMConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads, window=window, context=context)
    model = ByteLM(cfg)
    model.init_weights()
    return model.eval()


@pytest.fixture
def recorded(monkeypatch):
    """Greedy sampling that keeps the logits each step was given."""
    steps = []

    def greedy(logits, temperature, top_k, top_p, generator):
        steps.append(logits.clone())
        return sample_next(logits, 0.0)

    monkeypatch.setattr(gen, "sample_next", greedy)
    return steps


def scripted(monkeypatch, script: list[list[int]]):
    """Make step n of generation produce script[n] (one id per row)."""
    it = iter(script)
    monkeypatch.setattr(gen, "sample_next", lambda logits, *a: torch.tensor(next(it)))


def full_forward(model, ids: torch.Tensor) -> torch.Tensor:
    """Reference logits (T, V) for one sequence, attention sliding over min(window, context) keys."""
    span = min(model.cfg.window or model.cfg.context, model.cfg.context)
    pos = torch.arange(len(ids))[None]
    with torch.no_grad():
        return model(ids[None], positions=pos, mask=attention_mask(pos, pos, span))[0]


@pytest.mark.parametrize(
    "window,prompt,n_new,chunk",
    [
        (None, b"hello", 8, 256),  # inside the context
        (None, b"abc", 30, 256),  # generation rolls past the context of 16
        (5, b"sliding window!", 20, 256),  # sliding-window model, past the window and the context
        (None, b"a prompt of 14", 6, 3),  # prefill in several chunks
        (6, b"chunked,window", 4, 4),
    ],
)
def test_cached_logits_equal_full_forward(recorded, monkeypatch, window, prompt, n_new, chunk):
    monkeypatch.setattr(gen, "PREFILL_CHUNK", chunk)
    model = tiny_lm(context=16, window=window, n_kv_heads=2)
    out = gen.generate_bytes(model, [prompt], Args(max_new_bytes=n_new, temperature=0))[0]
    assert len(out) == n_new  # an untrained model's argmax here is never EOS (else the test would be weaker)
    ids = encode(prompt + out)
    ref = full_forward(model, ids)  # (T, V)
    start = len(prompt)  # logits at the last prompt position predict the first new byte
    cached = torch.cat(recorded)  # (n_new, V)
    torch.testing.assert_close(cached, ref[start : start + n_new], atol=1e-5, rtol=1e-5)


def test_long_prompt_truncated_from_the_left(recorded):
    model = tiny_lm(context=16)
    prompt = bytes(range(65, 65 + 40))
    with pytest.warns(gen.PromptTruncated, match="last 16 bytes"):
        out = gen.generate_bytes(model, [prompt], Args(max_new_bytes=5, temperature=0))[0]
    # The model continued the last 16 bytes, without BOS, at positions 0..15.
    ref = full_forward(model, encode(prompt[-16:] + out, bos=False))
    torch.testing.assert_close(torch.cat(recorded), ref[15:20], atol=1e-5, rtol=1e-5)


def test_greedy_is_deterministic_and_batch_equals_single(recorded):
    model = tiny_lm(context=32, window=8)
    prompts = [b"x", b"a longer prompt here", b"", b"mid-size"]
    batched = gen.generate_bytes(model, prompts, Args(max_new_bytes=24, temperature=0))
    batched_logits = torch.stack(recorded, dim=1)  # (B, steps, V)
    assert batched == gen.generate_bytes(model, prompts, Args(max_new_bytes=24, temperature=0))
    for r, p in enumerate(prompts):
        recorded.clear()
        single = gen.generate_bytes(model, [p], Args(max_new_bytes=24, temperature=0))
        assert single == [batched[r]]
        torch.testing.assert_close(torch.cat(recorded), batched_logits[r], atol=1e-5, rtol=1e-5)
    assert len(set(batched)) > 1  # rows really differ, so a mixed-up row would be caught


def test_topk1_and_tiny_topp_equal_greedy():
    model = tiny_lm()
    prompts = [b"abc", b"hello world"]
    greedy = gen.generate_bytes(model, prompts, Args(max_new_bytes=20, temperature=0))
    assert gen.generate_bytes(model, prompts, Args(max_new_bytes=20, temperature=1.5, top_k=1, seed=1)) == greedy
    assert gen.generate_bytes(model, prompts, Args(max_new_bytes=20, temperature=1.5, top_p=1e-6, seed=2)) == greedy


def test_seed_reproduces_and_seeds_differ():
    model = tiny_lm()
    a = gen.generate_bytes(model, [b"abc"], Args(max_new_bytes=40, temperature=1.0, seed=7))
    assert a == gen.generate_bytes(model, [b"abc"], Args(max_new_bytes=40, temperature=1.0, seed=7))
    assert a != gen.generate_bytes(model, [b"abc"], Args(max_new_bytes=40, temperature=1.0, seed=8))
    assert a != gen.generate_bytes(model, [b"abc"], Args(max_new_bytes=40, temperature=0))


def test_rows_stop_at_eos_and_after_max_new_bytes(monkeypatch):
    model = tiny_lm()
    x, y = ord("x"), ord("y")
    scripted(monkeypatch, [[x, y], [EOS_ID, y], [x, y], [x, y]])
    assert gen.generate_bytes(model, [b"a", b"bb"], Args(max_new_bytes=3)) == [b"x", b"yyy"]


def test_stop_strings_and_streaming(monkeypatch):
    model = tiny_lm()
    text = b"abXcdXYef"
    scripted(monkeypatch, [[c] for c in text])
    chunks = []
    on_bytes = lambda row, data: chunks.append(data)  # noqa: E731
    out = gen.generate_bytes(model, [b"p"], Args(len(text), stop=(b"XY",)), on_bytes=on_bytes)
    assert out == [b"abXcd"]
    assert chunks == [b"a", b"b", b"Xc", b"d"]  # an X waits until it is clearly not the stop string

    scripted(monkeypatch, [[c] for c in text])
    chunks.clear()
    out = gen.generate_bytes(model, [b"p"], Args(len(text), stop=(b"Xq",)), on_bytes=on_bytes)
    assert out == [text] and chunks == [b"a", b"b", b"Xc", b"d", b"XY", b"e", b"f"]


def test_streaming_reports_rows_in_order_of_production():
    model = tiny_lm()
    prompts = [b"one", b"two", b"three"]
    got = {0: b"", 1: b"", 2: b""}

    def on_bytes(row, data):
        got[row] += data

    outs = gen.generate_bytes(model, prompts, Args(max_new_bytes=12, temperature=0.8, seed=3), on_bytes=on_bytes)
    assert [got[i] for i in range(3)] == outs


def test_bad_generation_arguments():
    model = tiny_lm()
    with pytest.raises(UserError, match="max-new-bytes"):
        gen.generate_bytes(model, [b"a"], Args(max_new_bytes=-1))
    with pytest.raises(UserError, match="temperature"):
        gen.generate_bytes(model, [b"a"], Args(temperature=-0.5))
    with pytest.raises(UserError, match="top-k"):
        gen.generate_bytes(model, [b"a"], Args(top_k=0))
    with pytest.raises(UserError, match="top-p"):
        gen.generate_bytes(model, [b"a"], Args(top_p=1.5))
    assert gen.generate_bytes(model, [b"a", b"b"], Args(max_new_bytes=0)) == [b"", b""]


def test_sampler_never_emits_bos_or_pad_and_respects_top_k_top_p():
    torch.manual_seed(0)
    logits = torch.randn(4, VOCAB_SIZE)
    logits[:, BOS_ID] = logits[:, PAD_ID] = 100.0  # would win every draw if they were allowed
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_next(logits, 1.0, generator=g) for _ in range(200)])  # (200, 4)
    assert not ((draws == BOS_ID) | (draws == PAD_ID)).any()
    assert (sample_next(logits, 0.0) != BOS_ID).all()

    logits = torch.full((1, VOCAB_SIZE), -30.0)
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    ids = torch.tensor([10, EOS_ID, 30, 40])
    logits[0, ids] = probs.log()
    for top_p, allowed in [(0.75, {10, EOS_ID}), (0.85, {10, EOS_ID, 30}), (1.0, {10, EOS_ID, 30, 40})]:
        seen = {int(sample_next(logits, 1.0, top_p=top_p, generator=g)) for _ in range(300)}
        assert seen == allowed, top_p
    seen = {int(sample_next(logits, 1.0, top_k=2, generator=g)) for _ in range(300)}
    assert seen == {10, EOS_ID}
